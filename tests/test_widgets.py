"""The threshold explorer reacts to its controls (set programmatically, as a user would with the sliders)."""

from __future__ import annotations

import numpy as np
import pytest

from goc_utils import paths
from goc_utils.model.checkpoints import load_model
from goc_utils.study.nb06_threshold_explorer import COMPUTED, CORRECTED, REUSED, ThresholdExplorer


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


def test_the_default_is_the_papers_fora50_setting_and_the_map_shows_why():
    model = load_model("tiny-digits")
    explorer = ThresholdExplorer(model, [0, 5], steps=20, router=str(paths.TINY_DIGITS_ROUTER))
    assert explorer.preset.value == "paper fora-50+GOC"
    method = explorer.method()
    assert method.compensator_options["correction_steps"] == [3, 5, 7, 9, 11, 13, 15, 19]
    assert method.compensator_options["weight"] == 1.2 and method.schedule_options["interval"] == 2
    unit_map = explorer.state["unit_map"]
    assert unit_map.shape == (20, 12, 2)
    reused = np.flatnonzero((unit_map != COMPUTED).all(axis=(1, 2)))
    corrected = np.flatnonzero((unit_map == CORRECTED).all(axis=(1, 2)))
    assert list(reused) == list(range(1, 20, 2))
    assert list(corrected) == [3, 5, 7, 9, 11, 13, 15, 19]  # steps 1 and 17 are the published inflections
    rows = explorer.rows()
    assert rows.shape == (3, 2, 8, 8, 1)
    assert np.array_equal(rows[0], explorer.reference.images) and np.array_equal(rows[1], explorer.state["images"])
    expected = np.clip(4 * np.abs(rows[1].astype(int) - rows[0].astype(int)), 0, 255)
    assert np.array_equal(rows[2], expected)
    step_rmse = explorer.state["step_rmse"]
    assert len(step_rmse) == 20 and step_rmse[0] == 0 and step_rmse[-1] > 0
    for panel in (explorer.image, explorer.schedule_map, explorer.error_plot):
        assert bytes(panel.value).startswith(b"\x89PNG")
    assert explorer.busy.value == ""  # the busy line is cleared once sampling is done
    assert all(not s.continuous_update for s in (explorer.interval, explorer.thres, explorer.weight))
    # the L2C preset: block coupling leaves lone reused units plain, so some reused units are not corrected
    explorer.preset.value = "paper L2C+GOC"
    assert explorer.method().compensator_options["weight"] == 0.8 and explorer.schedule.value == "l2c"
    l2c_map = explorer.state["unit_map"]
    assert (l2c_map == CORRECTED).any() and ((l2c_map == REUSED) & np.isin(np.arange(20), [3, 5])[:, None, None]).any()
    explorer.thres.value = 0.3  # a hand-set knob leaves the preset
    assert explorer.preset.value is None
    fig = explorer.snapshot()
    assert len(fig.axes) == 4  # images, attention map, MLP map, error along the trajectory


def test_slow_models_get_a_sample_button_instead_of_live_updates():
    explorer = ThresholdExplorer(load_model("tiny-digits"), [3], steps=10, live=False)
    first = dict(explorer.state)
    explorer.interval.value = 3
    assert explorer.state["cache_ratio"] == first["cache_ratio"] and "press" in explorer.busy.value
    explorer.sample_button.click()
    assert explorer.state["cache_ratio"] > first["cache_ratio"] and explorer.busy.value == ""


def test_the_latent_tier_updates_live_with_the_vae_decode_in_the_loop():
    from goc_utils.model.vae import load_vae

    model, vae = load_model("tiny-fashion"), load_vae(str(paths.TINY_FASHION_VAE), "cpu")
    explorer = ThresholdExplorer(model, [0, 7], steps=10, vae=vae)
    assert explorer.live  # 40 MMACs per forward: no sample button
    assert explorer.reference.images.shape == (2, 32, 32, 1)  # decoded garments, not 8x8x4 latents
    explorer.compensator.value = "none"
    explorer.interval.value = 3  # re-sampled and decoded at once
    assert explorer.state["cache_ratio"] == pytest.approx(0.6) and explorer.state["images"].shape == (2, 32, 32, 1)
    assert explorer.state["rmse"] > 0 and explorer.state["step_rmse"].shape == (10,)
    assert not np.array_equal(explorer.state["images"], explorer.reference.images)


def test_the_explorer_offers_only_compensators_that_run_without_a_fitted_pack():
    from goc_utils.study.nb06_threshold_explorer import standalone_compensators

    offered = standalone_compensators()
    assert {"none", "goc", "taylor"} <= set(offered) and "tcc" not in offered
