"""Compiled sampling (goc_utils/cache/compiled.py): the same samples as the eager engine, for every kind of method,
natively and through the diffusers hooks, one graph per pattern, and the compensator's state as the eager one keeps
it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from goc_utils.cache import Resources, RunShape, resolve_method
from goc_utils.cache.compiled import CompiledEngine
from goc_utils.errors import InvalidArgumentError
from goc_utils.integrations.diffusers.peers import diffusers_backend
from goc_utils.model.macs import model_macs
from goc_utils.model.sampler import generate
from goc_utils.priors.tcc_fit import TCCFit, fit_tcc_pack
from tests.conftest import router_file, small_dit

STEPS = 8
RTOL, ATOL = 1e-5, 1e-5  # inductor fuses and reorders float32 arithmetic


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_grad_enabled(False)
    folder = tmp_path_factory.mktemp("compiled")
    model = small_dit(depth=2)
    logits = np.where(np.random.default_rng(0).random((STEPS, 4)) < 0.5, -3.0, 3.0)
    logits[0] = 3.0  # step 0 computes everything
    router = router_file(folder / "router.pt", logits)
    pack = fit_tcc_pack(model, "fora-50", TCCFit("small", [0, 1], 2, steps=STEPS, cfg_scale=1.5), progress=False)
    pack_path = pack.save(folder / "pack.safetensors")
    return model, Resources(str(router), pack=str(pack_path))


def _final(model, forward) -> torch.Tensor:
    return generate(model, [1, 3], steps=STEPS, cfg_scale=1.5, forward=forward, seed=0).final


@pytest.mark.parametrize(
    "text", ["none", "fora-50", "fora-50+goc", "l2c", "l2c+goc", "l2c+goc:coupling=unit", "fora-50+taylor",
             "fora-50+tcc"]
)  # fmt: skip
def test_compiled_samples_equal_the_eager_ones(setup, text):
    model, resources = setup
    method = resolve_method(text, RunShape.of(model, STEPS), resources)
    eager = _final(model, method.engine(model).forward)
    engine = method.engine(model)
    compiled = CompiledEngine(engine)
    first = _final(model, compiled.forward)
    again = _final(model, compiled.forward)  # state reset at step 0, graphs reused
    assert torch.allclose(first, eager, rtol=RTOL, atol=ATOL), float((first - eager).abs().max())
    assert torch.equal(first, again)
    if text != "none":
        assert not torch.allclose(eager, _final(model, resolve_method("none", method.run).engine(model).forward))
    assert compiled.cost(model_macs(model)) == method.cost(model_macs(model))


def test_graphs_are_one_per_pattern_and_shared_between_methods(setup):
    model, resources = setup
    fora = CompiledEngine(resolve_method("fora-50", RunShape.of(model, STEPS), resources).engine(model))
    assert len(fora.patterns()) == 3  # all computed and kept, all reused, the last step computed and not kept
    _final(model, fora.forward)
    again = CompiledEngine(resolve_method("fora-50", RunShape.of(model, STEPS), resources).engine(model))
    _final(model, again.forward)
    assert again.compile_seconds == 0.0  # the graphs of this model and these shapes exist already


def test_goc_corrections_are_logged_and_its_queue_kept_as_eagerly(setup):
    model, resources = setup
    method = resolve_method("fora-50+goc", RunShape.of(model, STEPS), resources)
    eager, compiled = method.engine(model), CompiledEngine(method.engine(model))
    eager.compensator.corrections, compiled.compensator.corrections = [], []
    _final(model, eager.forward)
    _final(model, compiled.forward)
    assert compiled.compensator.corrections == eager.compensator.corrections != []


def test_through_the_diffusers_hooks(setup):
    model, resources = setup
    wrapped = diffusers_backend(model)
    for text in ("fora-50+goc", "l2c"):
        method = resolve_method(text, RunShape.of(wrapped, STEPS), resources)
        eager = _final(wrapped, method.engine(wrapped).forward)
        compiled = _final(wrapped, CompiledEngine(method.engine(wrapped)).forward)
        assert torch.allclose(compiled, eager, rtol=RTOL, atol=ATOL), float((compiled - eager).abs().max())


def test_refusals_are_one_line(setup):
    model, resources = setup
    method = resolve_method("fora-50", RunShape.of(model, STEPS), resources)
    with pytest.raises(InvalidArgumentError, match="needs the model"):
        CompiledEngine(method.engine())
    with pytest.raises(InvalidArgumentError, match="compile mode"):
        CompiledEngine(method.engine(model), mode="fast")
    engine = method.engine(model)
    engine.on_unit = lambda *a: None
    with pytest.raises(InvalidArgumentError, match="observer"):
        _final(model, CompiledEngine(engine).forward)


def test_the_python_api_compiles_on_request(setup):
    model, resources = setup
    method = resolve_method("fora-50", RunShape.of(model, STEPS), resources)
    compiled = method.engine(model, compile=True)
    assert isinstance(compiled, CompiledEngine) and compiled.mode == "default"
    assert torch.allclose(_final(model, compiled.forward), _final(model, method.engine(model).forward),
                          rtol=RTOL, atol=ATOL)  # fmt: skip


def test_eval_sample_compiles_on_request_and_records_it(tmp_path):
    from goc_utils.evaluation.eval import EvalSettings, eval_sample
    from goc_utils.model.checkpoints import load_model

    model = load_model("tiny-digits")
    eager = eval_sample(model, EvalSettings(steps=6, per_device_batch=2), "fora-50+goc", tmp_path / "e", 2,
                        progress=False)  # fmt: skip
    settings = EvalSettings(steps=6, per_device_batch=2, compile=True)
    compiled = eval_sample(model, settings, "fora-50+goc", tmp_path / "c", 2, progress=False)
    assert '"compile": true' in (tmp_path / "c" / "run.json").read_text()
    assert "compile" not in (tmp_path / "e" / "run.json").read_text()  # eager manifests stay as they were
    a, b = (np.load(p)["arr_0"].astype(int) for p in (eager, compiled))
    assert np.abs(a - b).max() <= 1  # float tolerance, through uint8 rounding
