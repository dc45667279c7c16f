"""TCC (goc_utils.cache.tcc, goc_utils.priors.tcc_fit): invariants, a naive reference, the fit, the pack file."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from goc_utils.cache import CacheMethod, Resources, RunShape, TCCPack, resolve_method
from goc_utils.cache.tcc import (
    SimilarityStats,
    TCCCompensator,
    TCCConfig,
    TCCPackError,
    default_pack_path,
    fit_similarity,
)
from goc_utils.errors import InvalidArgumentError
from goc_utils.model.sampler import generate, per_sample_inputs
from goc_utils.priors.tcc_fit import TCCFit, default_targets, fit_tcc_pack
from tests.conftest import small_dit

STEPS = 8


def random_orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.float()


def planted_pack(model, host: str = "fora-50", targets=(1, 3), identity: bool = False, mu: float = 0.0) -> TCCPack:
    """A pack with random maps (or the identity map with mu_a = mu_b = ``mu``) for ``host`` on ``model``."""
    schedule = resolve_method(host, RunShape.of(model, STEPS)).schedule
    k, depth, d = len(targets), model.depth, model.hidden_size
    g = torch.Generator().manual_seed(3)
    if identity:
        r = torch.eye(d).expand(k, depth, 2, d, d).clone()
        s = torch.ones(k, depth, 2)
        mu_a = mu_b = torch.full((k, depth, 2, d), mu)
    else:
        r = torch.stack([random_orthogonal(d, i) for i in range(k * depth * 2)]).reshape(k, depth, 2, d, d)
        s = 0.8 + 0.4 * torch.rand(k, depth, 2, generator=g)
        mu_a, mu_b = 0.1 * torch.randn(2, k, depth, 2, d, generator=g)
    rank = torch.full((k, depth, 2), d)
    return TCCPack("small", STEPS, 1.5, host, schedule.mask.copy(), list(targets), r, s, mu_a, mu_b.clone(), rank)


def sample(model, method: CacheMethod | str, pack: TCCPack | None = None, alpha: float | None = None):
    method = CacheMethod.parse(method) if isinstance(method, str) else method
    if pack is not None:
        method.compensator_options["pack"] = pack
    if alpha is not None:
        method.compensator_options["alpha"] = alpha
    labels, noise = per_sample_inputs(model, range(6), 2)
    engine = resolve_method(method, RunShape.of(model, STEPS)).engine(model)
    return generate(model, labels, steps=STEPS, cfg_scale=1.5, forward=engine.forward, noise=noise).final, engine


# ----------------------------------------------------------------------------- 1. invariants


@pytest.mark.parametrize("host", ["fora-50", "fora-25"])
def test_alpha_zero_is_its_host_bit_for_bit(tiny_random, host):
    plain, _ = sample(tiny_random, host)
    tcc, engine = sample(tiny_random, f"{host}+tcc", planted_pack(tiny_random, host), alpha=0.0)
    assert torch.equal(plain, tcc)
    corrected, engine = sample(tiny_random, f"{host}+tcc", planted_pack(tiny_random, host))
    assert not torch.allclose(plain, corrected, atol=1e-3)  # the planted maps do change the samples


def test_the_identity_map_is_its_host(tiny_random):
    plain, _ = sample(tiny_random, "fora-50")
    exact, _ = sample(tiny_random, "fora-50+tcc", planted_pack(tiny_random, identity=True))
    assert torch.equal(plain, exact)  # mu = 0: B @ I = B exactly
    shifted, _ = sample(tiny_random, "fora-50+tcc", planted_pack(tiny_random, identity=True, mu=0.3))
    torch.testing.assert_close(shifted, plain, rtol=1e-5, atol=1e-5)  # mu_a = mu_b != 0: up to float rounding


def naive_tcc_sample(model, pack: TCCPack, alpha: float) -> torch.Tensor:
    """FORA-50 + TCC written from the formula, one token vector at a time, without the engine."""
    labels, noise = per_sample_inputs(model, range(6), 2)
    mask = pack.host_mask
    stored: dict[tuple[int, int], torch.Tensor] = {}

    def forward(x, t, y, step):
        def unit_fn(block, unit, compute):
            if mask[step, block, unit]:
                stored[(block, unit)] = compute()
                return stored[(block, unit)]
            b = stored[(block, unit)]
            if step not in pack.targets:
                return b
            k = pack.targets.index(step)
            r, s = pack.R[k, block, unit], pack.s[k, block, unit]
            mu_a, mu_b = pack.mu_a[k, block, unit], pack.mu_b[k, block, unit]
            out = torch.empty_like(b)
            for n in range(b.shape[0]):
                for tok in range(b.shape[1]):
                    vec = b[n, tok]
                    rotated = torch.stack([(vec - mu_b) @ r[:, j] for j in range(len(vec))])
                    out[n, tok] = vec + alpha * (mu_a + s * rotated - vec)
            stored[(block, unit)] = out
            return out

        return model(x, t, y, unit_fn=unit_fn)

    return generate(model, labels, steps=STEPS, cfg_scale=1.5, forward=forward, noise=noise).final


def test_a_naive_per_token_loop_gives_the_same_samples():
    model = small_dit(depth=2)
    pack = planted_pack(model)
    ours, engine = sample(model, "fora-50+tcc", pack, alpha=1.75)
    reference = naive_tcc_sample(model, pack, 1.75)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, sample(model, "fora-50")[0], rtol=1e-3)
    assert engine.schedule.mask.shape == pack.host_mask.shape


def test_only_reused_units_at_the_pack_steps_are_corrected(tiny_random):
    method = CacheMethod.parse("fora-50+tcc")
    method.compensator_options["pack"] = planted_pack(tiny_random, targets=(3, 5))
    engine = resolve_method(method, RunShape.of(tiny_random, STEPS)).engine(tiny_random)
    engine.compensator.corrections = []
    labels, noise = per_sample_inputs(tiny_random, range(2), 0)
    generate(tiny_random, labels, steps=STEPS, cfg_scale=1.5, forward=engine.forward, noise=noise)
    steps = sorted({s for s, _, _ in engine.compensator.corrections})
    assert steps == [3, 5]
    assert len(engine.compensator.corrections) == 2 * tiny_random.depth * 2


# ----------------------------------------------------------------------------- 2. the fit


@pytest.mark.parametrize("pooling", ["token", "sample", "class"])
def test_the_fit_recovers_a_planted_similarity(pooling):
    d, classes = 6, 12
    g = torch.Generator().manual_seed(0)
    r_true = random_orthogonal(d, 7).double()
    s_true, mu_a, mu_b = 1.3, torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    stats = SimilarityStats(d, pooling, classes)
    for _ in range(4):  # streamed in batches
        labels = torch.arange(classes).repeat(3)
        b = torch.randn(len(labels), 5, d, generator=g, dtype=torch.float64) + mu_b
        a = mu_a + s_true * ((b - mu_b) @ r_true)
        stats.add(a, b, labels)
    fit = fit_similarity(stats)
    assert np.allclose(fit["R"], r_true.numpy(), atol=1e-6)  # r_true is orthogonal to float32 precision
    assert fit["s"] == pytest.approx(s_true, abs=1e-6)
    assert int(fit["rank"]) == d
    predicted = fit["mu_a"] + fit["s"] * ((b.numpy() - fit["mu_b"]) @ fit["R"])
    assert np.allclose(predicted, a.numpy(), atol=1e-5)


def test_class_means_fewer_than_the_width_leave_part_of_r_to_the_svd():
    d, classes = 64, 10
    g = torch.Generator().manual_seed(1)
    stats = SimilarityStats(d, "class", classes)
    labels = torch.arange(classes).repeat(4)
    b = torch.randn(len(labels), 3, d, generator=g, dtype=torch.float64)
    stats.add(b @ random_orthogonal(d, 2).double(), b, labels)
    one, other = fit_similarity(stats, svd="gesdd"), fit_similarity(stats, svd="gesvd")
    assert int(one["rank"]) == int(other["rank"]) == classes - 1
    _, _, m, _ = stats.moments()
    span = np.linalg.svd(m)[0][:, : classes - 1]  # the class means' span: both drivers agree there
    assert np.allclose(span.T @ one["R"], span.T @ other["R"], atol=1e-8)
    assert not np.allclose(one["R"], other["R"], atol=1e-3)  # and differ on the null space
    assert fit_similarity(stats, "shift_only")["s"] == 1.0
    assert np.array_equal(fit_similarity(stats, "scale_shift")["R"], np.eye(d))


def test_bad_fit_options_are_one_line_errors():
    with pytest.raises(InvalidArgumentError, match="pooling must be one of class, sample, token"):
        SimilarityStats(4, "pixel")
    with pytest.raises(InvalidArgumentError, match="variant must be one of"):
        fit_similarity(SimilarityStats(4, "token"), "affine")
    with pytest.raises(InvalidArgumentError, match="at least one sample"):
        fit_similarity(SimilarityStats(4, "token"))


def test_the_fit_from_sampling_is_trajectory_consistent_and_reproducible(tiny_random):
    fit = TCCFit("small", [0, 1, 2, 3], per_class=1, steps=STEPS, batch_size=3, pooling="token")
    one = fit_tcc_pack(tiny_random, "fora-50", fit, progress=False)
    again = fit_tcc_pack(tiny_random, "fora-50", fit, progress=False)
    weak = fit_tcc_pack(tiny_random, "fora-50", replace(fit, alpha=0.0), progress=False)
    assert one.targets == default_targets(resolve_method("fora-50", RunShape(STEPS, 3)).schedule) == [1, 3, 5, 7]
    assert one.R.shape == (4, 3, 2, 32, 32) and one.mu_a.shape == (4, 3, 2, 32)
    assert all(torch.equal(getattr(one, n), getattr(again, n)) for n in ("R", "s", "mu_a", "mu_b"))
    # the first target sees no earlier correction; later ones see the earlier targets' maps at alpha
    assert torch.equal(one.R[0], weak.R[0]) and torch.equal(one.mu_b[0], weak.mu_b[0])
    assert not torch.equal(one.mu_b[1], weak.mu_b[1])
    torch.testing.assert_close(torch.linalg.matrix_rank(one.R[0, 0, 0]), torch.tensor(32))
    with pytest.raises(InvalidArgumentError, match="where 'fora-50' reuses units .* 2 is not one"):
        fit_tcc_pack(tiny_random, "fora-50", replace(fit, classes=[0], targets=[2]), progress=False)
    with pytest.raises(InvalidArgumentError, match="must be a plain schedule"):
        fit_tcc_pack(tiny_random, "fora-50+goc", replace(fit, classes=[0]), progress=False)


# ----------------------------------------------------------------------------- 3. the pack file and method strings


def test_the_pack_round_trips_and_refuses_other_runs_in_one_line(tiny_random, tmp_path):
    pack = planted_pack(tiny_random)
    path = pack.save(tmp_path / "p.safetensors")
    back = TCCPack.load(path)
    assert back.header() == pack.header()
    assert np.array_equal(back.host_mask, pack.host_mask)
    assert all(torch.equal(getattr(back, n), getattr(pack, n)) for n in ("R", "s", "mu_a", "mu_b", "rank"))
    text, run = f"fora-50+tcc:pack={path}", RunShape.of(tiny_random, STEPS)
    assert resolve_method(text, run).engine(tiny_random).compensator.pack.targets == [1, 3]
    refusals = {
        "for 8 steps, not 10": lambda: resolve_method(text, RunShape.of(tiny_random, 10)),
        "host 'fora-50', which reuses other units": lambda: resolve_method(f"fora-25+tcc:pack={path}", run),
        "model 'small', not 'tiny-digits'": lambda: resolve_method(
            text, run, Resources(model="tiny-digits", cfg_scale=1.5)
        ),
        "cfg 1.5, not 4": lambda: resolve_method(text, run, Resources(model="small", cfg_scale=4.0)),
        "depth 3 and width 32, not 2": lambda: resolve_method(text, RunShape.of(small_dit(depth=2), STEPS)),
        "pooling 'class', not 'token'": lambda: resolve_method(f"{text}:pooling=token", run),
    }
    for message, build in refusals.items():
        with pytest.raises(TCCPackError, match=message) as info:
            build()
        assert "\n" not in str(info.value) and "goc tcc-pack" in str(info.value)
    (tmp_path / "bad.safetensors").write_bytes(b"not a pack")
    with pytest.raises(TCCPackError, match="is corrupt or not a TCC pack"):
        TCCPack.load(tmp_path / "bad.safetensors")


def test_method_strings_and_the_default_pack_path():
    method = CacheMethod.parse("fora-50+tcc:alpha=1.0")
    assert (method.compensator, method.compensator_options) == ("tcc", {"alpha": 1.0})
    l2c = CacheMethod.parse("l2c+tcc:pooling=token")  # the router is the caller's, found when it is resolved
    assert l2c.compensator_options == {"pooling": "token"} and l2c.needs_router
    with pytest.raises(InvalidArgumentError, match="pooling must be one of"):
        CacheMethod.parse("fora-50+tcc:pooling=pixel")
    with pytest.raises(TCCPackError, match="needs a TCC pack: pass tcc:pack=FILE"):
        resolve_method("fora-50+tcc", RunShape.of(small_dit(), STEPS))
    with pytest.raises(InvalidArgumentError, match="needs a loaded pack"):
        TCCCompensator(TCCConfig())
    path = default_pack_path("DiT-XL/2", 20, 1.5, "l2c", "token")
    assert path.parent.name == "tcc" and path.name == "DiT-XL-2_ddim20_cfg1.5_l2c_token.safetensors"
    assert default_pack_path("tiny-digits", 20, 1.5, "fora-50").name == "tiny-digits_ddim20_cfg1.5_fora-50.safetensors"


def test_the_extra_macs_are_the_matmuls_of_the_corrected_units(tiny_random):
    from goc_utils.model.macs import model_macs

    _, engine = sample(tiny_random, "fora-50+tcc", planted_pack(tiny_random, targets=(1, 3)))
    _, host = sample(tiny_random, "fora-50")
    tokens, d, depth = tiny_random.num_tokens, tiny_random.hidden_size, tiny_random.depth
    assert engine.compensator.extra_macs(engine.schedule, tokens) == 2 * depth * 2 * tokens * d * d
    _, off = sample(tiny_random, "fora-50+tcc", planted_pack(tiny_random), alpha=0.0)
    assert off.compensator.extra_macs(off.schedule, tokens) == 0
    macs = model_macs(tiny_random)
    with_tcc, plain = engine.cost(macs)["macs_speedup"], host.cost(macs)["macs_speedup"]
    total = STEPS * macs.forward
    assert total / with_tcc - total / plain == pytest.approx(2 * depth * 2 * tokens * d * d)


def test_goc_tcc_pack_then_goc_sample_and_one_line_refusals(tmp_path, capsys):
    from goc_utils.cli import main
    from tests.conftest import run_bad_input

    pack = tmp_path / "p.safetensors"
    fit = ["tcc-pack", "--steps", "4", "--classes", "0,1", "--per-class", "1", "--out", str(pack), "--threads", "1"]
    assert main(fit + ["--pooling", "token"]) == 0
    assert "at steps 1,3; rank of M 31..31 of 128" in capsys.readouterr().out  # 2 samples x 16 tokens
    assert TCCPack.load(pack).header()["pooling"] == "token"
    def grid(steps: str = "4", cfg: str = "1.5") -> list[str]:
        return ["sample", "--steps", steps, "--classes", "1", "--out", str(tmp_path / "g.png"), "--cfg-scale", cfg]

    assert main(grid() + ["--method", "fora-50+tcc", "--tcc-pack", str(pack)]) == 0
    assert (tmp_path / "g.png").is_file()
    capsys.readouterr()
    with_pack = ["--tcc-pack", str(pack)]
    run_bad_input([*grid(), *with_pack, "--method", "fora-25+tcc"], "host 'fora-50'", capsys)
    run_bad_input([*grid(cfg="4"), *with_pack, "--method", "fora-50+tcc"], "cfg 1.5, not 4", capsys)
    run_bad_input([*grid(steps="5"), "--method", "fora-50+tcc"], "ddim5_cfg1.5_fora-50.safetensors' does", capsys)
    run_bad_input([*fit, "--host", "fora-50+goc"], "must be a plain schedule", capsys)
    run_bad_input([*fit, "--target-steps", "2"], "2 is not one", capsys)


@pytest.mark.parametrize("host", ["fora-50", "l2c"])
def test_the_committed_packs_fit_the_default_model(host):
    from goc_utils.cache.l2c import default_router
    from goc_utils.model.checkpoints import load_model

    model = load_model("tiny-digits")
    for pooling in ("class", "token"):
        resources = Resources(router=str(default_router("tiny-digits", 20)), model="tiny-digits", cfg_scale=1.5)
        engine = resolve_method(f"{host}+tcc:pooling={pooling}", RunShape.of(model, 20), resources).engine(model)
        pack = engine.compensator.pack
        assert (pack.targets, pack.pooling, pack.variant, pack.fit_alpha) == ([1, 3, 5, 7], pooling, "full", 1.75)
        ranks = set(pack.rank.flatten().tolist())
        assert ranks == ({9} if pooling == "class" else {128})  # 10 class means: rank <= 9 of width 128


# ----------------------------------------------------------------------------- 4. the published arithmetic, alpha


def published_procrustes(a: torch.Tensor, b: torch.Tensor):
    """The published fit as its code reads (written here from that reading): centre both point sets on their
    means, ``M = Bc^T Ac``, ``R = U Vh`` from torch's SVD of M, ``s = <Ac, Bc R> / (|Bc R|^2 + 1e-12)``."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    ac, bc = a - mu_a, b - mu_b
    u, _, vh = torch.linalg.svd(bc.T @ ac, full_matrices=False)
    r = u @ vh
    rotated = bc @ r
    return mu_a, mu_b, r, (ac * rotated).sum() / ((rotated * rotated).sum() + 1e-12), bc.T @ ac


