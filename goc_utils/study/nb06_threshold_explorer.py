"""Notebook 06: the interactive threshold explorer (ipywidgets): caching knobs -> what the cache does and why.

Four panels, all recomputed from the same noise on every change:

* **images**: the un-cached samples, the cached samples and their absolute difference (x4);
* **schedule map**: steps x blocks for the attention and the MLP units, coloured computed / reused /
  reused-and-corrected (read from the compensator's correction log, not re-derived);
* **error along the trajectory**: RMSE of x_t vs the un-cached x_t at every step, with the reused steps shaded;
* **status**: reused share of units and MACs, theoretical speedup, final RMSE (or the error of invalid settings).

Presets set the paper's configurations in one click (FORA-25 + GOC w 1.2 at steps 3, 5, 7, 9; FORA-50 + GOC with its
published steps; L2C + GOC w 0.8; ``auto``: inflection-aware steps and least-squares w from priors); the default is
the paper's FORA-50 setting. Sliders re-sample when released (``continuous_update=False``) and a busy line
shows while sampling; the images are decoded by the VAE inside every update on latent models (tiny-fashion); for
slow models (more than :data:`LIVE_MAX_MACS` per forward, such as DiT-XL/2) a **sample** button replaces live
updates.

The callbacks call the same functions as the static study cells (:class:`CacheMethod`,
:func:`goc_utils.evaluation.sampling.generate`, :mod:`goc_utils.model.macs`), so what a slider shows is what
the tables report.
Headless (papermill, ``interactive=False``) the notebook renders :meth:`ThresholdExplorer.snapshot`, a figure with
every panel.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from PIL import Image

from goc_utils.cache import COMPENSATORS, build_compensator
from goc_utils.cache.goc import COUPLINGS
from goc_utils.cache.l2c import default_router
from goc_utils.cache.method import CacheMethod, resolve_method
from goc_utils.cache.plugins import load_plugins
from goc_utils.cache.run import Resources, RunShape
from goc_utils.cache.schedule import build_schedule
from goc_utils.errors import GocError
from goc_utils.model.macs import model_macs
from goc_utils.model.sampler import generate, parse_classes
from goc_utils.priors.stats import PriorStats, default_priors_path
from goc_utils.study.params import StudyParams
from goc_utils.study.viz import image_grid

__all__ = [  # what notebook 06 uses
    "PriorStats",
    "StudyParams",
    "ThresholdExplorer",
    "default_priors_path",
    "default_router",
    "parse_classes",
]


COMPUTED, REUSED, CORRECTED = 0, 1, 2
MAP_COLOURS = ListedColormap(["#d9d9d9", "#4c72b0", "#dd8452"])
"""Schedule map colours: computed (grey), reused plain (blue), reused and corrected (orange)."""
LIVE_MAX_MACS = 10**9
"""Models cheaper than this per image and forward (the tiny tiers: 40 MMACs) re-sample on every change; costlier
ones (DiT-XL/2: 119 GMACs at 256 px) show a **sample** button."""
DIFF_GAIN = 4
"""The difference row shows ``DIFF_GAIN * |cached - un-cached|`` (clipped to 255)."""


def _published_steps(name: str, steps: int, depth: int) -> str:
    published = build_schedule(name, steps, depth).reference_correction_steps
    return ",".join(str(s) for s in published) if published else ""


def standalone_compensators() -> list[str]:
    """The registered compensators that run from their defaults alone: not TCC, whose pack is fitted for one host
    schedule (``fora-50``, ``l2c``) that the explorer's free FORA / L2C knobs would not match."""
    load_plugins()
    names = []
    for name in list(COMPENSATORS):
        try:
            build_compensator(name)
        except GocError:
            continue
        names.append(name)
    return names


