"""The threshold explorer reacts to its controls (set programmatically, as a user would with the sliders)."""

from __future__ import annotations

import numpy as np
import pytest

from goc_utils import paths
from goc_utils.models import load_model
from goc_utils.widgets import ThresholdExplorer


@pytest.fixture(scope="module")
def explorer():
    return ThresholdExplorer(load_model("tiny-digits"), [1, 4, 7], steps=10, router=None)


def test_sliders_change_ratio_speedup_and_images(explorer):
    explorer.compensator.value = "none"
    explorer.interval.value = 2
    half = dict(explorer.state)
    assert half["cache_ratio"] == pytest.approx(0.5) and half["speedup"] > 1.5 and half["images"].shape == (3, 8, 8, 1)
    explorer.interval.value = 1
    assert explorer.state["cache_ratio"] == 0 and explorer.state["speedup"] == 1.0 and explorer.state["rmse"] == 0
    explorer.interval.value = 3
    assert explorer.state["cache_ratio"] == pytest.approx(0.6) and explorer.state["speedup"] > half["speedup"]
    assert not np.array_equal(explorer.state["images"], half["images"]) or explorer.state["rmse"] != half["rmse"]
    assert bytes(explorer.image.value).startswith(b"\x89PNG") and "theoretical speedup" in explorer.status.value


def test_goc_controls_and_invalid_settings(explorer):
    explorer.interval.value = 2
    explorer.compensator.value = "goc"
    explorer.weight.value = 0.0
    zero = explorer.state["rmse"]
    explorer.compensator.value = "none"
    assert explorer.state["rmse"] == zero  # GOC with w = 0 is its host
    explorer.compensator.value = "goc"
    explorer.weight.value = 1.0
    assert explorer.state["rmse"] != zero
    explorer.correction.value = "3,42"
    assert "outside" in explorer.state["error"] and "crimson" in explorer.status.value
    explorer.correction.value = ""
    assert explorer.state["error"] is None


def test_l2c_threshold_slider():
    model = load_model("tiny-digits")
    explorer = ThresholdExplorer(model, [2], steps=20, router=str(paths.TINY_DIGITS_ROUTER))
    explorer.schedule.value = "l2c"
    explorer.thres.value = 0.1
    at_01 = explorer.state["cache_ratio"]
    assert explorer.coupling.value == "block" and explorer.method().compensator_options["coupling"] == "block"
    block_rmse = explorer.state["rmse"]
    explorer.coupling.value = "unit"  # the tiny router reuses lone units at correction steps
    assert explorer.state["rmse"] != block_rmse and explorer.state["cache_ratio"] == at_01
    explorer.coupling.value = "block"
    explorer.thres.value = 0.5
    assert explorer.state["cache_ratio"] > at_01 > 0
    explorer.thres.value = 0.0
    assert "recomputes everything" in explorer.state["error"]  # GOC needs something to correct
    explorer.compensator.value = "none"
    assert explorer.state["cache_ratio"] == 0 and explorer.state["rmse"] == 0
