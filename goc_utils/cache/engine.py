"""The cache engine: one sampling run = a model + a schedule + a compensator.

The engine has a step / unit API used by both front ends: :meth:`CacheEngine.begin_step`,
then :meth:`CacheEngine.unit` for every (block, unit) in order, which either computes the branch
(schedule says recompute; the compensator records the output) or asks the compensator for the
reused value, then :meth:`CacheEngine.end_step`. Our ``DiT`` goes through
:meth:`CacheEngine.forward` (the ``forward(x, t, y, step=s)`` that :func:`goc_utils.evaluation.sampling.generate`
calls, handing the model :meth:`CacheEngine.unit` as its ``unit_fn``); diffusers transformers go
through the hooks of :mod:`goc_utils.integrations.diffusers.hooks`. It keeps only the tensors the schedule can
still reuse: a unit whose last reuse has passed (or that is never reused) is released.
With a schedule that reuses nothing the model runs its plain, hook-free path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from goc_utils.cache.compensator import Compensator, ReuseCompensator
from goc_utils.cache.schedule import CacheSchedule, theoretical_speedup
from goc_utils.model.macs import MACs


def method_cost(schedule: CacheSchedule, compensator: Compensator, tokens: int, macs: MACs) -> dict[str, float]:
    """What a method costs, the compensator's own work included: the one place every printed or tabled speedup
    comes from (``goc sample``, ``bench``, ``eval``, the peers table, the notebooks).

    Returns ``cache_ratio`` (reused share of unit-steps), ``cache_ratio_macs`` (skipped share of branch MACs) and
    ``macs_speedup`` (un-cached MACs over this run's, counting the compensator's ``extra_macs`` for ``tokens``
    tokens per image: TCC's matmuls).
    """
    return {
        "cache_ratio": schedule.cache_ratio,
        "cache_ratio_macs": schedule.cache_ratio_macs(macs.units),
        "macs_speedup": theoretical_speedup(macs, schedule, compensator.extra_macs(schedule, tokens)),
    }


class CacheEngine:
    """Run a schedule and a compensator, unit by unit, over one sampling run.

    Example:
        >>> from goc_utils.cache import build_compensator, build_schedule
        >>> from goc_utils.model.checkpoints import load_model
        >>> from goc_utils.model.sampler import generate
        >>> model = load_model("tiny-digits")
        >>> engine = CacheEngine(build_schedule("fora-50", 20, model.depth),
        ...                      build_compensator("goc", weight=1.2, correction_steps=(3, 5, 7, 9, 11, 13, 15, 19)),
        ...                      model=model)
        >>> result = generate(model, [3, 5], steps=20, forward=engine.forward)

    Args:
        schedule: which unit recomputes at which step. compensator: what a reused unit returns (plain reuse).
        model: the ``DiT`` that :meth:`forward` drives (None when the diffusers hooks drive the engine through
            :meth:`begin_step` / :meth:`unit` / :meth:`end_step`).
        tokens: tokens per image, for the compensator's own MACs in :meth:`cost` (default: the model's).
    """

    def __init__(
        self, schedule: CacheSchedule, compensator: Compensator | None = None, model=None, tokens: int | None = None
    ) -> None:
        if model is not None:
            schedule.check_fits(schedule.steps, model.depth)
        self.model = model
        self.tokens = int(getattr(model, "num_tokens", 0) if tokens is None else tokens)
        self.schedule = schedule
        self.compensator = compensator or ReuseCompensator()
        self._last_reuse = schedule.last_reuse_step()
        self._uncached = schedule.reused_units == 0
        self.peak_stored_tensors = 0
        self._step = -1
        self._recompute = None
        self.on_unit: Callable[[int, int, int, torch.Tensor, bool], None] | None = None
        """Optional observer ``on_unit(step, block, unit, output, computed)`` (priors, per-unit errors)."""

    def cost(self, macs: MACs, run=None) -> dict[str, float]:
        """This run's :func:`method_cost` (``run`` is unused: a schedule's cost is known without sampling; the
        peer runners of :mod:`goc_utils.integrations.diffusers.peers` measure theirs with it)."""
        return method_cost(self.schedule, self.compensator, self.tokens, macs)

    def prepare(self) -> None:
        """Nothing to do before sampling (the :class:`~goc_utils.integrations.diffusers.peers.Runner` protocol)."""

    def reset(self) -> None:
        """Clear the compensator state (done automatically at step 0)."""
        self.compensator.reset()
        self.peak_stored_tensors = 0

    def begin_step(self, step: int) -> None:
        """Start step ``step`` (0 resets the compensator): the front ends call this once per model call."""
        if step == 0:
            self.reset()
        if not 0 <= step < self.schedule.steps:
            raise IndexError(f"step {step} is outside the schedule's {self.schedule.steps} steps")
        self._step = step
        self._recompute = self.schedule.mask[step]
        self.compensator.start_step(step, self._recompute)

    def unit(self, block: int, unit: int, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The output of ``(block, unit)`` at the current step: ``compute()`` or the compensator's reuse.

        This is the :data:`~goc_utils.model.dit.UnitFn` of the current step, used by :meth:`forward` for
        our ``DiT`` and by :mod:`goc_utils.integrations.diffusers.hooks` for diffusers transformers.
        """
        step, key = self._step, (block, unit)
        is_computed = bool(self._recompute[block, unit])
        keep = self._last_reuse[block, unit] > step
        if is_computed:
            value = compute()
            if keep:
                self.compensator.computed(key, step, value)
        else:
            value = self.compensator.reuse(key, step)
        if not keep:
            self.compensator.release(key)
        if self.on_unit is not None:
            self.on_unit(step, block, unit, value, is_computed)
        return value

    def end_step(self) -> None:
        """Finish the current step (memory bookkeeping)."""
        self.peak_stored_tensors = max(self.peak_stored_tensors, self.compensator.stored_tensors())

    @property
    def plain(self) -> bool:
        """True when the model can run hook-free (nothing reused, nobody observing units)."""
        return self._uncached and self.on_unit is None

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        """``forward(x, t, y, step=s)`` for :func:`goc_utils.evaluation.sampling.generate`."""
        if self.model is None:
            raise TypeError("this engine drives no model (CacheEngine(..., model=model) for our DiT's forward)")
        if self.plain:
            if not 0 <= step < self.schedule.steps:
                raise IndexError(f"step {step} is outside the schedule's {self.schedule.steps} steps")
            return self.model(x, t, y)
        self.begin_step(step)
        out = self.model(x, t, y, unit_fn=self.unit)
        self.end_step()
        return out