class ThresholdExplorer:
    """Sliders and toggles over a caching method, re-sampling the same noise on every change.

    Controls: presets; schedule (FORA / L2C), FORA interval and step range, L2C router threshold, compensator (every
    registered one that runs without a fitted pack: :func:`standalone_compensators`), GOC weight (or ``auto`` from
    priors), correction steps (list, ``auto`` or empty = every reused step) and coupling (``block``: published;
    ``unit``: each unit on its own). ``state`` holds the latest
    ``cache_ratio``, ``cache_ratio_macs``, ``speedup``, ``rmse`` (final samples vs un-cached), ``images`` (uint8),
    ``unit_map`` (``(steps, depth, 2)``: 0 computed, 1 reused, 2 reused and corrected), ``step_rmse`` (per step)
    and ``error`` (a message when the settings are invalid).

    ``live``: re-sample (and VAE-decode, for latent models) on every change, the default for models under
    :data:`LIVE_MAX_MACS`; False shows a **sample** button instead (the default for DiT-XL/2, where one update takes
    long).
    """

    def __init__(
        self,
        model,
        labels: Sequence[int],
        steps: int = 20,
        cfg_scale: float = 4.0,
        seed: int = 0,
        router: str | None = None,
        priors=None,
        vae=None,
        live: bool | None = None,
    ) -> None:
        import ipywidgets as w  # lazy: only the interactive explorer needs it (headless runs use snapshot())

        self.model, self.labels, self.steps, self.cfg_scale, self.seed = model, list(labels), steps, cfg_scale, seed
        self.router, self.priors, self.vae = router, priors, vae
        self.resources = Resources(router, priors=priors)
        self.macs = model_macs(model)
        self.live = self.macs.forward < LIVE_MAX_MACS if live is None else live
        self._reference_steps: list = []
        self.reference = generate(model, self.labels, seed=seed, steps=steps, cfg_scale=cfg_scale, vae=vae,
                                  callback=lambda s, x: self._reference_steps.append(x.clone()))  # fmt: skip
        style = {"description_width": "120px"}
        depth = model.depth
        self.presets = {
            "paper fora-50+GOC": dict(schedule="fora", interval=2, step_range=(0, steps), compensator="goc",
                                      weight=1.2, auto_weight=False,
                                      correction=_published_steps("fora-50", steps, depth)),
            "paper fora-25+GOC": dict(schedule="fora", interval=2, step_range=(0, min(10, steps)), compensator="goc",
                                      weight=1.2, auto_weight=False,
                                      correction=_published_steps("fora-25", steps, depth)),
        }  # fmt: skip
        if router:
            self.presets["paper L2C+GOC"] = dict(
                schedule="l2c", thres=0.1, compensator="goc", weight=0.8, auto_weight=False,
                correction=_published_steps("fora-50", steps, depth),
            )  # fmt: skip
        if priors is not None:
            self.presets["auto"] = dict(compensator="goc", auto_weight=True, correction="auto")
        self.preset = w.ToggleButtons(
            options=list(self.presets), value=None, description="preset", style=style | {"button_width": "150px"}
        )
        self.schedule = w.ToggleButtons(
            options=["fora", "l2c"] if router else ["fora"], value="fora", description="schedule", style=style
        )
        slider = dict(continuous_update=False, style=style)
        self.interval = w.IntSlider(value=2, min=1, max=6, description="FORA interval", **slider)
        self.step_range = w.IntRangeSlider(value=(0, steps), min=0, max=steps, description="FORA range", **slider)
        self.thres = w.FloatSlider(value=0.1, min=0.0, max=1.0, step=0.01, description="L2C threshold", **slider)
        self.compensator = w.ToggleButtons(
            options=standalone_compensators(), value="goc", description="compensator", style=style
        )
        self.weight = w.FloatSlider(value=1.2, min=0.0, max=2.0, step=0.05, description="GOC weight w", **slider)
        self.auto_weight = w.Checkbox(value=False, description="w from priors (auto)", disabled=priors is None)
        self.correction = w.Text(
            value="", placeholder="3,5,7,9 | auto | empty = every reused step", description="GOC steps",
            continuous_update=False, style=style,
        )  # fmt: skip
        self.coupling = w.ToggleButtons(
            options=list(COUPLINGS),
            value="block",
            description="GOC coupling",
            tooltips=["correct a unit only when its whole block is reused (published)", "correct each unit on its own"],
            style=style,
        )
        self.busy = w.HTML()
        self.status = w.HTML()
        self.image = w.Image(format="png")
        self.schedule_map = w.Image(format="png")
        self.error_plot = w.Image(format="png", layout=w.Layout(width="420px"))
        self.sample_button = w.Button(description="sample", button_style="primary", layout=w.Layout(width="120px"))
        self.sample_button.on_click(lambda _: self.update())
        self.controls = [self.schedule, self.interval, self.step_range, self.thres, self.compensator, self.weight,
                         self.auto_weight, self.correction, self.coupling]  # fmt: skip
        self._holding = False
        for control in self.controls:
            control.observe(self._changed, names="value")
        self.preset.observe(lambda change: self.apply_preset(change["new"]), names="value")
        left = w.VBox([self.preset, *self.controls, *([] if self.live else [self.sample_button])])
        right = w.VBox([self.busy, self.status, self.image, self.schedule_map, self.error_plot])
        self.widget = w.VBox([w.HBox([left, right])])
        self.state: dict = {}
        self.preset.value = "paper fora-50+GOC"  # the paper's default setting (samples once)

    # ------------------------------------------------------------------ controls
    def _changed(self, change) -> None:
        if self._holding:
            return
        if self.preset.value is not None and not self._matches(self.preset.value):
            self._holding = True
            self.preset.value = None  # a hand-set knob leaves the preset
            self._holding = False
        if self.live:
            self.update()
        else:
            self.busy.value = "<i>settings changed: press <b>sample</b></i>"

    def _matches(self, name: str) -> bool:
        return all(getattr(self, k).value == v for k, v in self.presets[name].items())

    def apply_preset(self, name: str | None) -> dict:
        """Set every knob of a preset at once (one re-sample)."""
        if name is None or self._holding:
            return self.state
        self._holding = True
        try:
            for key, value in self.presets[name].items():
                getattr(self, key).value = value
            if self.preset.value != name:
                self.preset.value = name
        finally:
            self._holding = False
        return self.update() if self.live or not self.state else self.state

    def method(self) -> CacheMethod:
        """The :class:`CacheMethod` the controls describe."""
        if self.schedule.value == "fora":
            start, stop = self.step_range.value
            schedule_options = {"interval": self.interval.value, "start": start, "stop": stop}
        else:
            schedule_options = {"router": self.router, "thres": self.thres.value}
        options: dict = {}
        if self.compensator.value == "goc":
            text = self.correction.value.strip()
            steps = "auto" if text == "auto" else ([int(s) for s in text.split(",") if s.strip()] if text else None)
            weight = "auto" if self.auto_weight.value else self.weight.value
            options = {"weight": weight, "correction_steps": steps, "coupling": self.coupling.value}
        return CacheMethod(self.schedule.value, schedule_options, self.compensator.value, options)

    # ------------------------------------------------------------------ sampling
    def update(self) -> dict:
        """Re-sample with the current settings and refresh ``state`` and every panel."""
        self.busy.value = "<b>&#9203; sampling&hellip;</b>"
        try:
            return self._update()
        finally:
            self.busy.value = ""

    def _update(self) -> dict:
        try:
            method = resolve_method(self.method(), RunShape.of(self.model, self.steps), self.resources)
        except (GocError, ValueError) as exc:
            self.state = {"error": str(exc)}
            self.status.value = f"<b style='color:crimson'>{exc}</b>"
            return self.state
        engine = method.engine(self.model)
        engine.compensator.corrections = []
        trajectory: list = []
        result = generate(
            self.model, self.labels, seed=self.seed, steps=self.steps, cfg_scale=self.cfg_scale, vae=self.vae,
            forward=engine.forward, callback=lambda s, x: trajectory.append(x.clone()),
        )  # fmt: skip
        schedule = engine.schedule
        unit_map = np.where(schedule.mask, COMPUTED, REUSED).astype(np.int8)
        for step, block, unit in engine.compensator.corrections:
            unit_map[step, block, unit] = CORRECTED
        step_rmse = np.array(
            [float(((a - b) ** 2).mean().sqrt()) for a, b in zip(trajectory, self._reference_steps, strict=True)]
        )
        cost = method.cost(self.macs)
        self.state = {
            "cache_ratio": cost["cache_ratio"],
            "cache_ratio_macs": cost["cache_ratio_macs"],
            "speedup": cost["macs_speedup"],
            "rmse": float(((result.final - self.reference.final) ** 2).mean().sqrt()),
            "images": result.images,
            "unit_map": unit_map,
            "step_rmse": step_rmse,
            "error": None,
        }
        self.status.value = (
            f"<b>{self.method().label()}</b>: reused {100 * self.state['cache_ratio']:.1f}% of unit-steps "
            f"({100 * self.state['cache_ratio_macs']:.1f}% of MACs) &middot; theoretical speedup "
            f"{self.state['speedup']:.3f}x &middot; RMSE vs un-cached {self.state['rmse']:.4f}"
        )
        self.image.value = self._png(self.rows())
        self.schedule_map.value = _figure_png(self.map_figure())
        self.error_plot.value = _figure_png(self.error_figure())
        return self.state

    def rows(self) -> np.ndarray:
        """``(3, n, H, W, C)`` uint8: un-cached, cached, ``DIFF_GAIN`` x |difference|."""
        plain, cached = self.reference.images.astype(np.int16), self.state["images"].astype(np.int16)
        diff = np.clip(DIFF_GAIN * np.abs(cached - plain), 0, 255)
        return np.stack([plain, cached, diff]).astype(np.uint8)

    @staticmethod
    def _png(rows: np.ndarray) -> bytes:
        images = rows.reshape(-1, *rows.shape[2:])
        small = images.shape[1] <= 32
        grid = image_grid(images.repeat(8, 1).repeat(8, 2) if small else images, nrow=rows.shape[1])
        buffer = io.BytesIO()
        Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(buffer, format="PNG")
        return buffer.getvalue()

    # ------------------------------------------------------------------ figures
    def draw_map(self, axes, legend_below: bool = False) -> None:
        """The schedule map on two axes (attention, MLP); the legend right of them, or below."""
        unit_map = self.state["unit_map"]
        for unit, (ax, name) in enumerate(zip(axes, ("attention", "MLP"), strict=True)):
            ax.imshow(unit_map[:, :, unit].T, cmap=MAP_COLOURS, vmin=0, vmax=2, aspect="auto", interpolation="nearest")
            ax.set_title(f"{name} units", fontsize=8)
            ax.set_xlabel("step", fontsize=7)
            ax.set_ylabel("block", fontsize=7)
            ax.tick_params(labelsize=6)
        handles = [plt.Rectangle((0, 0), 1, 1, color=MAP_COLOURS(i)) for i in range(3)]
        labels = ["computed", "reused", "reused + corrected"]
        if legend_below:
            axes[0].legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.17), ncol=3,
                           frameon=False)  # fmt: skip
        else:
            axes[-1].legend(handles, labels, fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)

    def draw_error(self, ax) -> None:
        """RMSE of x_t vs the un-cached x_t along the trajectory; reused steps shaded."""
        rmse = self.state["step_rmse"]
        reused = (self.state["unit_map"] != COMPUTED).any(axis=(1, 2))
        for step in np.flatnonzero(reused):
            ax.axvspan(step - 0.5, step + 0.5, color="#4c72b0", alpha=0.12, lw=0)
        ax.plot(np.arange(len(rmse)), rmse, marker="o", ms=3, lw=1, color="#c44e52")
        ax.set_xlabel("step", fontsize=7)
        ax.set_ylabel("RMSE of x_t vs un-cached", fontsize=7)
        ax.set_title("error along the trajectory\n(shaded: steps with reuse)", fontsize=8)
        ax.tick_params(labelsize=6)

    def map_figure(self):
        fig, axes = plt.subplots(1, 2, figsize=(5.2, 2.1))
        self.draw_map(axes)
        fig.tight_layout()
        return fig

    def error_figure(self):
        fig, ax = plt.subplots(figsize=(3.4, 2.1))
        self.draw_error(ax)
        fig.tight_layout()
        return fig

    def snapshot(self):
        """A static figure with every panel (for headless runs): images, schedule map, error plot, status."""
        if self.state.get("error"):
            raise GocError(self.state["error"])
        rows = self.rows()
        n = rows.shape[1]
        fig = plt.figure(figsize=(max(8.5, 0.62 * n + 1.5), 6.4))
        grid = fig.add_gridspec(2, 3, height_ratios=[1, 1.1], hspace=0.3, wspace=0.5, bottom=0.17)
        images = fig.add_subplot(grid[0, :])
        picture = image_grid(rows.reshape(-1, *rows.shape[2:]), nrow=n)
        images.imshow(picture[..., 0] if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=255,
                      interpolation="nearest")  # fmt: skip
        images.set_xticks([])
        height = picture.shape[0] / 3
        images.set_yticks([height * (i + 0.5) for i in range(3)])
        images.set_yticklabels(["un-cached", "cached", f"|diff| x{DIFF_GAIN}"], fontsize=7)
        self.draw_map([fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])], legend_below=True)
        self.draw_error(fig.add_subplot(grid[1, 2]))
        fig.suptitle(
            f"{self.method().label()}: {100 * self.state['cache_ratio']:.1f}% reused, "
            f"{self.state['speedup']:.2f}x theoretical, final RMSE {self.state['rmse']:.4f}",
            fontsize=9,
        )
        return fig


def _figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
