"""Priors: streaming statistics, shard merging, file checks, inflection rule and weight calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from goc_utils.cache import build_schedule
from goc_utils.cache.method import CacheMethod, resolve_method
from goc_utils.cache.run import Resources, RunShape
from goc_utils.errors import InvalidArgumentError
from goc_utils.model.sampler import draw_noise, generate
from goc_utils.priors.auto import calibrate_weight, inflection_steps
from goc_utils.priors.extraction import extract_priors
from goc_utils.priors.replay import simulate_goc
from goc_utils.priors.stats import PriorsError, PriorStats, check_compatible, gradient_consistency, step_similarity
from tests.conftest import small_dit


@pytest.fixture(scope="module")
def model():
    return small_dit(depth=3, seed=4)


def test_streaming_mean_equals_the_batch_mean(model):
    classes = [0, 3, 5, 7, 9]
    streamed = extract_priors(model, "small", classes, steps=6, batch_size=2, progress=False)
    one_batch = extract_priors(model, "small", classes, steps=6, batch_size=8, progress=False)
    for name in ("sum_feature", "sum_abs", "sum_l2", "sum_cos", "sum_rel_l1", "sum_gram"):
        # float32 kernels differ slightly with the batch size; the accumulation itself is exact (below)
        np.testing.assert_allclose(getattr(streamed, name), getattr(one_batch, name), rtol=1e-3, atol=1e-4)
    # naive: keep every block output of the same single batch, then average
    outputs = {}
    handles = [
        b.register_forward_hook(lambda m, i, o, k=k: outputs.setdefault(k, []).append(o[: len(classes)]))
        for k, b in enumerate(model.blocks)
    ]
    noise = torch.cat([draw_noise(model, 1, 0) for _ in classes])
    generate(model, classes, steps=6, cfg_scale=4.0, noise=noise)
    for h in handles:
        h.remove()
    for block, per_step in outputs.items():
        naive = torch.stack(per_step).double().mean(1).numpy()  # (steps, T, D)
        np.testing.assert_allclose(one_batch.mean[:, block, 2], naive, rtol=1e-12, atol=1e-12)
    assert streamed.count == 5 and streamed.classes == classes and streamed.seeds == [0] * 5


def test_shards_merge_to_one_run(model, tmp_path):
    one = extract_priors(model, "small", range(6), seeds=[0], steps=5, batch_size=3, progress=False)
    a = extract_priors(model, "small", [0, 1, 2], seeds=[0], steps=5, batch_size=3, progress=False)
    b = extract_priors(model, "small", [3, 4, 5], seeds=[0], steps=5, batch_size=3, progress=False)
    a.save(tmp_path / "a.safetensors")
    b.save(tmp_path / "b.safetensors")
    merged = PriorStats.load(tmp_path / "a.safetensors").merge(PriorStats.load(tmp_path / "b.safetensors"))
    assert merged.count == one.count == 6
    assert merged.classes == one.classes and merged.seeds == one.seeds
    for name in ("sum_feature", "sum_abs", "sum_l2", "sum_cos", "sum_rel_l1", "sum_gram"):
        assert np.array_equal(getattr(merged, name), getattr(one, name)), name
    assert merged.gram_count == 6 and merged.has_gram
    assert merged.sum_feature.shape == one.sum_feature.shape  # memory does not grow with classes


def _unit_features(model, classes, seeds, steps, cfg_scale=4.0):
    """Per-sample attention / MLP outputs of un-cached sampling, the priors' protocol: (n, steps, depth, 2, T*D)."""
    from goc_utils.cache.engine import CacheEngine
    from goc_utils.cache.schedule import none_schedule

    pairs = [(c, s) for s in seeds for c in classes]
    out = np.zeros((len(pairs), steps, model.depth, 2, model.num_tokens * model.hidden_size))
    engine = CacheEngine(none_schedule(steps, model.depth), model=model)

    def observe(step, block, unit, value, computed):
        out[:, step, block, unit] = value[: len(pairs)].flatten(1).double().numpy()

    engine.on_unit = observe
    noise = torch.cat([draw_noise(model, 1, seed) for _, seed in pairs])
    generate(model, [c for c, _ in pairs], steps=steps, cfg_scale=cfg_scale, forward=engine.forward, noise=noise)
    return out


