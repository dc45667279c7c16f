"""GOC in diffusers: DiT weights both ways, the cache engine as diffusers hooks, pipelines."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    PixArtTransformer2DModel,
)

from goc_utils.cache import Resources, RunShape, resolve_method
from goc_utils.cache.l2c import default_router
from goc_utils.cache.schedule import theoretical_speedup
from goc_utils.errors import CheckpointError, InvalidArgumentError
from goc_utils.evaluation.eval import parse_methods
from goc_utils.integrations.diffusers import transformer as dd
from goc_utils.integrations.diffusers.hooks import DiffusersDiT, UnitCounter, apply_cache, remove_cache
from goc_utils.integrations.diffusers.peers import (
    CALIBRATION_SAMPLES,
    diffusers_backend,
    make_runner,
    parse_peer,
    resolve_any,
)
from goc_utils.model import diffusers_format as fmt
from goc_utils.model.checkpoints import load_model, read_state_dict
from goc_utils.model.dit import get_2d_sincos_pos_embed
from goc_utils.model.macs import model_macs
from goc_utils.model.presets import create_model
from goc_utils.model.sampler import generate, per_sample_inputs
from goc_utils.model.vae import vae_spec
from goc_utils.paths import PROJECT_ROOT
from goc_utils.priors.stats import priors_for_run
from tests.conftest import small_dit


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """tiny-digits exported with ``goc export-diffusers`` (the CLI, as a user runs it)."""
    out = tmp_path_factory.mktemp("export") / "tiny-digits-diffusers"
    done = subprocess.run(
        [sys.executable, "-m", "goc_utils.cli", "export-diffusers", "--model", "tiny-digits", "--out", str(out)],
        capture_output=True, text=True, cwd=PROJECT_ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["out"] == str(out)
    return out


# ----------------------------------------------------------------------------- 1. weights both ways


def test_tiny_digits_round_trips_through_the_diffusers_format(exported):
    ours = load_model("tiny-digits").state_dict()
    back = read_state_dict(exported)
    assert set(back) == set(ours)
    for key, value in ours.items():
        if key != "pos_embed":
            assert torch.equal(back[key], value), key
    # diffusers does not store the fixed sin-cos table; reading recomputes it exactly. The committed table
    # drifted from it by float32 EMA rounding during training (<= 1e-5), nothing more.
    exact = torch.from_numpy(get_2d_sincos_pos_embed(128, 4)).float().unsqueeze(0)
    assert torch.equal(back["pos_embed"], exact)
    assert (ours["pos_embed"] - exact).abs().max() < 1e-5


def test_the_diffusers_forward_equals_ours_on_the_same_weights(exported):
    ours = load_model("tiny-digits", ckpt=exported)
    theirs = dd.load_transformer(exported)
    torch.manual_seed(3)
    x, t, y = torch.randn(6, 1, 8, 8), torch.tensor([999, 750, 500, 251, 20, 0]), torch.tensor([0, 3, 9, 10, 5, 7])
    with torch.no_grad():
        a = ours(x, t, y)
        b = theirs(x, timestep=t, class_labels=y).sample
    assert a.shape == b.shape == (6, 2, 8, 8)  # eps and variance channels
    assert (a - b).abs().max() <= 1e-5
    # Without the published timestep features (diffusers' downscale_freq_shift=1) the two differ clearly.
    plain = dd.load_transformer(exported, dit_timesteps=False)
    with torch.no_grad():
        c = plain(x, timestep=t, class_labels=y).sample
    assert (a - c).abs().max() > 1e-3


def test_a_dit_xl2_state_dict_round_trips_key_for_key():
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in create_model("DiT-XL/2").state_dict().items()}
        reference = DiTTransformer2DModel(
            num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
            sample_size=32, patch_size=2, num_embeds_ada_norm=1000,
        ).state_dict()  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    ours = {k: torch.randn(s, generator=generator) for k, s in shapes.items() if k != "pos_embed"}
    ours["pos_embed"] = torch.from_numpy(get_2d_sincos_pos_embed(1152, 16)).float().unsqueeze(0)
    theirs = fmt.to_diffusers(ours)
    assert set(theirs) == set(reference)
    assert all(theirs[k].shape == reference[k].shape for k in reference)
    config = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
                  sample_size=32, patch_size=2, num_embeds_ada_norm=1000)  # fmt: skip
    back = fmt.from_diffusers(theirs, config)
    assert set(back) == set(ours)
    assert all(torch.equal(back[k], ours[k]) for k in ours)


def test_disagreeing_embedder_copies_and_foreign_folders_are_refused_in_one_line(exported, tmp_path):
    state = fmt.read_diffusers_state_dict(exported)
    state["transformer_blocks.5.norm1.emb.class_embedder.embedding_table.weight"] += 1
    with pytest.raises(CheckpointError, match="per-block copies .* differ \\(block 0 vs block 5\\)") as info:
        fmt.from_diffusers(state, fmt.read_config(exported))
    assert "\n" not in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="is not a diffusers DiT"):
        load_model("tiny-digits", ckpt=tmp_path / "empty")
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(CheckpointError, match="holds a UNet2DModel, not a DiT transformer"):
        load_model("tiny-digits", ckpt=tmp_path / "unet")
    with pytest.raises(CheckpointError, match="use --model tiny-digits"):
        load_model("DiT-S/2", ckpt=exported)


# ----------------------------------------------------------------------------- small random pipelines


def small_dit_pipeline(folder):
    """A DiTPipeline of small random components, saved and loaded back as a user would."""
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=3,
        sample_size=8, patch_size=2, num_embeds_ada_norm=1000, norm_eps=1e-6,
    )  # fmt: skip
    for block in transformer.transformer_blocks[1:]:  # one embedder, as in converted DiT checkpoints
        block.norm1.emb.load_state_dict(transformer.transformer_blocks[0].norm1.emb.state_dict())
    vae = AutoencoderKL(
        block_out_channels=(8,), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
    )  # fmt: skip
    DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler()).save_pretrained(str(folder))
    pipe = DiTPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_pipe(pipe, steps=10):
    return pipe(
        class_labels=[1, 207], num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images


@pytest.fixture(scope="module")
def dit_pipe(tmp_path_factory):
    return small_dit_pipeline(tmp_path_factory.mktemp("pipe") / "dit-pipeline")


def test_a_pipeline_folder_loads_onto_our_dit_and_supplies_its_vae(dit_pipe, tmp_path):
    dit_pipe.save_pretrained(str(tmp_path / "p"))
    state = read_state_dict(tmp_path / "p")
    assert state["blocks.2.attn.qkv.weight"].shape == (48, 16)
    assert vae_spec(None, tmp_path / "p") == str(tmp_path / "p" / "vae")
    assert vae_spec("mse", tmp_path / "p") == "mse"
    assert vae_spec(None, None) == "ema"
    assert vae_spec(None, None, "DiT-XL/2") == "ema"
    assert vae_spec(None, None, "tiny-fashion").endswith("tiny_fashion_vae")
    untied = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, num_layers=2, sample_size=8)
    untied.save_pretrained(str(tmp_path / "untied"))  # freshly initialised: one embedder per block
    with pytest.raises(CheckpointError, match="per-block copies of norm1.emb.timestep_embedder differ"):
        read_state_dict(tmp_path / "untied")


def test_invariants_on_a_dit_pipeline(dit_pipe):
    pipe = dit_pipe
    plain = run_pipe(pipe)
    apply_cache(pipe.transformer, "fora:interval=1", steps=10)
    assert np.array_equal(run_pipe(pipe), plain)  # FORA with interval 1 reuses nothing: bit for bit
    apply_cache(pipe.transformer, "fora-50", steps=10)
    host = run_pipe(pipe)
    apply_cache(pipe.transformer, "fora-50+goc:w=0", steps=10)
    assert np.array_equal(run_pipe(pipe), host)  # GOC with w = 0 is its host
    apply_cache(pipe.transformer, "fora-50+goc", steps=10)
    goc = run_pipe(pipe)
    assert not np.array_equal(goc, host) and not np.array_equal(host, plain)
    assert np.array_equal(run_pipe(pipe), goc)  # a second run starts afresh (state reset at its first step)
    remove_cache(pipe.transformer)
    assert np.array_equal(run_pipe(pipe), plain)
    assert not hasattr(pipe.transformer, "_goc_engine")


def test_a_run_of_another_length_is_refused_in_one_line(dit_pipe):
    pipe = dit_pipe
    apply_cache(pipe.transformer, "fora-50+goc", steps=8)
    try:
        with pytest.raises(InvalidArgumentError, match="applied for 8 steps but this run goes on past step 8"):
            run_pipe(pipe, steps=10)
        run_pipe(pipe, steps=5)  # shorter: noticed when the next run starts
        with pytest.raises(
            InvalidArgumentError, match="stopped after 5; call apply_cache\\(transformer, method, steps=5"
        ):
            run_pipe(pipe, steps=8)
        run_pipe(pipe, steps=8)  # the right length runs again
    finally:
        remove_cache(pipe.transformer)


def test_the_documented_snippet_runs_as_written(dit_pipe, tmp_path):
    readme = (PROJECT_ROOT / "docs" / "diffusers.md").read_text()
    snippet = re.search(r"<!-- diffusers-snippet -->\s*```python\n(.*?)```", readme, re.S)
    assert snippet, "docs/diffusers.md lacks the diffusers snippet"
    dit_pipe.save_pretrained(str(tmp_path / "DiT-XL-2-256"))
    code = snippet.group(1).replace("facebook/DiT-XL-2-256", str(tmp_path / "DiT-XL-2-256"))
    scope: dict = {}
    exec(compile(code, "docs/diffusers.md", "exec"), scope)  # noqa: S102 - the documented snippet, run as written
    assert len(scope["images"]) == 2


def pixart_transformer():
    torch.manual_seed(0)  # the small configuration diffusers' own tests use
    return PixArtTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
        in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
    ).eval()  # fmt: skip


def run_pixart(transformer, steps=10):
    """A denoising loop's sequence of calls: falling timesteps, the same text condition."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    text = torch.randn(2, 5, 32, generator=generator)
    outs = []
    with torch.no_grad():
        for t in np.linspace(999, 0, steps).round():
            out = transformer(
                x, encoder_hidden_states=text, timestep=torch.full((2,), t), added_cond_kwargs={}, return_dict=False
            )[0]
            x = x - 0.05 * out[:, :4]
            outs.append(out)
    return torch.stack(outs)


