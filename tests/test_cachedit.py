"""cache-dit's DBCache as a peer on our diffusers transformer: bit-exact invariants, measured MACs, guidance halves,
one-line errors. The tests that run cache-dit skip with a reason when the optional extra is not installed."""

from __future__ import annotations

import sys

import pytest
import torch

from goc_utils.cache import Resources, RunShape, without_router
from goc_utils.errors import InvalidArgumentError
from goc_utils.integrations import cachedit
from goc_utils.integrations.diffusers.peers import diffusers_backend, make_runner, parse_peer, resolve_any
from goc_utils.model.checkpoints import load_model
from goc_utils.model.macs import model_macs
from goc_utils.model.sampler import generate, per_sample_inputs
from goc_utils.study.viz import peer_label

STEPS = 20


@pytest.fixture(scope="module")
def backend():
    pytest.importorskip("cache_dit", reason="cache-dit is the optional extra .[peers] (make setup installs it)")
    torch.set_grad_enabled(False)
    model = load_model("tiny-digits")
    return model, diffusers_backend(model), per_sample_inputs(model, range(2), 3)


def _sample(wrapped, inputs, forward=None):
    labels, noise = inputs
    return generate(wrapped, labels, steps=STEPS, cfg_scale=1.5, forward=forward, noise=noise).final


def _runner(wrapped, text):
    """What samples ``text`` on the diffusers transformer (``STEPS`` steps, cfg 1.5)."""
    return make_runner(wrapped, resolve_any(text, RunShape.of(wrapped, STEPS), Resources(cfg_scale=1.5)))


def _halves(wrapped):
    """A plain forward that runs the guidance halves as two calls, as ``separate_cfg=true`` does."""

    def forward(x, t, y, step):
        half = x.shape[0] // 2
        return torch.cat([wrapped(x[:half], t[:half], y[:half]), wrapped(x[half:], t[half:], y[half:])])

    return forward


ZERO = [
    ("none", ""),
    ("taylorseer", ":separate_cfg=true"),
    ("foca", ":separate_cfg=true:cfg_compute_first=true:cfg_diff_separate=false"),
    ("dmd", ""),
]


@pytest.mark.parametrize("calibrator, cfg", ZERO)
def test_threshold_0_skips_nothing_and_equals_the_uncached_samples_bit_for_bit(backend, calibrator, cfg):
    model, wrapped, inputs = backend
    reference = _sample(wrapped, inputs, _halves(wrapped) if cfg else None)
    runner = _runner(wrapped, f"cachedit:dbcache:fn=1:threshold=0:warmup=2:calibrator={calibrator}{cfg}")
    cost = runner.cost(model_macs(model), lambda forward: _sample(wrapped, inputs, forward))
    assert cost["macs_speedup"] == pytest.approx(1.0) and cost["cache_ratio"] == 0
    assert torch.equal(_sample(wrapped, inputs, runner.forward), reference)


def test_after_a_cached_run_the_transformer_is_plain_again(backend):
    model, wrapped, inputs = backend
    transformer = wrapped.transformer
    reference = _sample(wrapped, inputs)
    keys = list(transformer.state_dict())
    runner = _runner(wrapped, "cachedit:dbcache:fn=1:threshold=0.15:warmup=2:calibrator=taylorseer")
    first = _sample(wrapped, inputs, runner.forward)
    assert 0 < (first - reference).abs().max() < 1.0  # it skipped something, and not into noise
    assert torch.equal(_sample(wrapped, inputs, runner.forward), first)  # a fresh context every run
    # cache-dit's own disable_cache leaves an alias module and reorders the submodules: remove() undoes both
    assert not cachedit.is_applied(transformer) and not hasattr(transformer, "_norm1_emb")
    assert list(transformer.state_dict()) == keys
    assert torch.equal(_sample(wrapped, inputs), reference)
    other = _runner(wrapped, "fora-50+goc")  # another method on the same transformer, then this one
    _sample(wrapped, inputs, other.forward)
    assert torch.equal(_sample(wrapped, inputs, runner.forward), first)


