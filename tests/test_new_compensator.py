"""A new method is one registration: the example of docs/adding-a-method.md (a toy compensator, "reuse times a
factor", and a toy schedule, "reuse the MLPs late"), executed as written, then used through method strings in
`goc sample`, `goc bench`, the explorer and the diffusers hooks, with no file of goc_utils touched."""

from __future__ import annotations

import re
import sys
import types

import numpy as np
import pytest
import torch
from diffusers import DiTTransformer2DModel

from goc_utils.cache import COMPENSATORS, SCHEDULES
from goc_utils.cli import main
from goc_utils.integrations.diffusers import apply_cache, remove_cache
from goc_utils.model.checkpoints import load_model
from goc_utils.paths import PROJECT_ROOT
from goc_utils.study.nb06_threshold_explorer import ThresholdExplorer

PAGE = PROJECT_ROOT / "docs" / "adding-a-method.md"


@pytest.fixture(scope="module", autouse=True)
def documented_example():
    """Run the page's example as written (it registers `scaled` and `late-reuse`); unregister afterwards."""
    found = re.search(r"<!-- adding-a-method-example -->\s*```python\n(.*?)```", PAGE.read_text(), re.S)
    assert found, f"{PAGE} lacks its example"
    module = types.ModuleType("adding_a_method_example")  # a real module, as the user's file would be
    sys.modules[module.__name__] = module
    exec(compile(found.group(1), str(PAGE), "exec"), module.__dict__)  # noqa: S102 - the documented example
    yield module
    COMPENSATORS.pop("scaled")
    SCHEDULES.pop("late-reuse")
    del sys.modules[module.__name__]


def test_the_example_registers_a_compensator_and_a_schedule():
    assert "scaled" in COMPENSATORS and "late-reuse" in SCHEDULES
    schedule = SCHEDULES["late-reuse"].build(20, 12, start=12)
    assert schedule.mask[12].all() and not schedule.mask[13, :, 1].any() and schedule.mask[13, :, 0].all()
    assert schedule.reused_units == 4 * 12  # the MLPs of steps 13, 15, 17, 19


def test_toy_methods_in_goc_sample_and_goc_bench(tmp_path, capsys):
    argv = ["sample", "--steps", "10", "--classes", "1,2", "--out", str(tmp_path / "g.png"), "--save-npz"]
    assert main([*argv, str(tmp_path / "a.npz"), "--method", "fora-50+scaled:factor=0.25"]) == 0
    assert main([*argv, str(tmp_path / "b.npz"), "--cache", "fora-50", "--compensator", "scaled"]) == 0
    assert "cache fora-50+scaled" in capsys.readouterr().out
    assert (tmp_path / "a.npz").read_bytes() != (tmp_path / "b.npz").read_bytes()  # the factor reached it
    assert main([*argv, str(tmp_path / "c.npz"), "--method", "fora-50+scaled:factor=1"]) == 0
    assert main([*argv, str(tmp_path / "d.npz"), "--method", "fora-50"]) == 0
    assert np.array_equal(np.load(tmp_path / "c.npz")["final"], np.load(tmp_path / "d.npz")["final"])  # neutral
    assert main([*argv, str(tmp_path / "e.npz"), "--method", "late-reuse:start=4+goc"]) == 0
    code = main(
        ["bench", "--steps", "6", "--repeats", "1", "--methods", "none,fora-50,fora-50+scaled:factor=0,late-reuse"]
    )
    out = capsys.readouterr().out
    assert code == 0 and "| fora-50+scaled:factor=0 |" in out and "| late-reuse |" in out
    assert main(["sample", "--method", "fora-50+scaled:size=2", "--out", str(tmp_path / "x.png")]) == 2
    assert "it takes factor=..." in capsys.readouterr().err


def test_toy_compensator_in_the_explorer():
    explorer = ThresholdExplorer(load_model("tiny-digits"), [3], steps=10)
    assert "scaled" in explorer.compensator.options
    explorer.compensator.value = "none"
    plain = explorer.state["rmse"]
    explorer.compensator.value = "scaled"
    assert explorer.state["error"] is None and explorer.state["rmse"] != plain


def test_toy_methods_through_the_diffusers_hooks():
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=3,
        sample_size=8, patch_size=2, num_embeds_ada_norm=1000, norm_eps=1e-6,
    ).eval()  # fmt: skip
    x = torch.randn(2, 4, 8, 8)
    labels = torch.tensor([1, 2])

    def run(method: str | None) -> list[torch.Tensor]:
        if method is not None:
            apply_cache(transformer, method, steps=6)
        with torch.no_grad():
            outs = [
                transformer(x, timestep=torch.tensor([900 - 150 * s] * 2), class_labels=labels).sample for s in range(6)
            ]
        remove_cache(transformer)
        return outs

    plain, host = run(None), run("fora-50")
    assert all(torch.equal(a, b) for a, b in zip(run("fora-50+scaled:factor=1"), host, strict=True))
    assert not torch.equal(run("fora-50+scaled:factor=0.25")[1], host[1])
    late = run("late-reuse:start=3")
    assert all(torch.equal(a, b) for a, b in zip(late[:3], plain[:3], strict=True)) and not torch.equal(
        late[3], plain[3]
    )
