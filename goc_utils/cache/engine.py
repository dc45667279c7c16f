"""The cache engine: one sampling run = a model + a schedule + a compensator.

The engine provides the ``forward(x, t, y, step=s)`` that :func:`goc_utils.sampling.generate`
calls. At step ``s`` it hands the model a ``unit_fn`` that, for every (block, unit),
either computes the branch (schedule says recompute; the compensator records the output)
or asks the compensator for the reused value. It keeps only the tensors the schedule can
still reuse: a unit whose last reuse has passed (or that is never reused) is released.
With a schedule that reuses nothing the model runs its plain, hook-free path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from goc_utils.cache.compensator import Compensator, ReuseCompensator
from goc_utils.cache.schedule import CacheSchedule
from goc_utils.models import DiT


class CacheEngine:
    """Run a DiT under a cache schedule and a compensator.

    Example:
        >>> from goc_utils.cache import build_compensator, build_schedule
        >>> from goc_utils.models import load_model
        >>> from goc_utils.sampling import generate
        >>> model = load_model("tiny-digits")
        >>> engine = CacheEngine(model, build_schedule("fora-50", 20, model.depth),
        ...                      build_compensator("goc", weight=1.2, correction_steps=(3, 5, 7, 9, 11, 13, 15, 19)))
        >>> result = generate(model, [3, 5], steps=20, forward=engine.forward)
    """

    def __init__(self, model: DiT, schedule: CacheSchedule, compensator: Compensator | None = None) -> None:
        schedule.check_fits(schedule.steps, model.depth)
        self.model = model
        self.schedule = schedule
        self.compensator = compensator or ReuseCompensator()
        self._last_reuse = schedule.last_reuse_step()
        self._uncached = schedule.reused_units == 0
        self.peak_stored_tensors = 0
        self.on_unit: Callable[[int, int, int, torch.Tensor, bool], None] | None = None
        """Optional observer ``on_unit(step, block, unit, output, computed)`` (priors, per-unit errors)."""

    def reset(self) -> None:
        """Clear the compensator state (done automatically at step 0)."""
        self.compensator.reset()
        self.peak_stored_tensors = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        """``forward(x, t, y, step=s)`` for :func:`goc_utils.sampling.generate`."""
        if step == 0:
            self.reset()
        if step >= self.schedule.steps:
            raise IndexError(f"step {step} is outside the schedule's {self.schedule.steps} steps")
        if self._uncached and self.on_unit is None:
            return self.model(x, t, y)
        recompute = self.schedule.mask[step]
        last_reuse = self._last_reuse
        compensator = self.compensator
        compensator.start_step(step, recompute)
        observer = self.on_unit

        def unit_fn(block: int, unit: int, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
            key = (block, unit)
            is_computed = bool(recompute[block, unit])
            keep = last_reuse[block, unit] > step
            if is_computed:
                value = compute()
                if keep:
                    compensator.computed(key, step, value)
            else:
                value = compensator.reuse(key, step)
            if not keep:
                compensator.release(key)
            if observer is not None:
                observer(step, block, unit, value, is_computed)
            return value

        out = self.model(x, t, y, unit_fn=unit_fn)
        self.peak_stored_tensors = max(self.peak_stored_tensors, compensator.stored_tensors())
        return out