def test_invariants_on_a_pixart_transformer():
    transformer = pixart_transformer()
    plain = run_pixart(transformer)
    apply_cache(transformer, "fora:interval=1", steps=10)
    assert torch.equal(run_pixart(transformer), plain)
    apply_cache(transformer, "fora-50", steps=10)
    host = run_pixart(transformer)
    apply_cache(transformer, "fora-50+goc:w=0", steps=10)
    assert torch.equal(run_pixart(transformer), host)
    apply_cache(transformer, "fora-50+goc", steps=10)
    goc = run_pixart(transformer)
    assert not torch.equal(goc, host) and not torch.equal(host, plain)
    assert torch.equal(goc[0], plain[0])  # step 0 computes everything
    remove_cache(transformer)
    assert torch.equal(run_pixart(transformer), plain)


# ----------------------------------------------------------------------------- 2. one engine, two front ends


HOOKED = ["none", "fora-50", "fora-50+goc", "l2c+goc", "fora-25+taylor", "fora-50+goc:auto", "fora-50+tcc", "l2c+tcc"]


@pytest.mark.parametrize("text", HOOKED)
def test_the_engine_through_the_hooks_equals_the_native_engine(exported, text):
    model = load_model("tiny-digits", ckpt=exported)
    transformer = dd.load_transformer(exported)
    wrapped = DiffusersDiT(transformer)
    labels, noise = per_sample_inputs(model, range(12), 5)
    resources = Resources(
        router=str(default_router("tiny-digits", 20)),
        priors=lambda: priors_for_run("tiny-digits", model, 20, 1.5),  # loaded only for goc:auto
        model="tiny-digits",  # the committed TCC packs
        cfg_scale=1.5,
    )
    method = resolve_method(text, RunShape.of(model, 20), resources)
    native = generate(model, labels, steps=20, cfg_scale=1.5, forward=method.engine(model).forward,
                      noise=noise).final  # fmt: skip
    engine = apply_cache(transformer, method, 20)  # resolved for the native model: the transformer's run is the same
    counter = UnitCounter(transformer, 20)

    def forward(x, t, y, step):
        counter.call(step, x.shape[0])
        return wrapped(x, t, y)

    hooked = generate(wrapped, labels, steps=20, cfg_scale=1.5, forward=forward, noise=noise).final
    remove_cache(transformer)
    assert (native - hooked).abs().max() <= 1e-5
    if text != "none":  # the units that ran are exactly the schedule's (measured, not assumed)
        assert np.array_equal(counter.fraction(), engine.schedule.mask.astype(float))
        assert counter.cost(model_macs(model))["macs_speedup"] == pytest.approx(
            theoretical_speedup(model_macs(model), engine.schedule)
        )


