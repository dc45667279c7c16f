"""A new compensator is one registration: a toy one ("reuse times a factor") used through method strings
in `goc sample`, `goc bench` and the explorer, with no other file touched."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from goc_utils.cache import COMPENSATORS, register_compensator
from goc_utils.cache.compensator import ReuseCompensator
from goc_utils.cli import main
from goc_utils.model.checkpoints import load_model
from goc_utils.study.nb06_threshold_explorer import ThresholdExplorer


@dataclass
class ScaledReuseConfig:
    """factor: multiplier of the previous output returned by a reused unit (default 0.5)."""

    factor: float = 0.5


@register_compensator("scaled", ScaledReuseConfig)
class ScaledReuse(ReuseCompensator):
    name = "scaled"

    def reuse(self, key, step):
        return self.config.factor * super().reuse(key, step)


@pytest.fixture(scope="module", autouse=True)
def _unregister_after():
    yield
    COMPENSATORS.pop("scaled")


def test_toy_compensator_in_goc_sample_and_goc_bench(tmp_path, capsys):
    argv = ["sample", "--steps", "10", "--classes", "1,2", "--out", str(tmp_path / "g.png"), "--save-npz"]
    assert main([*argv, str(tmp_path / "a.npz"), "--method", "fora-50+scaled:factor=0.25"]) == 0
    assert main([*argv, str(tmp_path / "b.npz"), "--cache", "fora-50", "--compensator", "scaled"]) == 0
    assert "cache fora-50+scaled" in capsys.readouterr().out
    assert (tmp_path / "a.npz").read_bytes() != (tmp_path / "b.npz").read_bytes()  # the factor reached it
    code = main(["bench", "--steps", "6", "--repeats", "1", "--methods", "none,fora-50,fora-50+scaled:factor=0"])
    out = capsys.readouterr().out
    assert code == 0 and "| fora-50+scaled:factor=0 |" in out
    assert main(["sample", "--method", "fora-50+scaled:size=2", "--out", str(tmp_path / "c.png")]) == 2
    assert "it takes factor=..." in capsys.readouterr().err


def test_toy_compensator_in_the_explorer():
    explorer = ThresholdExplorer(load_model("tiny-digits"), [3], steps=10)
    assert "scaled" in explorer.compensator.options
    explorer.compensator.value = "none"
    plain = explorer.state["rmse"]
    explorer.compensator.value = "scaled"
    assert explorer.state["error"] is None and explorer.state["rmse"] != plain