@pytest.mark.parametrize("points", [300, 10])
def test_our_fit_is_the_published_arithmetic_on_random_points(points):
    d = 32
    g = torch.Generator().manual_seed(points)
    a = torch.randn(points, d, generator=g, dtype=torch.float64) * 2 + 1
    b = 0.7 * a @ random_orthogonal(d, 5).double() + 0.3 * torch.randn(points, d, generator=g, dtype=torch.float64)
    stats = SimilarityStats(d, "sample")
    for start in range(0, points, 7):  # streamed; one token per sample, so its token mean is the point
        stats.add(a[start : start + 7, None], b[start : start + 7, None], torch.zeros(len(a[start : start + 7])))
    ours = fit_similarity(stats)
    mu_a, mu_b, r, s, m = published_procrustes(a, b)
    np.testing.assert_allclose(ours["mu_a"], mu_a.numpy(), atol=1e-12)
    np.testing.assert_allclose(ours["mu_b"], mu_b.numpy(), atol=1e-12)
    np.testing.assert_allclose(stats.moments()[2], m.numpy(), atol=1e-9)
    assert ours["s"] == pytest.approx(float(s), rel=1e-9)  # s = nuclear norm of M / |Bc|^2: free of R's null space
    if points > d:  # full rank: R is fixed by the data, and both equal
        assert int(ours["rank"]) == d
        np.testing.assert_allclose(ours["R"], r.numpy(), atol=1e-9)
    else:  # rank points - 1: equal on the span of M, which the data fix
        assert int(ours["rank"]) == points - 1
        span = np.linalg.svd(m.numpy())[0][:, : points - 1]
        np.testing.assert_allclose(span.T @ ours["R"], span.T @ r.numpy(), atol=1e-9)