def test_per_sample_gram_and_replay_match_a_naive_replay(model):
    classes, seeds, steps = [0, 2, 5], [0, 1], 6
    stats = extract_priors(model, "small", classes, seeds=seeds, steps=steps, batch_size=6, progress=False)
    feats = _unit_features(model, classes, seeds, steps)
    naive_gram = np.einsum("nsbuk,ntbuk->stbu", feats, feats) / len(feats)
    np.testing.assert_allclose(stats.gram("samples"), naive_gram, rtol=1e-5)
    schedule = build_schedule("fora", steps, model.depth, interval=2)
    w, corrections = 0.7, [3, 5]
    sim = simulate_goc(stats, schedule, w, corrections)
    # naive: replay GOC's queue on every sample's own trajectory, then pool the squared errors
    for block in range(model.depth):
        for unit in range(2):
            queue, errs_plain, errs_goc = [], {}, {}
            for s in range(steps):
                f = feats[:, s, block, unit]
                if schedule.mask[s, block, unit]:
                    value = f
                else:
                    plain = queue[-1]
                    goc = plain + w * (queue[-1] - queue[-2]) if len(queue) == 2 else None
                    norm = np.mean(np.sum(f**2, 1))
                    errs_plain[s] = np.sqrt(np.mean(np.sum((f - plain) ** 2, 1)) / norm)
                    if goc is not None:
                        errs_goc[s] = np.sqrt(np.mean(np.sum((f - goc) ** 2, 1)) / norm)
                    value = goc if s in corrections and goc is not None else plain
                queue = (queue + [value])[-2:]
            for s, e in errs_plain.items():
                assert sim.error_plain[s, block, unit] == pytest.approx(e, rel=1e-4)
            for s, e in errs_goc.items():
                assert sim.error_goc[s, block, unit] == pytest.approx(e, rel=1e-4)
    # the class-averaged trajectory is the other source, and it differs
    mean_sim = simulate_goc(stats, schedule, w, corrections, source="mean")
    assert not np.allclose(np.nan_to_num(mean_sim.error_plain), np.nan_to_num(sim.error_plain))


@pytest.mark.parametrize("coupling", ["block", "unit"])
def test_replay_follows_the_coupling(model, coupling):
    """A per-unit schedule with a lone reused unit at a correction step: the replay matches a naive one."""
    classes, steps, w, corrections = [1, 4, 8], 6, 0.6, [3, 4, 5]
    stats = extract_priors(model, "small", classes, steps=steps, batch_size=3, progress=False)
    feats = _unit_features(model, classes, [0], steps)
    table = np.ones((steps, 2 * model.depth), dtype=bool)
    table[3, [0, 1, 2]] = False  # step 3: block 0 whole, block 1 attention only
    table[4, [2, 3]] = False  # step 4: block 1 whole
    table[5, [3]] = False  # step 5: block 1 MLP only
    schedule = build_schedule("matrix", steps, model.depth, table=table)
    sim = simulate_goc(stats, schedule, w, corrections, coupling=coupling)
    for block in range(model.depth):
        queues = {0: [], 1: []}
        for s in range(steps):
            reused = [not schedule.mask[s, block, u] for u in (0, 1)]
            whole = all(reused[u] and len(queues[u]) == 2 for u in (0, 1))
            for u in (0, 1):
                f, queue = feats[:, s, block, u], queues[u]
                value = f
                if reused[u]:
                    may_correct = len(queue) == 2 and (whole or coupling == "unit")
                    value = queue[-1] + w * (queue[-1] - queue[-2]) if s in corrections and may_correct else queue[-1]
                    norm = np.mean(np.sum(f**2, 1))
                    expected = np.sqrt(np.mean(np.sum((f - value) ** 2, 1)) / norm)
                    predicted = sim.error_goc[s, block, u] if may_correct else sim.error_plain[s, block, u]
                    assert predicted == pytest.approx(expected, rel=1e-4), (s, block, u)
                    assert np.isnan(sim.error_goc[s, block, u]) == (not may_correct)
                queues[u] = (queue + [value])[-2:]
    lone = {(3, 1, 0), (5, 1, 1)}
    assert ({key for key in lone if key in sim.terms} == lone) == (coupling == "unit")


def test_sketch_is_unbiased_for_inner_products():
    from goc_utils.priors.stats import sketch_features

    rng = torch.Generator().manual_seed(1)
    x = torch.randn(2, 64, 256, generator=rng)
    exact = sketch_features(x, limit=64 * 256)
    assert torch.equal(exact, x.flatten(1))
    sketched = sketch_features(x, limit=64 * 32)
    assert sketched.shape == (2, 64 * 32)
    assert float(sketched[0] @ sketched[0]) == pytest.approx(float(x[0].flatten() @ x[0].flatten()), rel=0.1)
    assert torch.equal(sketched, sketch_features(x, limit=64 * 32))  # fixed projection: shards agree


def test_statistics_are_sane(model):
    stats = extract_priors(model, "small", [1, 2], steps=6, progress=False)
    cos = stats.scalar("adjacent_cos")
    assert np.isnan(cos[0]).all() and np.all(cos[1:] <= 1 + 1e-9) and np.all(cos[1:] >= -1 - 1e-9)
    sim = step_similarity(stats, 1, 0)
    assert sim.shape == (6, 6) and np.allclose(np.diag(sim), 1) and np.allclose(sim, sim.T)
    assert gradient_consistency(stats).shape == (6, 3, 3)
    with pytest.raises(InvalidArgumentError):
        stats.scalar("nope")


def test_files_without_per_sample_statistics_fall_back_to_the_mean(model, tmp_path):
    stats = extract_priors(model, "small", [1, 2], steps=6, progress=False)
    stats.gram_count = 0  # as in a file written before ``gram`` existed
    path = stats.save(tmp_path / "old.safetensors")
    old = PriorStats.load(path)
    assert not old.has_gram
    with pytest.raises(PriorsError, match="no per-sample statistics"):
        old.gram("samples")
    schedule = build_schedule("fora", 6, model.depth, interval=2)
    assert np.array_equal(
        simulate_goc(old, schedule, 1.0).corrected, simulate_goc(old, schedule, 1.0, source="mean").corrected
    )