def test_priors_through_the_hooks_equal_native_priors(exported):
    from goc_utils.priors.extraction import extract_priors

    model = load_model("tiny-digits", ckpt=exported)
    wrapped = DiffusersDiT(dd.load_transformer(exported))
    a = extract_priors(model, "tiny-digits", [1, 7], seeds=(0,), steps=10, cfg_scale=1.5, progress=False)
    b = extract_priors(wrapped, "tiny-digits", [1, 7], seeds=(0,), steps=10, cfg_scale=1.5, progress=False)
    assert np.allclose(a.mean, b.mean, atol=1e-5)
    auto_a = a.auto_goc(resolve_method("fora-50", RunShape(steps=10, depth=12)).schedule)
    auto_b = b.auto_goc(resolve_method("fora-50", RunShape(steps=10, depth=12)).schedule)
    assert auto_a.steps == auto_b.steps and abs(auto_a.weight - auto_b.weight) < 1e-4


# ----------------------------------------------------------------------------- 3. diffusers' caches as rows


def test_peer_method_strings_parse_with_one_line_errors():
    assert parse_peer("diffusers:fbc:threshold=0.05") == ("fbc", {"threshold": 0.05})
    name, options = parse_peer(
        "diffusers:pab:spatial_attention_block_skip_range=4:spatial_attention_timestep_skip_range=-1..1000"
    )
    assert (name, options["spatial_attention_timestep_skip_range"]) == ("pab", (-1, 1000))
    assert parse_peer("diffusers:taylorseer:disable_cache_after_step=none")[1] == {"disable_cache_after_step": None}
    for text, message in [
        ("diffusers:teacache", "unknown diffusers cache .* choose one of: taylorseer, fbc, magcache, pab, fastercache"),
        ("diffusers:fbc:thresh=1", "diffusers:fbc takes key=value with keys: threshold"),
        ("diffusers:fbc:threshold=abc", "bad value threshold=abc .*expected float"),
    ]:
        with pytest.raises(InvalidArgumentError, match=message) as info:
            parse_methods(f"none,{text}")
        assert "\n" not in str(info.value)
    native = load_model("tiny-digits")
    with pytest.raises(InvalidArgumentError, match="runs with --backend diffusers"):
        make_runner(native, resolve_any("diffusers:fbc", RunShape.of(native, 20), Resources(cfg_scale=1.5)))


