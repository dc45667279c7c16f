"""Cache schedules: which units are recomputed at which sampling step.

A schedule is a boolean mask of shape ``(steps, depth, 2)``: entry ``[s, i, u]`` is True
when unit ``u`` (0 = attention branch, 1 = MLP branch) of block ``i`` is recomputed at
step ``s`` (0 = noisiest) and False when its output is reused (then a compensator decides
what the reused unit returns). A schedule never knows about compensators.

Builders live one per file (``fora.py``, ``matrix.py``, ``l2c.py``) and register in
:data:`SCHEDULES` with :func:`register_schedule` (``goc_utils.cache`` imports them once);
:func:`build_schedule` turns a name plus options into a schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from goc_utils.cache.options import builder_options
from goc_utils.cache.plugins import load_plugins
from goc_utils.errors import InvalidArgumentError
from goc_utils.model.macs import MACs


class ScheduleError(InvalidArgumentError):
    """A malformed schedule or one that does not fit the model / step count."""


@dataclass
class CacheSchedule:
    """Which units are recomputed (True) or reused (False) at each step.

    Attributes:
        mask: bool array ``(steps, depth, 2)``; ``mask[s, i, 0]`` attention, ``[s, i, 1]`` MLP of block i.
        name: human-readable description (``"fora-50"``, ``"l2c@0.1"``...).
        reference_correction_steps: GOC correction steps published with this schedule, or None
            (then GOC corrects at every reused step by default).
        reference_weight: GOC's published w for this host: 1.2 for FORA-like fixed schedules (the
            default), 0.8 for Learning-to-Cache.
    """

    mask: np.ndarray
    name: str = "custom"
    reference_correction_steps: tuple[int, ...] | None = field(default=None)
    reference_weight: float = 1.2

    def __post_init__(self) -> None:
        mask = np.asarray(self.mask)
        if mask.ndim != 3 or mask.shape[2] != 2:
            raise ScheduleError(f"schedule {self.name!r} has shape {mask.shape}; expected (steps, depth, 2)")
        self.mask = mask.astype(bool)
        if not self.mask[0].all():
            raise ScheduleError(f"schedule {self.name!r} reuses units at step 0, where nothing is cached yet")

    @property
    def steps(self) -> int:
        return self.mask.shape[0]

    @property
    def depth(self) -> int:
        return self.mask.shape[1]

    def check_fits(self, steps: int, depth: int) -> None:
        """Raise a one-line :class:`ScheduleError` naming both shapes if the schedule does not fit."""
        if self.mask.shape[:2] != (steps, depth):
            raise ScheduleError(
                f"schedule {self.name!r} has shape {self.mask.shape} (steps, depth, 2) but the run needs "
                f"({steps}, {depth}, 2): build it for {steps} steps and a {depth}-block model"
            )

    @property
    def reused_units(self) -> int:
        """Number of reused unit-steps."""
        return int((~self.mask).sum())

    @property
    def cache_ratio(self) -> float:
        """Fraction of unit-steps reused (by units)."""
        return self.reused_units / self.mask.size

    def cache_ratio_macs(self, unit_macs: tuple[float, float]) -> float:
        """Fraction of branch MACs skipped, given the MACs of an (attention, MLP) branch."""
        weights = np.asarray(unit_macs, dtype=np.float64)
        total = self.mask.shape[0] * self.mask.shape[1] * weights.sum()
        return float(((~self.mask) * weights).sum() / total)

    def reuse_steps(self) -> list[int]:
        """Steps at which at least one unit is reused."""
        return [int(s) for s in np.flatnonzero(~self.mask.all(axis=(1, 2)))]

    def last_reuse_step(self) -> np.ndarray:
        """``(depth, 2)`` int array: last step at which each unit is reused, -1 if never."""
        reused = ~self.mask
        steps = np.arange(self.steps)[:, None, None]
        return np.where(reused, steps, -1).max(axis=0)


def none_schedule(steps: int, depth: int) -> CacheSchedule:
    """Recompute everything (the un-cached model)."""
    return CacheSchedule(np.ones((steps, depth, 2), dtype=bool), name="none")


ScheduleBuilder = Callable[..., CacheSchedule]


@dataclass
class ScheduleSpec:
    """A registered schedule: its builder and the text options of its method strings.

    ``options`` maps a method-string key (``fora:interval=3``) to a converter from the text value to
    builder keyword arguments; by default one key per keyword parameter of the builder, converted by
    its type hint (see :mod:`goc_utils.cache.options`).
    """

    build: ScheduleBuilder
    options: dict[str, Callable[[str], dict]]


SCHEDULES: dict[str, ScheduleSpec] = {}
"""Schedules by name: ``SCHEDULES[name].build(steps, depth, **options)`` -> :class:`CacheSchedule`."""


def register_schedule(
    name: str, options: dict[str, Callable[[str], dict]] | None = None
) -> Callable[[ScheduleBuilder], ScheduleBuilder]:
    """Decorator adding a builder ``builder(steps, depth, **options)`` to :data:`SCHEDULES`.

    ``options``: extra method-string options that do not map one to one onto a keyword argument,
    e.g. ``{"range": parse_range}`` with ``parse_range("2-18") -> {"start": 2, "stop": 18}``.
    """

    def add(builder: ScheduleBuilder) -> ScheduleBuilder:
        SCHEDULES[name] = ScheduleSpec(builder, builder_options(builder, options))
        return builder

    return add


register_schedule("none")(none_schedule)


def build_schedule(name: str, steps: int, depth: int, **options) -> CacheSchedule:
    """Build a registered schedule.

    Example:
        >>> build_schedule("fora", steps=20, depth=12, interval=2).cache_ratio
        0.5
    """
    if name not in SCHEDULES:
        load_plugins()
    if name not in SCHEDULES:
        raise ScheduleError(f"unknown cache schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
    if not 1 <= int(steps) <= MAX_STEPS:
        raise ScheduleError(f"steps must be in 1..{MAX_STEPS} (got {steps})")
    return SCHEDULES[name].build(steps, depth, **options)


MAX_STEPS = 1000
"""Sampling steps are at most the diffusion's 1,000 training timesteps."""


def schedule_macs(macs: MACs, schedule: CacheSchedule) -> int:
    """MACs of a whole sampling run of one image under ``schedule`` (one forward per step)."""
    computed_attention = int(schedule.mask[:, :, 0].sum())
    computed_mlp = int(schedule.mask[:, :, 1].sum())
    fixed = schedule.steps * (macs.outside_blocks + macs.depth * macs.adaln_per_block)
    return fixed + computed_attention * macs.attention_branch + computed_mlp * macs.mlp_branch


def theoretical_speedup(macs: MACs, schedule: CacheSchedule, extra: int = 0) -> float:
    """MACs(no cache) / (MACs(schedule) + ``extra``, a compensator's own MACs per image and run); classifier-free
    guidance doubles both, so it cancels."""
    return schedule.steps * macs.forward / (schedule_macs(macs, schedule) + extra)