def test_bad_priors_files(model, tmp_path):
    stats = extract_priors(model, "small", [1], steps=4, progress=False)
    path = stats.save(tmp_path / "p.safetensors")
    with pytest.raises(PriorsError, match=r"steps 4 \(priors\) != 20 \(run\)"):
        check_compatible(stats.header() | {"steps": 20}, PriorStats.load(path).header(), "use priors")
    other = extract_priors(model, "small", [1], steps=4, cfg_scale=1.5, progress=False)
    with pytest.raises(PriorsError, match="cfg_scale"):
        stats.merge(other)
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[:200])
    with pytest.raises(PriorsError, match="corrupt"):
        PriorStats.load(tmp_path / "cut.safetensors")
    with pytest.raises(PriorsError, match="goc priors"):
        PriorStats.load(tmp_path / "missing.safetensors")
    with pytest.raises(InvalidArgumentError, match="class id 10 is out of range"):
        extract_priors(model, "small", [10], steps=2, progress=False)


def _synthetic(trajectory: list[float], depth: int = 1) -> PriorStats:
    stats = PriorStats("synthetic", len(trajectory), 4.0, depth, 1, 2)
    stats.count = 1
    for s, value in enumerate(trajectory):
        stats.sum_feature[s, :, :, 0, :] = [value, 1.0]
    return stats


def test_inflection_rule_skips_the_step_where_the_trajectory_turns():
    stats = _synthetic([0, 1, 2, 3, 4, 5, 6, 5, 4, 3])
    schedule = build_schedule("fora", 10, 1, interval=2)
    correct, inflections, sim = inflection_steps(stats, schedule, weight=0.5)
    assert inflections == [7] and correct == [3, 5, 9]
    assert np.nanmax(sim.error_goc[5]) < np.nanmax(sim.error_plain[5])


def test_per_step_least_squares_weight_recovers_a_linear_trajectory():
    stats = _synthetic([0.5 * s for s in range(12)])
    schedule = build_schedule("fora", 12, 1, interval=2)
    weight = calibrate_weight(stats, schedule, None, "step", iterations=3)
    assert weight[3, 0, 0] == pytest.approx(0.5) and weight[5, 0, 0] == pytest.approx(1.0)
    sim = simulate_goc(stats, schedule, weight, None)
    corrected = [s for s in range(12) if sim.corrected[s]]
    assert corrected == [3, 5, 7, 9, 11]
    assert np.nanmax(sim.error_goc[corrected]) < 1e-9
    w_global = calibrate_weight(stats, schedule, [5, 7, 9, 11], "global")
    assert 0.5 < w_global < 1.0  # step 5 wants 0.5 (plain reuse at 3), later steps 1.0

    def total(w):
        return np.nansum(simulate_goc(stats, schedule, w, [5, 7, 9, 11]).error_goc ** 2)

    assert total(w_global) < min(total(0.3), total(1.2))


def test_goc_auto_resolves_from_priors(model):
    stats = extract_priors(model, "small", [1, 2, 3], steps=8, progress=False)
    method = CacheMethod("fora-50", {}, "goc", {"correction_steps": "auto", "weight": "auto"})
    engine = resolve_method(method, RunShape.of(model, 8), Resources(priors=stats)).engine(model)
    config = engine.compensator.config
    assert isinstance(config.weight, float) and np.isfinite(config.weight)
    assert set(config.correction_steps) <= {3, 5, 7}


@pytest.mark.slow
def test_automatic_steps_and_weight_on_held_out_samples():
    """Priors from seeds 0-4 (committed); evaluation on 200 other samples (the eval harness's per-sample seeds)."""
    from goc_utils import paths
    from goc_utils.model.checkpoints import load_model
    from goc_utils.model.sampler import per_sample_inputs
    from goc_utils.priors.stats import default_priors_path

    torch.set_grad_enabled(False)
    model = load_model("tiny-digits")
    priors = PriorStats.load(default_priors_path("tiny-digits", 20, 4.0))
    assert set(priors.seeds) == set(range(5)) and priors.count == 50 and priors.has_gram
    labels, noise = per_sample_inputs(model, range(200), seed=11)
    reference = generate(model, labels, steps=20, cfg_scale=4.0, noise=noise).final
    for host in ("fora-25", "fora-50", "l2c"):
        errors = {}
        for text in (host, f"{host}+goc", f"{host}+goc:auto"):
            resources = Resources(router=str(paths.TINY_DIGITS_ROUTER), priors=priors)
            engine = resolve_method(text, RunShape.of(model, 20), resources).engine(model)
            final = generate(model, labels, steps=20, cfg_scale=4.0, noise=noise, forward=engine.forward).final
            errors[text] = float(((final - reference) ** 2).mean().sqrt())
        assert errors[f"{host}+goc:auto"] < errors[host], (host, errors)
        assert errors[f"{host}+goc:auto"] <= errors[f"{host}+goc"], (host, errors)