def test_a_pack_is_used_at_the_alpha_it_was_fitted_with(tiny_random):
    pack = planted_pack(tiny_random)  # fitted (the dataclass default) at the published 1.75
    default, engine = sample(tiny_random, "fora-50+tcc", pack)
    assert engine.compensator.alpha == 1.75
    assert torch.equal(default, sample(tiny_random, "fora-50+tcc:alpha=1.75", pack)[0])
    with pytest.raises(TCCPackError, match="fitted at alpha 1.75 .* not 1: refit it with `goc tcc-pack --alpha 1`"):
        sample(tiny_random, "fora-50+tcc:alpha=1", pack)
    other, _ = sample(tiny_random, "fora-50+tcc:alpha=1:any_alpha", pack)  # said explicitly
    assert not torch.equal(other, default)


@pytest.mark.parametrize("alpha", [0.0, -0.5])
def test_alpha_at_or_below_zero_corrects_nothing_as_published(tiny_random, alpha):
    plain, _ = sample(tiny_random, "fora-50")
    off, engine = sample(tiny_random, f"fora-50+tcc:alpha={alpha}", planted_pack(tiny_random))
    assert torch.equal(plain, off) and engine.compensator.extra_macs(engine.schedule, 16) == 0


def test_goc_tcc_pack_chooses_alpha_on_held_out_noise_and_warns_below_full_rank(tmp_path, capsys):
    from goc_utils.cli import main

    pack = tmp_path / "p.safetensors"
    fit = ["tcc-pack", "--steps", "4", "--classes", "0,1", "--per-class", "1", "--threads", "1", "--out", str(pack)]
    assert main([*fit, "--pooling", "sample", "--alpha", "0.25,1.75", "--holdout-per-class", "2"]) == 0
    out, err = capsys.readouterr()
    header = TCCPack.load(pack).header()
    choice = header["alpha_choice"]
    assert (choice["holdout_seed"], choice["holdout_samples"], set(choice["psnr_db"])) == (2, 4, {"0.25", "1.75"})
    best = max(choice["psnr_db"], key=lambda a: choice["psnr_db"][a])
    assert header["fit_alpha"] == float(best) and f"chosen {best}" in out
    assert "rank of M 1..1 of 128" in out and "trace(R)/D" in out  # two points: rank 1
    warnings = [line for line in err.splitlines() if "warning" in line]  # (the rest: progress bars)
    assert len(warnings) == 1 and "warning: M is below full rank (128) in 48 of 48 maps" in warnings[0]
    assert main([*fit, "--alpha", "0,1"]) == 2
    assert "--alpha must be > 0" in capsys.readouterr().err


