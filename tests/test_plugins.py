"""Methods from other packages: a tiny plugin package, installed as a dist-info on a temporary sys.path entry,
registers a schedule and a compensator through the `goc_study.methods` entry point; its names then work in
`goc sample`, `goc bench`, `goc eval-sample`, the diffusers hooks and the explorer without editing goc_utils. A
broken plugin is one warning line naming it, and the built-in methods keep working."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from diffusers import DiTTransformer2DModel

from goc_utils.cache import COMPENSATORS, SCHEDULES, plugins
from goc_utils.cli import main
from goc_utils.integrations.diffusers import apply_cache, remove_cache
from goc_utils.study.nb06_threshold_explorer import standalone_compensators

PLUGIN = '''
from dataclasses import dataclass

import numpy as np

from goc_utils.cache import CacheSchedule, register_compensator, register_schedule
from goc_utils.cache.compensator import ReuseCompensator


@dataclass
class DampedConfig:
    """factor: multiplier of a reused output (default 0.9)."""

    factor: float = 0.9


@register_compensator("damped", DampedConfig)
class Damped(ReuseCompensator):
    name = "damped"

    def reuse(self, key, step):
        return self.config.factor * super().reuse(key, step)


@register_schedule("odd-mlp")
def odd_mlp(steps: int, depth: int) -> CacheSchedule:
    mask = np.ones((steps, depth, 2), dtype=bool)
    mask[1::2, :, 1] = False
    return CacheSchedule(mask, name="odd-mlp")
'''


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """`goc-plugin-demo` (working) and `goc-plugin-broken` (its module raises on import) as installed packages."""
    (tmp_path / "goc_plugin_demo.py").write_text(PLUGIN)
    (tmp_path / "goc_plugin_broken.py").write_text("raise RuntimeError('this plugin is broken\\non two lines')\n")
    for name, module in (("goc_plugin_demo", "goc_plugin_demo"), ("goc_plugin_broken", "goc_plugin_broken")):
        info = tmp_path / f"{name}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[goc_study.methods]\n{name.removeprefix('goc_plugin_')} = {module}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    saved = dict(COMPENSATORS), dict(SCHEDULES), dict(plugins._seen)
    yield
    for registry, before in zip((COMPENSATORS, SCHEDULES, plugins._seen), saved, strict=True):
        registry.clear()
        registry.update(before)
    for module in ("goc_plugin_demo", "goc_plugin_broken"):
        sys.modules.pop(module, None)


def test_a_plugins_methods_work_in_every_command_and_a_broken_one_is_one_line(installed, tmp_path, capsys):
    assert "damped" not in COMPENSATORS  # nothing is imported before a name needs it
    argv = ["sample", "--steps", "10", "--classes", "1,2", "--out", str(tmp_path / "g.png"), "--save-npz"]
    assert main([*argv, str(tmp_path / "a.npz"), "--method", "odd-mlp+damped:factor=0.5"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "plugin" in line]
    assert len(warnings) == 1 and "method plugin 'broken' (goc_plugin_broken) was skipped" in warnings[0]
    assert "this plugin is broken" in warnings[0] and "on two lines" not in err
    assert main([*argv, str(tmp_path / "b.npz"), "--method", "odd-mlp+damped:factor=1"]) == 0
    assert main([*argv, str(tmp_path / "c.npz"), "--method", "odd-mlp"]) == 0
    final = {k: np.load(tmp_path / f"{k}.npz")["final"] for k in "abc"}
    assert np.array_equal(final["b"], final["c"]) and not np.array_equal(final["a"], final["c"])
    assert main([*argv, str(tmp_path / "d.npz"), "--method", "fora-50+goc"]) == 0  # built-ins keep working
    assert main(["bench", "--steps", "6", "--repeats", "1", "--methods", "none,odd-mlp,odd-mlp+damped"]) == 0
    assert "| odd-mlp+damped |" in capsys.readouterr().out
    out = tmp_path / "eval"
    assert (
        main(["eval-sample", "--method", "odd-mlp+damped", "--num-samples", "4", "--steps", "6", "--out", str(out)])
        == 0
    )
    assert np.load(out / "samples.npz")["arr_0"].shape[0] == 4
    assert "damped" in standalone_compensators()


def test_a_plugins_methods_run_through_the_diffusers_hooks(installed):
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        sample_size=8, num_embeds_ada_norm=1000, norm_eps=1e-6,
    ).eval()  # fmt: skip
    x, labels = torch.randn(2, 4, 8, 8), torch.tensor([1, 2])

    def run(method: str) -> torch.Tensor:
        apply_cache(transformer, method, steps=4)
        with torch.no_grad():
            out = [
                transformer(x, timestep=torch.tensor([900 - 200 * s] * 2), class_labels=labels).sample for s in range(4)
            ]
        remove_cache(transformer)
        return out[-1]

    assert torch.equal(run("odd-mlp+damped:factor=1"), run("odd-mlp")) and not torch.equal(
        run("odd-mlp+damped"), run("odd-mlp")
    )