@pytest.mark.parametrize("cfg", ["", ":separate_cfg=true"])
def test_the_measured_macs_of_a_forced_skip_pattern_are_the_patterns(backend, cfg):
    model, wrapped, inputs = backend
    mask = "11101010011101100101"  # warmup 2, then a static mask: every 0 skips the middle blocks
    runner = _runner(wrapped, f"cachedit:dbcache:fn=2:bn=1:warmup=2:mask={mask}:policy=static{cfg}")
    macs = model_macs(model)
    cost = runner.cost(macs, lambda forward: _sample(wrapped, inputs, forward))
    skipped = [s for s, bit in enumerate(mask) if bit == "0"]
    seen = runner.cachedit_account  # cache-dit's own account agrees
    assert (seen["skipped"], seen["uncond_skipped"]) == (skipped, skipped if cfg else [])
    middle = wrapped.depth - 2 - 1
    block = macs.adaln_per_block + sum(macs.units)
    per_image = STEPS * macs.forward - len(skipped) * middle * block
    assert cost["macs_speedup"] == pytest.approx(STEPS * macs.forward / per_image, rel=1e-12)
    assert cost["cache_ratio"] == pytest.approx(len(skipped) * middle / (STEPS * wrapped.depth), rel=1e-12)


@pytest.mark.parametrize("diff", ["", ":cfg_diff_separate=false"])
def test_separate_cfg_decides_for_each_guidance_half_and_counts_each_half(backend, diff):
    model, wrapped, inputs = backend
    runner = _runner(wrapped, f"cachedit:dbcache:fn=1:threshold=0.12:warmup=2:separate_cfg=true{diff}")
    cost = runner.cost(model_macs(model), lambda forward: _sample(wrapped, inputs, forward))
    seen = runner.cachedit_account
    cond, uncond = seen["skipped"], seen["uncond_skipped"]
    assert set(seen["diffs"]) == set(seen["uncond_diffs"]) == set(range(2, STEPS))  # both halves measured ...
    for skipped, diffs in ((cond, seen["diffs"]), (uncond, seen["uncond_diffs"])):  # ... and decided on their own
        assert skipped == [s for s, d in sorted(diffs.items()) if d < 0.12]
    if diff:  # the uncond call reuses the cond call's difference
        assert seen["uncond_diffs"] == seen["diffs"]
    else:
        assert all(seen["uncond_diffs"][s] != seen["diffs"][s] for s in range(2, STEPS))
    middle = wrapped.depth - 1
    expected = (len(cond) + len(uncond)) / 2 * middle / (STEPS * wrapped.depth)  # each half is half the images
    assert cost["cache_ratio"] == pytest.approx(expected, rel=1e-12)


def test_one_decision_for_the_whole_batch_without_separate_cfg(backend):
    model, wrapped, inputs = backend
    runner = _runner(wrapped, "cachedit:dbcache:fn=1:threshold=0.12:warmup=2")
    cost = runner.cost(model_macs(model), lambda forward: _sample(wrapped, inputs, forward))
    skipped = runner.cachedit_account["skipped"]
    assert runner.cachedit_account["uncond_skipped"] == [] and skipped
    assert cost["cache_ratio"] == pytest.approx(len(skipped) * 11 / (STEPS * 12), rel=1e-12)


def test_separate_cfg_calls_the_halves_in_cache_dits_order():
    x, t, y = torch.arange(8.0).reshape(4, 2), torch.full((4,), 7), torch.tensor([3, 5, 10, 10])
    for first, order in ((False, [[3, 5], [10, 10]]), (True, [[10, 10], [3, 5]])):
        seen = []

        def forward(a, b, c):
            seen.append(c.tolist())
            return a * 2

        options = {"separate_cfg": True, "cfg_compute_first": first}
        assert torch.equal(cachedit.call(forward, options, x, t, y), x * 2)  # back in [cond; uncond] order
        assert seen == order
    seen = []
    cachedit.call(lambda a, b, c: seen.append(c.tolist()) or a, {}, x, t, y)
    assert seen == [[3, 5, 10, 10]]


def test_options_parse_to_cache_dits_configs():
    pytest.importorskip("cache_dit", reason="cache-dit is the optional extra .[peers]")
    name, options = parse_peer("cachedit:dbcache:fn=1:bn=2:threshold=0.1:warmup=4:calibrator=taylorseer:order=2", 20)
    assert (name, options) == ("dbcache", {"fn": 1, "bn": 2, "threshold": 0.1, "warmup": 4,
                                           "calibrator": "taylorseer", "order": 2})  # fmt: skip
    cache, calibrator = cachedit.configs(options, 20)
    assert (cache.Fn_compute_blocks, cache.Bn_compute_blocks, cache.residual_diff_threshold) == (1, 2, 0.1)
    assert (cache.max_warmup_steps, cache.num_inference_steps, cache.enable_separate_cfg) == (4, 20, False)
    assert calibrator.taylorseer_order == 2 and calibrator.calibrator_type == "taylorseer"
    defaults, none = cachedit.configs({}, 20)
    assert none is None
    assert (defaults.Fn_compute_blocks, defaults.max_warmup_steps, defaults.residual_diff_threshold) == (8, 8, 0.08)
    mask, _ = cachedit.configs({"mask": "1100", "policy": "static"}, 4)
    assert mask.steps_computation_mask == [1, 1, 0, 0] and mask.steps_computation_policy == "static"
    assert cachedit.configs({"calibrator": "dmd", "history": 4}, 20)[1].dmd_history == 4