def test_goc_tcc_packs_lists_the_rank_and_trace_of_the_committed_packs(tmp_path, capsys):
    from goc_utils.cli import main

    assert main(["tcc-packs", "--model", "tiny-digits", "--table", str(tmp_path / "packs")]) == 0
    out = capsys.readouterr().out
    assert "| tiny-digits_ddim20_cfg1.5_fora-50.safetensors | fora-50 | 1.5 | class | 320 | 128 | 9 | 0." in out
    assert "| tiny-digits_ddim20_cfg1.5_fora-50_token.safetensors | fora-50 | 1.5 | token | 320 | 128 | 128 |" in out
    rows = (tmp_path / "packs.csv").read_text().splitlines()
    assert rows[0].startswith("pack,host,cfg,pooling,samples,width,rank of M,trace(R)/D,alpha") and len(rows) == 5
    assert main(["tcc-packs", "--model", "DiT-XL/2"]) == 2
    assert "no TCC pack of DiT-XL/2" in capsys.readouterr().err


def test_goc_sample_bench_and_notebook_04_print_one_speedup_with_tccs_matmuls(capsys, tmp_path):
    from goc_utils.cli import main
    from goc_utils.evaluation.bench import same_noise_runs
    from goc_utils.model.checkpoints import load_model
    from goc_utils.study.nb04_fora_l2c_goc import method_table

    argv = ["sample", "--steps", "20", "--classes", "1", "--cfg-scale", "1.5", "--out", str(tmp_path / "g.png")]
    assert main([*argv, "--method", "fora-50+tcc"]) == 0
    printed = capsys.readouterr().out.split("theoretical speedup ")[1].split("x")[0]
    bench = ["bench", "--steps", "20", "--cfg-scale", "1.5", "--repeats", "1", "--methods", "fora-50,fora-50+tcc"]
    assert main(bench) == 0
    bench = capsys.readouterr().out
    assert f"| {printed}x |" in bench.split("| fora-50+tcc |")[1].splitlines()[0]
    model = load_model("tiny-digits")
    method = resolve_method("fora-50+tcc", RunShape.of(model, 20), Resources(model="tiny-digits", cfg_scale=1.5))
    results, errors, costs = same_noise_runs(model, [method], [1], cfg_scale=1.5)
    row = method_table(results, errors, costs)[1]
    assert row["theoretical speedup"] == f"{printed}x" and float(printed) < 1.9  # fora-50 alone: 1.937x