PEERS_RUNNING = {
    "diffusers:taylorseer:cache_interval=2:disable_cache_before_step=1": (1.9, 2.0),
    "diffusers:fbc:threshold=0.13": (1.2, 3.0),
    "diffusers:magcache:threshold=0.1:max_skip_steps=2:retention_ratio=0.1": (1.2, 3.0),
    "diffusers:pab:spatial_attention_block_skip_range=4:spatial_attention_timestep_skip_range=-1..1000": (1.3, 1.4),
    "diffusers:fastercache:unconditional_batch_skip_range=2": (1.1, 1.5),
}
"""Each of diffusers' caches at one setting, with the MACs speedup range it must measure on 8 tiny samples."""


@pytest.fixture(scope="module")
def backend():
    model = load_model("tiny-digits")
    return model, diffusers_backend(model), per_sample_inputs(model, range(8), 3)


def _sample(wrapped, inputs, forward):
    labels, noise = inputs
    return generate(wrapped, labels, steps=20, cfg_scale=1.5, forward=forward, noise=noise).final


def _runner(wrapped, text, seed=0):
    """What samples ``text`` on the diffusers transformer (20 steps, cfg 1.5); MagCache calibrates on ``seed``."""

    def calibration(forward) -> None:
        labels, noise = per_sample_inputs(wrapped, range(CALIBRATION_SAMPLES), seed)
        generate(wrapped, labels, steps=20, cfg_scale=1.5, forward=forward, noise=noise)

    method = resolve_any(text, RunShape.of(wrapped, 20), Resources(cfg_scale=1.5))
    return make_runner(wrapped, method, calibration)