BAD = [
    ("cachedit:dbprune:fn=1", "unknown cache-dit cache in 'cachedit:dbprune:fn=1'; choose one of: dbcache"),
    ("cachedit:dbcache:fb=1", "unknown option 'fb=1' in 'cachedit:dbcache:fb=1'; cachedit:dbcache takes key=value "
                              "with keys: fn, bn, threshold, warmup,"),
    ("cachedit:dbcache:fn", "unknown option 'fn'"),
    ("cachedit:dbcache:fn=0", "bad value fn=0 in 'cachedit:dbcache:fn=0': it must be a whole number >= 1"),
    ("cachedit:dbcache:fn=1.5", "bad value fn=1.5"),
    ("cachedit:dbcache:threshold=-0.1", "it must be a finite number >= 0"),
    ("cachedit:dbcache:threshold=nan", "it must be a finite number >= 0"),
    ("cachedit:dbcache:max_cached=-2", "a whole number of steps >= 0, or -1 for no limit"),
    ("cachedit:dbcache:separate_cfg=yes", "it must be true or false"),
    ("cachedit:dbcache:calibrator=taylor", "it must be none or taylorseer or foca or dmd"),
    ("cachedit:dbcache:policy=fixed", "it must be dynamic or static"),
    ("cachedit:dbcache:mask=1102", "one digit 0 or 1 per step"),
    ("cachedit:dbcache:mask=1100", "mask=1100 in 'cachedit:dbcache:mask=1100' has 4 digits; give one per step (20)"),
    ("cachedit:dbcache:order=2", "order= in 'cachedit:dbcache:order=2' is an option of calibrator=taylorseer"),
    ("cachedit:dbcache:calibrator=foca:history=3", "is an option of calibrator=dmd"),
    ("cachedit:dbcache:cfg_compute_first=true", "is an option of separate_cfg=true"),
    ("cachedit:dbcache:separate_cfg=true:cfg_compute_first=true", "needs cfg_diff_separate=false"),
    ("cachedit:dbcache:fn=1:fn=2", "option fn is given twice"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[t for t, _ in BAD])
def test_a_bad_option_is_one_line_naming_it(text, message):
    with pytest.raises(InvalidArgumentError) as info:
        parse_peer(text, 20, 1.5)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_separate_cfg_without_guidance_and_a_span_without_middle_are_refused(backend):
    _, wrapped, _ = backend
    with pytest.raises(InvalidArgumentError, match="use a cfg scale other than 1 or separate_cfg=false"):
        parse_peer("cachedit:dbcache:separate_cfg=true", 20, 1.0)
    with pytest.raises(InvalidArgumentError, match=r"fn=8 \+ bn=4 .* covers all 12 blocks.*make fn \+ bn < 12"):
        _runner(wrapped, "cachedit:dbcache:bn=4")


def test_without_cache_dit_its_methods_say_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "cache_dit", None)  # import cache_dit now raises ImportError
    with pytest.raises(InvalidArgumentError) as info:
        parse_peer("cachedit:dbcache:fn=1", 20, 1.5)
    assert str(info.value) == (
        "cachedit: methods need the optional cache-dit library: pip install -e '.[peers]' (or make setup)"
    )


def test_options_documented_and_checked_alike():
    documented = cachedit.DBCacheOptions.__doc__
    assert set(cachedit.OPTIONS) == set(cachedit.DBCacheOptions.__dataclass_fields__)
    assert all(f"{key}:" in documented for key in cachedit.OPTIONS)
    assert set(cachedit.DEPENDENT_OPTIONS) <= set(cachedit.OPTIONS)


def test_cache_dit_rows_keep_without_a_router_and_get_short_labels():
    text = "cachedit:dbcache:fn=1:threshold=0.08:calibrator=taylorseer"
    assert without_router(["l2c", text], None) == ([text], ["l2c"])
    assert peer_label(text) == "dbcache F1B0 threshold=0.08 +taylorseer"
    dmd = "cachedit:dbcache:threshold=0.1:calibrator=dmd:history=4"
    assert peer_label(dmd) == "dbcache threshold=0.1 +dmd history=4"
    assert peer_label("diffusers:fbc:threshold=0.05") == "fbc threshold=0.05"
