"""Interactive threshold explorer (ipywidgets): caching knobs -> live grid, cache ratio, speedup, error.

The callbacks call the same functions as the static study cells (:class:`CacheMethod`,
:func:`goc_utils.sampling.generate`, :mod:`goc_utils.macs`), so what a slider shows is what
the tables report. Headless (papermill, ``interactive=False``) the notebook renders
:meth:`ThresholdExplorer.snapshot` instead of the widget.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from goc_utils.cache import COMPENSATORS
from goc_utils.cache.goc import COUPLINGS
from goc_utils.cache.method import CacheMethod
from goc_utils.errors import GocError
from goc_utils.macs import model_macs, theoretical_speedup
from goc_utils.sampling import generate
from goc_utils.viz import image_grid, sample_grid_figure


class ThresholdExplorer:
    """Sliders and toggles over a caching method, re-sampling the same noise on every change.

    Controls: schedule (FORA / L2C), FORA interval and step range, L2C router threshold,
    compensator (every registered one: none / GOC / Taylor / ...), GOC weight, correction steps (list or ``auto``) and
    coupling (``block``: published; ``unit``: each unit on its own).
    ``state`` holds the latest ``cache_ratio``, ``cache_ratio_macs``, ``speedup``, ``rmse``
    (vs the un-cached run with the same noise), ``images`` (uint8) and ``error`` (a message
    when the settings are invalid).
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
    ) -> None:
        import ipywidgets as w  # lazy: only the interactive explorer needs it (headless runs use snapshot())

        self.model, self.labels, self.steps, self.cfg_scale, self.seed = model, list(labels), steps, cfg_scale, seed
        self.router, self.priors, self.vae = router, priors, vae
        self.macs = model_macs(model)
        self.reference = generate(model, self.labels, seed=seed, steps=steps, cfg_scale=cfg_scale, vae=vae)
        style = {"description_width": "120px"}
        self.schedule = w.ToggleButtons(
            options=["fora", "l2c"] if router else ["fora"], value="fora", description="schedule", style=style
        )
        self.interval = w.IntSlider(value=2, min=1, max=6, description="FORA interval", style=style)
        self.step_range = w.IntRangeSlider(value=(0, steps), min=0, max=steps, description="FORA range", style=style)
        self.thres = w.FloatSlider(value=0.1, min=0.0, max=1.0, step=0.01, description="L2C threshold", style=style)
        self.compensator = w.ToggleButtons(
            options=list(COMPENSATORS), value="goc", description="compensator", style=style
        )
        self.weight = w.FloatSlider(value=1.2, min=0.0, max=2.0, step=0.05, description="GOC weight w", style=style)
        self.correction = w.Text(
            value="", placeholder="3,5,7,9 | auto | empty = every reused step", description="GOC steps", style=style
        )
        self.coupling = w.ToggleButtons(
            options=list(COUPLINGS),
            value="block",
            description="GOC coupling",
            tooltips=["correct a unit only when its whole block is reused (published)", "correct each unit on its own"],
            style=style,
        )
        self.status = w.HTML()
        self.image = w.Image(format="png")
        controls = [
            self.schedule,
            self.interval,
            self.step_range,
            self.thres,
            self.compensator,
            self.weight,
            self.correction,
            self.coupling,
        ]
        for control in controls:
            control.observe(lambda change: self.update(), names="value")
        self.widget = w.VBox([w.HBox([w.VBox(controls), w.VBox([self.status, self.image])])])
        self.state: dict = {}
        self.update()

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
            options = {"weight": self.weight.value, "correction_steps": steps, "coupling": self.coupling.value}
        return CacheMethod(self.schedule.value, schedule_options, self.compensator.value, options)

    def update(self) -> dict:
        """Re-sample with the current settings and refresh ``state`` and the display."""
        try:
            engine = self.method().engine(self.model, self.steps, self.priors)
        except (GocError, ValueError) as exc:
            self.state = {"error": str(exc)}
            self.status.value = f"<b style='color:crimson'>{exc}</b>"
            return self.state
        result = generate(
            self.model,
            self.labels,
            seed=self.seed,
            steps=self.steps,
            cfg_scale=self.cfg_scale,
            vae=self.vae,
            forward=engine.forward,
        )
        schedule = engine.schedule
        self.state = {
            "cache_ratio": schedule.cache_ratio,
            "cache_ratio_macs": schedule.cache_ratio_macs(self.macs.units),
            "speedup": theoretical_speedup(self.macs, schedule),
            "rmse": float(((result.final - self.reference.final) ** 2).mean().sqrt()),
            "images": result.images,
            "error": None,
        }
        self.status.value = (
            f"reused {100 * self.state['cache_ratio']:.1f}% of unit-steps "
            f"({100 * self.state['cache_ratio_macs']:.1f}% of MACs) &middot; theoretical speedup "
            f"{self.state['speedup']:.3f}x &middot; RMSE vs un-cached {self.state['rmse']:.4f}"
        )
        self.image.value = self._png(result.images)
        return self.state

    @staticmethod
    def _png(images: np.ndarray) -> bytes:
        small = images.shape[1] <= 32
        grid = image_grid(images.repeat(8, 1).repeat(8, 2) if small else images, nrow=len(images))
        buffer = io.BytesIO()
        Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(buffer, format="PNG")
        return buffer.getvalue()

    def snapshot(self):
        """A static matplotlib figure of the current state (for headless runs)."""
        if self.state.get("error"):
            raise GocError(self.state["error"])
        title = (
            f"{self.method().label()}: {100 * self.state['cache_ratio']:.1f}% reused, "
            f"{self.state['speedup']:.2f}x theoretical, RMSE {self.state['rmse']:.4f}"
        )
        return sample_grid_figure(self.state["images"], self.labels, nrow=len(self.labels), title=title)
