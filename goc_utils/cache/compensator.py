"""Compensators: what a reused unit returns.

A compensator keeps a small per-unit state (keyed by ``(block, unit)``) and answers three
calls from the engine at step ``s``:

* ``start_step(step, recompute)``: before any unit of the step, the step's plan: a bool array
  ``(depth, 2)``, True where the unit is recomputed (a compensator that couples the units of a
  block, like GOC as published, decides here; the default ignores it);
* ``computed(key, step, value)``: the unit was recomputed and produced ``value``;
* ``reuse(key, step) -> value``: the unit is reused; return its approximation.

``release(key)`` drops a unit's state once the schedule never reuses it again, and
``reset()`` clears everything before a run. A compensator never knows about schedules.
New compensators are one file (a config dataclass + the class) with one :func:`register_compensator` line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from goc_utils.cache.options import config_options
from goc_utils.cache.plugins import load_plugins
from goc_utils.cache.run import CompensatorResolver
from goc_utils.errors import InvalidArgumentError

UnitKey = tuple[int, int]
"""``(block index, unit)`` with unit 0 = attention branch, 1 = MLP branch."""


class Compensator:
    """Base class; subclasses override :meth:`computed` and :meth:`reuse`."""

    name = "base"

    def __init__(self) -> None:
        self.state: dict[UnitKey, list] = {}
        self.corrections: list[tuple[int, int, int]] | None = None
        """Set to a list to log ``(step, block, unit)`` of every reuse that was corrected (the explorer's map)."""

    def note_correction(self, step: int, key: UnitKey) -> None:
        """Subclasses call this when a reused output is corrected rather than returned plain."""
        if self.corrections is not None:
            self.corrections.append((step, key[0], key[1]))

    def reset(self) -> None:
        """Forget every stored tensor (called by the engine before each run)."""
        self.state.clear()

    def release(self, key: UnitKey) -> None:
        """Drop the state of one unit (it will not be reused again in this run)."""
        self.state.pop(key, None)

    def start_step(self, step: int, recompute: np.ndarray) -> None:
        """Called once per step before its units; ``recompute`` is the ``(depth, 2)`` plan of the step."""

    def computed(self, key: UnitKey, step: int, value: torch.Tensor) -> None:
        raise NotImplementedError

    def reuse(self, key: UnitKey, step: int) -> torch.Tensor:
        raise NotImplementedError

    def plan_reuse(self, key: UnitKey, step: int) -> tuple[str, tuple] | None:
        """For compiled sampling (:mod:`goc_utils.cache.compiled`): what :meth:`reuse` would compute, as a recipe
        of :data:`REUSE_RECIPES` and its input tensors, run inside the step's graph; the graph's result then goes to
        :meth:`commit_reuse`. None (the default): :meth:`reuse` runs eagerly before the graph."""
        return None

    def commit_reuse(self, key: UnitKey, step: int, value: torch.Tensor) -> None:
        """Record the value a planned reuse (:meth:`plan_reuse`) returned, as :meth:`reuse` records it."""

    def extra_macs(self, schedule, tokens: int) -> int:
        """Multiply-accumulates the compensator adds to one sampling run of one image (0: elementwise work only)."""
        return 0

    def stored_tensors(self) -> int:
        """Number of tensors currently held (memory accounting in tests and benchmarks)."""
        return sum(len(values) for values in self.state.values())


@dataclass
class ReuseConfig:
    """Plain reuse (FORA / Learning-to-Cache as published): a reused unit returns its last output.

    No fields: the state is one tensor per unit that the schedule reuses later.
    """


class ReuseCompensator(Compensator):
    """Return the previous step's output unchanged."""

    name = "none"

    def __init__(self, config: ReuseConfig | None = None) -> None:
        super().__init__()
        self.config = config or ReuseConfig()

    def computed(self, key: UnitKey, step: int, value: torch.Tensor) -> None:
        self.state[key] = [value]

    def reuse(self, key: UnitKey, step: int) -> torch.Tensor:
        return self.state[key][-1]

    def plan_reuse(self, key: UnitKey, step: int) -> tuple[str, tuple]:
        return "same", (self.state[key][-1],)


REUSE_RECIPES: dict[str, Callable[..., torch.Tensor]] = {
    "same": lambda previous: previous,
    "extrapolate": lambda previous, before, weight: previous + weight * (previous - before),
}
"""Pure functions a compensator's planned reuse may name (:meth:`Compensator.plan_reuse`): traced into the compiled
graph of a step, so the arithmetic of a reused unit fuses with the step's kernels."""


@dataclass
class CompensatorSpec:
    """A registered compensator: its config dataclass, constructor, method-string options and resolve hook
    (:data:`~goc_utils.cache.run.CompensatorResolver`; None: the options are used as written)."""

    config_cls: type
    build: Callable[..., Compensator]
    options: dict[str, Callable[[str], dict]] = field(default_factory=dict)
    flags: dict[str, dict] = field(default_factory=dict)
    resolve: CompensatorResolver | None = None


COMPENSATORS: dict[str, CompensatorSpec] = {}
"""Compensators by name (``none``, ``goc``, ``taylor``, ...)."""


def register_compensator(
    name: str, config_cls: type, resolve: CompensatorResolver | None = None
) -> Callable[[type], type]:
    """Class decorator adding a compensator to :data:`COMPENSATORS` (one line per new compensator file).

    The config dataclass declares the method-string options: one per field (``taylor:order=2``), named by
    ``metadata["option"]`` where given (``goc:w=0.8``), converted by the field's type hint or
    ``metadata["parse"]``; a ``FLAGS`` class attribute adds options without a value (``goc:auto``). ``resolve``
    (optional) fills what the options need from the run when a method is resolved: GOC's published w and steps for
    its host schedule and its ``auto`` values from priors, TCC's pack (:class:`~goc_utils.cache.run.MethodContext`).

    Example (a compensator that returns half the previous output, usable as ``fora-50+half``):
        >>> @dataclass
        ... class HalfConfig:
        ...     factor: float = 0.5
        >>> @register_compensator("half", HalfConfig)
        ... class Half(ReuseCompensator):
        ...     def reuse(self, key, step):
        ...         return self.config.factor * super().reuse(key, step)
    """

    def add(cls: type) -> type:
        COMPENSATORS[name] = CompensatorSpec(
            config_cls, cls, config_options(config_cls), dict(getattr(config_cls, "FLAGS", {})), resolve
        )
        return cls

    return add


register_compensator("none", ReuseConfig)(ReuseCompensator)


def build_compensator(name: str, **options) -> Compensator:
    """Build a compensator by name from keyword options of its config dataclass.

    Example:
        >>> build_compensator("goc", weight=1.2, correction_steps=(3, 5, 7, 9)).name
        'goc'
    """
    if name not in COMPENSATORS:
        load_plugins()
    if name not in COMPENSATORS:
        raise InvalidArgumentError(f"unknown compensator {name!r}; choose one of: {', '.join(COMPENSATORS)}")
    spec = COMPENSATORS[name]
    try:
        config = spec.config_cls(**options)
    except TypeError as exc:
        raise InvalidArgumentError(f"bad options for compensator {name!r}: {exc}") from None
    return spec.build(config)
