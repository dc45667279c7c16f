"""Cache engine: schedules, compensators, exactness invariants and parity with a naive reference loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from goc_utils.cache import CacheEngine, ScheduleError, build_compensator, build_schedule
from goc_utils.cache.method import CacheMethod, resolve_method
from goc_utils.cache.run import RunShape
from goc_utils.cache.schedule import theoretical_speedup
from goc_utils.errors import InvalidArgumentError
from goc_utils.model.macs import model_macs
from goc_utils.model.presets import create_model
from goc_utils.model.sampler import generate
from tests.conftest import router_file, small_dit

FORA_50_STEPS = (3, 5, 7, 9, 11, 13, 15, 19)


def _run(model, schedule=None, compensator=None, seed=0, steps=20, cfg=4.0, labels=(1, 2)):
    forward = None
    if schedule is not None:
        forward = CacheEngine(schedule, compensator, model=model).forward
    return generate(model, list(labels), seed=seed, steps=steps, cfg_scale=cfg, forward=forward).final


def _xl_router(tmp_path, steps: int = 20):
    """A random router shaped like the official DiT-XL/2 ones (steps x 56 units)."""
    return router_file(tmp_path / f"xl{steps}.pt", np.random.default_rng(0).normal(-1, 2, (steps, 56)))


@pytest.fixture(scope="module")
def model():
    return small_dit(depth=4, seed=1)


# ----------------------------------------------------------------------------- schedules


def test_official_l2c_routers_cache_ratios(reference_file):
    s20 = build_schedule("l2c", 20, 28, router=reference_file("l2c/DDIM20_router.pt"), thres=0.1)
    assert (s20.reused_units, s20.mask.size) == (248, 1120)
    assert round(100 * s20.cache_ratio, 1) == 22.1
    s50 = build_schedule("l2c", 50, 28, router=reference_file("l2c/DDIM50_router.pt"), thres=0.1)
    assert (s50.reused_units, s50.mask.size) == (664, 2800)
    assert s20.mask[0::2].all() and s50.mask[0::2].all()  # only odd steps reuse


def test_l2c_uses_router_n_minus_1_minus_s(tmp_path):
    logits = np.full((4, 6), 5.0)
    logits[0, 3] = -5.0  # router 0 -> sampling step 3, block 1 MLP
    logits[2, 0] = -5.0  # router 2 -> sampling step 1, block 0 attention
    schedule = build_schedule("l2c", 4, 3, router=router_file(tmp_path / "r.pt", logits), thres=0.5)
    assert set(zip(*np.nonzero(~schedule.mask), strict=True)) == {(3, 1, 1), (1, 0, 0)}


def test_fora_reference_schedules():
    assert build_schedule("fora-25", 20, 4).reuse_steps() == [1, 3, 5, 7, 9]
    assert build_schedule("fora-50", 20, 4).reuse_steps() == list(range(1, 20, 2))
    assert build_schedule("fora-25", 20, 4).cache_ratio == 0.25
    s = build_schedule("fora", 20, 4, interval=3, start=2, stop=11)
    assert s.reuse_steps() == [2 + i for i in range(9) if (2 + i) % 3]
    assert build_schedule("fora", 10, 4, interval=1).reused_units == 0


def test_matrix_files_per_block_and_per_unit(tmp_path):
    table = np.ones((5, 3), dtype=int)
    table[2, 1] = 0
    (tmp_path / "m.json").write_text(json.dumps(table.tolist()))
    np.savetxt(tmp_path / "m.csv", table, fmt="%d", delimiter=",")
    np.save(tmp_path / "m.npy", table)
    for name in ("m.json", "m.csv", "m.npy"):
        s = build_schedule("matrix", 5, 3, path=tmp_path / name)
        assert set(zip(*np.nonzero(~s.mask), strict=True)) == {(2, 1, 0), (2, 1, 1)}
    units = np.ones((5, 6), dtype=int)
    units[3, 5] = 0
    np.save(tmp_path / "u.npy", units)
    s = build_schedule("matrix", 5, 3, path=tmp_path / "u.npy")
    assert set(zip(*np.nonzero(~s.mask), strict=True)) == {(3, 2, 1)}


@pytest.mark.parametrize(
    "builder, kwargs, match",
    [
        ("matrix", {"steps": 6, "depth": 3}, r"shape \(5, 3, 2\).*needs \(6, 3, 2\)"),
        ("matrix", {"steps": 5, "depth": 4}, "needs 4 \\(blocks\\) or 8 \\(units\\)"),
        ("fora", {"steps": 10, "depth": 3, "interval": -1}, "interval must be >= 1"),
        ("fora", {"steps": 10, "depth": 3, "start": 4, "stop": 20}, "range 4:20"),
        ("l2c", {"steps": 20, "depth": 12, "router": "XL20"}, "needs 20 routers of 24 units"),
        ("l2c", {"steps": 50, "depth": 28, "router": "XL20"}, "needs 50 routers"),
        ("l2c", {"steps": 20, "depth": 28, "router": "XL20", "thres": 1.5}, "in \\[0, 1\\]"),
        ("nope", {"steps": 10, "depth": 3}, "unknown cache schedule"),
    ],
)
def test_schedule_errors_are_one_line(builder, kwargs, match, tmp_path):
    np.save(tmp_path / "m.npy", np.ones((5, 3), dtype=int))
    if builder == "matrix":
        kwargs = kwargs | {"path": tmp_path / "m.npy"}
    if kwargs.get("router") == "XL20":
        kwargs = kwargs | {"router": _xl_router(tmp_path)}
    with pytest.raises(ScheduleError, match=match) as info:
        build_schedule(builder, **kwargs)
    assert "\n" not in str(info.value)


def test_malformed_matrix_and_router_files(tmp_path):
    (tmp_path / "bad.json").write_text("[[1, 2], [1, 1]]")
    with pytest.raises(ScheduleError, match="holds 2; every value must be 0 or 1"):
        build_schedule("matrix", 2, 2, path=tmp_path / "bad.json")
    (tmp_path / "zero.json").write_text("[[0, 1], [1, 1]]")
    with pytest.raises(ScheduleError, match="step 0"):
        build_schedule("matrix", 2, 2, path=tmp_path / "zero.json")
    (tmp_path / "r.pt").write_bytes(b"garbage")
    with pytest.raises(ScheduleError, match="cannot read router"):
        build_schedule("l2c", 2, 2, router=tmp_path / "r.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "w.pt")
    with pytest.raises(ScheduleError, match="no 'routers'"):
        build_schedule("l2c", 2, 2, router=tmp_path / "w.pt")


# ------------------------------------------------------------------------------ exactness


def test_schedule_none_equals_plain_model(model):
    assert torch.equal(_run(model, build_schedule("none", 20, model.depth)), _run(model))


def test_fora_interval_1_equals_none(model):
    plain = _run(model)
    for comp in ("none", "goc"):
        schedule = build_schedule("fora", 20, model.depth, interval=1)
        assert torch.equal(_run(model, schedule, build_compensator(comp)), plain)


@pytest.mark.parametrize("name", ["fora-25", "fora-50", "l2c"])
def test_goc_with_zero_weight_equals_its_host(model, name, tmp_path):
    options = {}
    if name == "l2c":
        rng = np.random.default_rng(0)
        options = {"router": router_file(tmp_path / "r.pt", rng.normal(-1, 2, (20, 2 * model.depth))), "thres": 0.3}
    schedule = build_schedule(name, 20, model.depth, **options)
    assert schedule.reused_units > 0
    host = _run(model, schedule, build_compensator("none"))
    goc = _run(model, schedule, build_compensator("goc", weight=0.0, correction_steps=None))
    assert torch.equal(goc, host)
    assert not torch.equal(host, _run(model))


def test_l2c_threshold_zero_reuses_nothing(model, tmp_path):
    logits = np.random.default_rng(1).normal(0, 3, (20, 2 * model.depth))
    schedule = build_schedule("l2c", 20, model.depth, router=router_file(tmp_path / "r.pt", logits), thres=0.0)
    assert schedule.reused_units == 0
    assert torch.equal(_run(model, schedule, build_compensator("goc", weight=1.0)), _run(model))


def test_goc_with_one_queued_value_is_plain_reuse(model):
    schedule = build_schedule("fora-50", 20, model.depth)
    only_step_1 = build_compensator("goc", weight=5.0, correction_steps=(1,))  # step 1 has only step 0 queued
    assert torch.equal(_run(model, schedule, only_step_1), _run(model, schedule, build_compensator("none")))


def test_taylor_order_0_is_plain_reuse(model):
    schedule = build_schedule("fora-25", 20, model.depth)
    assert torch.equal(
        _run(model, schedule, build_compensator("taylor", order=0)), _run(model, schedule, build_compensator("none"))
    )


def test_taylor_forecast_matches_taylorseer_finite_differences():
    linear = build_compensator("taylor", order=1)
    for s in (0, 2, 5):
        linear.computed((0, 0), s, torch.tensor([3.0 - 2.0 * s], dtype=torch.float64))
    assert linear.reuse((0, 0), 7).item() == pytest.approx(3.0 - 14.0)  # exact on a line
    quadratic = build_compensator("taylor", order=2)
    values = {0: 1.0, 2: 4.0, 4: 2.0}
    for s, v in values.items():
        quadratic.computed((0, 0), s, torch.tensor([v], dtype=torch.float64))
    d1 = (values[4] - values[2]) / 2  # first derivative estimate, interval N = 2
    d2 = (values[4] - 2 * values[2] + values[0]) / 2**2  # second derivative estimate
    assert quadratic.reuse((0, 0), 5).item() == pytest.approx(values[4] + d1 * 1 + d2 / 2 * 1**2)


def test_goc_formula_on_a_toy_queue():
    comp = build_compensator("goc", weight=0.5, correction_steps=(2, 3), coupling="unit")
    comp.computed((1, 1), 0, torch.tensor([1.0]))
    comp.computed((1, 1), 1, torch.tensor([3.0]))
    assert comp.reuse((1, 1), 2).item() == 3.0 + 0.5 * (3.0 - 1.0)  # 4.0, queued as used[2]
    assert comp.reuse((1, 1), 3).item() == 4.0 + 0.5 * (4.0 - 3.0)  # gradient uses the corrected value
    assert comp.reuse((1, 1), 4).item() == 4.5  # not a correction step: plain reuse of used[3]


def test_goc_block_coupling_on_a_toy_queue():
    """Published semantics: a reused unit whose partner is recomputed is reused plain (and still queued)."""
    plan = np.array([[False, True]])  # block 0: attention reused, MLP recomputed
    results = {}
    for coupling in ("block", "unit"):
        comp = build_compensator("goc", weight=0.5, correction_steps=(2, 3), coupling=coupling)
        for step, value in ((0, 1.0), (1, 3.0)):
            comp.start_step(step, np.array([[True, True]]))
            comp.computed((0, 0), step, torch.tensor([value]))
            comp.computed((0, 1), step, torch.tensor([10 * value]))
        comp.start_step(2, plan)
        at_2 = comp.reuse((0, 0), 2).item()
        comp.computed((0, 1), 2, torch.tensor([50.0]))
        comp.start_step(3, np.array([[False, False]]))  # the whole block reused: corrected with either coupling
        results[coupling] = (at_2, comp.reuse((0, 0), 3).item(), comp.reuse((0, 1), 3).item())
    assert results["block"] == (3.0, 3.0, 50.0 + 0.5 * (50.0 - 30.0))  # plain at 2, queued: zero gradient at 3
    assert results["unit"] == (4.0, 4.0 + 0.5 * (4.0 - 3.0), 60.0)


def test_goc_block_coupling_needs_the_step_plan():
    comp = build_compensator("goc", weight=0.5, correction_steps=(2,))
    for step in (0, 1):
        comp.computed((0, 0), step, torch.tensor([float(step)]))
    with pytest.raises(RuntimeError, match="start_step"):
        comp.reuse((0, 0), 2)
    with pytest.raises(InvalidArgumentError, match="coupling"):
        build_compensator("goc", coupling="blocks")


def test_goc_coupling_in_the_engine_on_a_hand_built_schedule(model):
    """At correction step 3 block 1 reuses only its attention unit; at step 4 the whole block is reused."""
    table = np.ones((8, 2 * model.depth), dtype=bool)
    table[3, [0, 1, 2]] = False  # step 3: block 0 both units, block 1 attention only
    table[4, [2, 3]] = False  # step 4: block 1 both units
    schedule = build_schedule("matrix", 8, model.depth, table=table)
    w = 0.7
    seen = {}
    for coupling in ("block", "unit"):
        compensator = build_compensator("goc", weight=w, correction_steps=(3, 4), coupling=coupling)
        engine = CacheEngine(schedule, compensator, model=model)
        outputs: dict = {}
        engine.on_unit = lambda s, b, u, value, computed, out=outputs: out.__setitem__((s, b, u), value.clone())
        generate(model, [1, 2], seed=0, steps=8, cfg_scale=4.0, forward=engine.forward)
        seen[coupling] = outputs
    for coupling, out in seen.items():  # block 0 is reused whole at step 3: corrected with either coupling
        for u in (0, 1):
            assert torch.equal(out[(3, 0, u)], out[(2, 0, u)] + w * (out[(2, 0, u)] - out[(1, 0, u)])), coupling
    block, unit = seen["block"], seen["unit"]
    assert torch.equal(block[(3, 1, 0)], block[(2, 1, 0)])  # reused plain: its partner is recomputed
    assert torch.equal(unit[(3, 1, 0)], unit[(2, 1, 0)] + w * (unit[(2, 1, 0)] - unit[(1, 1, 0)]))
    # step 4: the queue holds what was used at step 3 (the plain value with block coupling: zero gradient)
    assert torch.equal(block[(4, 1, 0)], block[(3, 1, 0)] + w * (block[(3, 1, 0)] - block[(2, 1, 0)]))
    assert torch.equal(block[(4, 1, 0)], block[(3, 1, 0)])
    assert torch.equal(unit[(4, 1, 0)], unit[(3, 1, 0)] + w * (unit[(3, 1, 0)] - unit[(2, 1, 0)]))


@pytest.mark.parametrize("name", ["fora-25", "fora-50"])
def test_goc_coupling_does_not_change_fora(model, name):
    schedule = build_schedule(name, 20, model.depth)
    runs = [
        _run(model, schedule, build_compensator("goc", weight=1.2, correction_steps=FORA_50_STEPS, coupling=c))
        for c in ("block", "unit")
    ]
    assert torch.equal(*runs)


def test_official_l2c_routers_lone_units_at_the_correction_steps(reference_file):
    """REFERENCE.md: reused units at the correction steps whose partner unit is recomputed (23 / 13)."""
    for steps, expected in ((20, 23), (50, 13)):
        path = reference_file(f"l2c/DDIM{steps}_router.pt")
        schedule = build_schedule("l2c", steps, 28, router=path, thres=0.1)
        assert schedule.reference_correction_steps == FORA_50_STEPS and schedule.reference_weight == 0.8
        reused = ~schedule.mask[list(schedule.reference_correction_steps)]
        assert int((reused & ~reused[:, :, ::-1]).sum()) == expected


def test_engine_resets_between_runs_and_handles_cfg(model):
    schedule = build_schedule("fora-50", 20, model.depth)
    compensator = build_compensator("goc", weight=1.2, correction_steps=FORA_50_STEPS)
    engine = CacheEngine(schedule, compensator, model=model)
    a = generate(model, [3, 4], seed=5, steps=20, cfg_scale=4.0, forward=engine.forward).final
    b = generate(model, [3, 4], seed=5, steps=20, cfg_scale=4.0, forward=engine.forward).final
    assert torch.equal(a, b)


def test_engine_memory_holds_only_what_can_be_reused(model):
    table = np.ones((20, 2 * model.depth), dtype=bool)
    table[5, 0] = False  # only block 0's attention is ever reused, at step 5
    schedule = build_schedule("matrix", 20, model.depth, table=table)
    for name, expected in (("none", 1), ("goc", 2), ("taylor", 2)):
        engine = CacheEngine(schedule, build_compensator(name), model=model)
        generate(model, [1], steps=20, forward=engine.forward)
        assert engine.peak_stored_tensors == expected, name
        assert engine.compensator.stored_tensors() == 0  # released after its last reuse
    engine = CacheEngine(build_schedule("fora-50", 20, model.depth), build_compensator("goc"), model=model)
    generate(model, [1], steps=20, forward=engine.forward)
    assert engine.peak_stored_tensors <= 2 * 2 * model.depth


# ---------------------------------------------------------------- parity with a naive loop


def _naive_goc_forward(model, reused, weight, correction_steps, coupling="block"):
    """The reference semantics written out by hand: a dict of per-unit lists, nothing from the engine.

    ``block`` coupling as in the published ``DiTBlock.forward``: the gradient term is added only when
    both units of the block are reused at the step and both have two earlier outputs.
    """
    used: dict = {}

    def two_earlier(step, block, unit):
        history = used.get((block, unit), [])
        return len(history) - (1 if len(history) > step else 0) >= 2  # outputs before this step

    def forward(x, t, y, step):
        if step == 0:
            used.clear()

        def unit_fn(block, unit, compute):
            history = used.setdefault((block, unit), [])
            if reused(step, block, unit):
                previous = history[-1]
                if coupling == "block":
                    allowed = all(reused(step, block, u) and two_earlier(step, block, u) for u in (0, 1))
                else:
                    allowed = len(history) >= 2
                if step in correction_steps and allowed:
                    out = previous + weight * (previous - history[-2])
                else:
                    out = previous
            else:
                out = compute()
            history.append(out)
            return out

        return model(x, t, y, unit_fn=unit_fn)

    return forward


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(3)
    model = create_model("tiny-digits").eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "adaLN_modulation" in name or "final_layer.linear" in name:
                param.normal_(0, 0.03)
    return model


@pytest.mark.parametrize("coupling", ["block", "unit"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", ["fora-25", "fora-50", "l2c"])
def test_engine_matches_the_naive_reference_loop(tiny_model, case, seed, coupling, tmp_path):
    depth = tiny_model.depth
    if case == "fora-25":
        reused, weight, steps = (lambda s, b, u: s in (1, 3, 5, 7, 9)), 1.2, (3, 5, 7, 9)
        schedule = build_schedule("fora-25", 20, depth)
    elif case == "fora-50":
        reused, weight, steps = (lambda s, b, u: s % 2 == 1), 1.2, FORA_50_STEPS
        schedule = build_schedule("fora-50", 20, depth)
    else:
        logits = np.random.default_rng(seed).normal(-1.0, 2.0, (20, 2 * depth))
        scores = 1 / (1 + np.exp(-logits))

        def reused(s, b, u):
            return s % 2 == 1 and not scores[20 - 1 - s, 2 * b + u] > 0.1

        weight, steps = 0.8, FORA_50_STEPS
        schedule = build_schedule("l2c", 20, depth, router=router_file(tmp_path / "r.pt", logits), thres=0.1)
    naive = generate(
        tiny_model,
        [1, 7, 9],
        seed=seed,
        steps=20,
        cfg_scale=4.0,
        forward=_naive_goc_forward(tiny_model, reused, weight, steps, coupling),
    ).final
    compensator = build_compensator("goc", weight=weight, correction_steps=steps, coupling=coupling)
    engine = CacheEngine(schedule, compensator, model=tiny_model)
    ours = generate(tiny_model, [1, 7, 9], seed=seed, steps=20, cfg_scale=4.0, forward=engine.forward).final
    assert (ours - naive).abs().max().item() <= 1e-6
    assert not torch.equal(ours, generate(tiny_model, [1, 7, 9], seed=seed, steps=20, cfg_scale=4.0).final)
    if case == "l2c":  # the random router leaves lone reused units at correction steps: the couplings differ
        other = "unit" if coupling == "block" else "block"
        compensator = build_compensator("goc", weight=weight, correction_steps=steps, coupling=other)
        engine = CacheEngine(schedule, compensator, model=tiny_model)
        theirs = generate(tiny_model, [1, 7, 9], seed=seed, steps=20, cfg_scale=4.0, forward=engine.forward).final
        assert (theirs - ours).abs().max() > 1e-4


# ---------------------------------------------------------------------- method and MACs


def test_cache_method_fills_published_defaults(model, tmp_path):
    run = RunShape.of(model, 20)
    engine = resolve_method(CacheMethod("fora-50", {}, "goc"), run).engine(model)
    assert engine.compensator.config.weight == 1.2 and engine.compensator.config.correction_steps == FORA_50_STEPS
    engine = resolve_method(CacheMethod("fora-25", {}, "goc"), run).engine(model)
    assert engine.compensator.config.correction_steps == (3, 5, 7, 9)
    with pytest.raises(InvalidArgumentError, match="needs a schedule that reuses"):
        resolve_method(CacheMethod("none", {}, "goc"), run)
    with pytest.raises(InvalidArgumentError, match="auto"):
        resolve_method(CacheMethod("fora-50", {}, "goc", {"correction_steps": "auto"}), run)
    with pytest.raises(ScheduleError, match="outside the run's steps"):
        resolve_method(CacheMethod("fora-50", {}, "goc", {"correction_steps": [25]}), run)


def test_dit_xl2_macs(tmp_path):
    with torch.device("meta"):
        macs = model_macs(create_model("DiT-XL/2"))
    assert abs(macs.forward / 118.6e9 - 1) < 0.005
    assert abs(macs.attention_branch / 1.51e9 - 1) < 0.005 and abs(macs.mlp_branch / 2.72e9 - 1) < 0.005
    assert abs(macs.adaln_per_block / 0.008e9 - 1) < 0.01
    assert theoretical_speedup(macs, build_schedule("none", 20, 28)) == 1.0
    fora50 = build_schedule("fora-50", 20, 28)
    expected = 20 * macs.forward / (20 * macs.forward - 10 * 28 * (macs.attention_branch + macs.mlp_branch))
    assert theoretical_speedup(macs, fora50) == pytest.approx(expected)
    l2c = build_schedule("l2c", 20, 28, router=_xl_router(tmp_path))
    assert l2c.cache_ratio_macs(macs.units) != l2c.cache_ratio  # MLP units weigh 1.8x attention units


# ------------------------------------------------------------------------ router training


def test_router_training_writes_the_official_format_and_leaves_the_dit_frozen(model, tmp_path):
    from goc_utils.cache.l2c import load_router_logits
    from goc_utils.training.routers import RouterTrainConfig, save_router, tensor_batches, train_router

    torch.manual_seed(0)
    images, labels = torch.randn(32, 1, 8, 8).clamp(-1, 1), torch.randint(0, 10, (32,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = RouterTrainConfig(steps=4, train_steps=25, batch_size=4, lr=0.5, l1=1.0, seed=0)
    init = torch.sigmoid(torch.randn(4, 2 * model.depth, generator=torch.Generator().manual_seed(0)))
    logits, opt_state = train_router(model, tensor_batches(images, labels), config, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert logits.shape == (4, 2 * model.depth) and logits.abs().max() <= 5
    trained = torch.sigmoid(logits)
    assert trained[[0, 2]].sum() < init[[0, 2]].sum()  # routers of the reuse steps (even indices) learn to reuse
    assert torch.equal(trained[[1, 3]], init[[1, 3]])  # routers of always-computed steps are never trained
    path = save_router(tmp_path / "r.pt", logits, opt_state, config, "small")
    assert np.allclose(load_router_logits(path), logits.numpy())
    schedule = build_schedule("l2c", 4, model.depth, router=path, thres=0.5)
    assert schedule.mask[0::2].all()