@pytest.mark.parametrize("text", list(PEERS_RUNNING))
def test_every_diffusers_cache_runs_on_dit_and_its_cost_is_measured(backend, text):
    model, wrapped, inputs = backend
    reference = _sample(wrapped, inputs, None)
    engine = _runner(wrapped, text, seed=3)
    cost = engine.cost(model_macs(model), lambda forward: _sample(wrapped, inputs, forward))
    first = _sample(wrapped, inputs, engine.forward)
    other = _runner(wrapped, "fora-50+goc")
    _sample(wrapped, inputs, other.forward)  # another method takes the transformer over ...
    assert torch.equal(_sample(wrapped, inputs, engine.forward), first)  # ... and this one comes back, state reset
    low, high = PEERS_RUNNING[text]
    assert low <= cost["macs_speedup"] <= high
    assert 0 < (first - reference).abs().max() < 1.0  # it changed something, and not to noise
    assert getattr(wrapped.transformer, "_goc_runner", None) is None  # plain again between runs
    assert torch.equal(_sample(wrapped, inputs, None), reference)


def test_measured_costs_match_what_is_known(backend):
    model, wrapped, inputs = backend
    macs = model_macs(model)
    run = lambda forward: _sample(wrapped, inputs, forward)  # noqa: E731
    # TaylorSeer's schedule is fixed: interval 2 from step 1 computes steps 0, 2, ..., 18 = FORA-50's MACs.
    taylor = _runner(wrapped, "diffusers:taylorseer:cache_interval=2:disable_cache_before_step=1").cost(macs, run)
    fora = _runner(wrapped, "fora-50").cost(macs, run)
    assert taylor == pytest.approx(fora)
    # First Block Cache with threshold 0 never skips: nothing saved, the un-cached samples bit for bit.
    fbc = _runner(wrapped, "diffusers:fbc:threshold=0")
    assert fbc.cost(macs, run)["macs_speedup"] == pytest.approx(1.0)
    assert torch.equal(_sample(wrapped, inputs, fbc.forward), _sample(wrapped, inputs, None))


def test_export_replaces_only_its_own_folders_and_cleans_stale_partials(tmp_path):
    model = small_dit()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not a DiT transformer folder written by goc export-diffusers"):
        dd.export_diffusers(model, foreign)
    assert (foreign / "notes.txt").read_text() == "mine"
    out = tmp_path / "dit"
    stale = tmp_path / ".dit.999999999.partial"  # left by a killed export (no such process)
    stale.mkdir()
    dd.export_diffusers(model, out)
    dd.export_diffusers(small_dit(seed=1), out)  # its own export is replaced
    assert not stale.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["dit", "foreign"]
    torch.testing.assert_close(read_state_dict(out)["pos_embed"], model.pos_embed.detach())
