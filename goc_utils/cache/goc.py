"""GOC's Cached Gradient Propagation (Qiu et al., ICCV 2025), with the reference semantics.

Per unit, a queue of the last two *used* outputs (used = computed, or reused-and-corrected).
At a reused unit at step ``s``:

* if ``s`` is a correction step and two outputs are queued:
  ``out = used[s-1] + w * (used[s-1] - used[s-2])``;
* otherwise ``out = used[s-1]`` (plain reuse);

and ``out`` is queued as ``used[s]``. With FORA's alternating pattern the "gradient"
``used[s-1] - used[s-2]`` is (fresh output) - (previous cached approximation). Steps not
listed in ``correction_steps`` are the inflection steps where the correction is skipped.

**Coupling.** In the published code (``DiTBlock.forward`` of the Learning-to-Cache + GOC path)
the correction is applied to a block's units only when *every* unit of the block (attention
and MLP) is reused at that step with two queued outputs; a reused unit whose partner is
recomputed is reused plain, and still queued as used. That is ``coupling="block"``, the default
for every host. ``coupling="unit"`` (our extension) corrects each reused unit on its own. FORA
reuses whole blocks, so both give the same result there; Learning-to-Cache's router reuses
units one by one, and there they differ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from goc_utils.cache.compensator import Compensator, UnitKey, register_compensator
from goc_utils.cache.options import parse_int_list
from goc_utils.cache.run import MethodContext
from goc_utils.cache.schedule import ScheduleError
from goc_utils.errors import InvalidArgumentError
from goc_utils.lists import plain_float

AUTO = "auto"


def _number_or_auto(text: str) -> float | str:
    return "auto" if text == "auto" else plain_float(text)


def _steps_or_auto(text: str) -> list[int] | str:
    return "auto" if text == "auto" else parse_int_list(text)


COUPLINGS = ("block", "unit")
"""GOC's coupling of the units of a block: ``block`` (published) or ``unit`` (per-unit extension)."""


@dataclass
class GOCConfig:
    """Options of the GOC compensator.

    Attributes:
        weight: w, the gradient weight. A float (the paper: 1.2 with FORA, 0.8 with
            Learning-to-Cache), a mapping ``step -> w`` (per-step weights), or an array
            ``(steps, depth, 2)`` (per-unit weights; our extension). Default 1.2.
        correction_steps: steps at which reused units are corrected (the paper's DDIM-20
            lists: ``(3, 5, 7, 9)`` for fora-25, ``(3, 5, 7, 9, 11, 13, 15, 19)`` for fora-50
            and L2C). None corrects at every reused step. ``"auto"`` (weight too) is resolved from
            priors when the engine is built (method strings: ``goc:auto``, ``goc:w=auto``, ``goc:steps=auto``).
        coupling: ``"block"`` (default, as published: a unit is corrected only when both units of its
            block are reused at the step with two queued outputs) or ``"unit"`` (each reused unit on
            its own; our extension).
    """

    weight: float | Mapping[int, float] | np.ndarray | str = field(
        default=1.2, metadata={"option": "w", "parse": _number_or_auto}
    )
    correction_steps: Sequence[int] | str | None = field(
        default=None, metadata={"option": "steps", "parse": _steps_or_auto}
    )
    coupling: str = "block"

    FLAGS: ClassVar[dict[str, dict]] = {"auto": {"weight": "auto", "correction_steps": "auto"}}
    """``goc:auto``: inflection-aware steps and least-squares w from priors."""

    def __post_init__(self) -> None:
        if isinstance(self.correction_steps, str):
            raise InvalidArgumentError(
                f"GOC correction steps {self.correction_steps!r} must be resolved to a list of steps first "
                "('auto' needs a priors file: see `goc priors`)"
            )
        if self.correction_steps is not None:
            steps = [int(s) for s in self.correction_steps]
            if any(s < 0 for s in steps):
                raise InvalidArgumentError(f"GOC correction steps must be >= 0 (got {list(self.correction_steps)})")
            self.correction_steps = tuple(sorted(set(steps)))
        if self.coupling not in COUPLINGS:
            raise InvalidArgumentError(f"GOC coupling must be one of {', '.join(COUPLINGS)} (got {self.coupling!r})")
        if isinstance(self.weight, (int, float)) and not np.isfinite(self.weight):
            raise InvalidArgumentError(f"GOC weight must be a finite number (got {self.weight})")

    def weight_at(self, step: int, key: UnitKey) -> float:
        """w for one unit at one step."""
        if isinstance(self.weight, Mapping):
            return float(self.weight.get(step, 0.0))
        if isinstance(self.weight, np.ndarray):
            return float(self.weight[step, key[0], key[1]])
        return float(self.weight)


def resolve_goc(options: dict, context: MethodContext) -> dict:
    """GOC's options for one run: a missing w / step list takes the host schedule's published value
    (``reference_weight`` / ``reference_correction_steps``), ``auto`` ones come from the run's priors
    (:meth:`~goc_utils.priors.stats.PriorStats.auto_goc`, the one place ``auto`` is resolved); steps outside the
    run are refused."""
    schedule, options = context.schedule, dict(options)
    options.setdefault("weight", schedule.reference_weight)
    options.setdefault("correction_steps", schedule.reference_correction_steps)
    if AUTO in options.values():
        priors = context.resources.load_priors()
        if priors is None:
            raise InvalidArgumentError(
                "GOC 'auto' steps / weight need a priors file: create one with `goc priors` (or pass --priors)"
            )
        coupling = options.get("coupling", "block")
        auto = priors.auto_goc(schedule, options["correction_steps"], options["weight"], coupling)
        options.update(correction_steps=auto.steps, weight=auto.weight)
    bad = [s for s in options.get("correction_steps") or () if not 0 <= int(s) < context.run.steps]
    if bad:
        raise ScheduleError(
            f"GOC correction step {bad[0]} is outside the run's steps 0..{context.run.steps - 1}; "
            "give goc:steps=... (--goc-steps) within them"
        )
    return options


@register_compensator("goc", GOCConfig, resolve_goc)
class GOCCompensator(Compensator):
    """Cached Gradient Propagation: reuse plus ``w`` times the last step-to-step change."""

    name = "goc"

    def __init__(self, config: GOCConfig | None = None) -> None:
        super().__init__()
        self.config = config or GOCConfig()
        steps = self.config.correction_steps
        self._correct = None if steps is None else frozenset(steps)
        self._block_coupled = self.config.coupling == "block"
        self._eligible = np.zeros(0, dtype=bool)  # (depth,) blocks whose units may be corrected at _plan_step
        self._plan_step = -1
        self._weights: dict[float, torch.Tensor] = {}  # w as 0-d tensors for the compiled graphs

    def reset(self) -> None:
        super().reset()
        self._plan_step = -1

    def start_step(self, step: int, recompute: np.ndarray) -> None:
        """With block coupling: mark the blocks whose units are all reused with two queued outputs."""
        if not self._block_coupled:
            return
        depth, units = recompute.shape
        self._plan_step = step
        self._eligible = np.array(
            [
                all(not recompute[b, u] and len(self.state.get((b, u), ())) == 2 for u in range(units))
                for b in range(depth)
            ]
        )

    def _queue(self, key: UnitKey, value: torch.Tensor) -> None:
        queue = self.state.setdefault(key, [])
        queue.append(value)
        if len(queue) > 2:
            del queue[0]

    def computed(self, key: UnitKey, step: int, value: torch.Tensor) -> None:
        self._queue(key, value)

    def _corrects(self, key: UnitKey, step: int) -> bool:
        """Whether the reuse of ``key`` at ``step`` is corrected (a correction step, the block coupling, two queued)."""
        corrects = self._correct is None or step in self._correct
        if corrects and self._block_coupled:
            if self._plan_step != step:
                raise RuntimeError(
                    f"GOC with block coupling needs the plan of step {step}: call start_step(step, recompute) "
                    "before reuse (the cache engine does)"
                )
            corrects = bool(self._eligible[key[0]])
        return corrects and len(self.state[key]) == 2

    def reuse(self, key: UnitKey, step: int) -> torch.Tensor:
        queue = self.state[key]
        previous = queue[-1]
        if self._corrects(key, step):
            out = previous + self.config.weight_at(step, key) * (previous - queue[0])
            self.note_correction(step, key)
        else:
            out = previous
        self._queue(key, out)
        return out

    def plan_reuse(self, key: UnitKey, step: int) -> tuple[str, tuple]:
        """The reuse as a recipe for the compiled graph: ``extrapolate`` (with w as a 0-d tensor) or ``same``."""
        queue = self.state[key]
        if not self._corrects(key, step):
            return "same", (queue[-1],)
        self.note_correction(step, key)
        w = self.config.weight_at(step, key)
        weight = self._weights.get(w)
        if weight is None or weight.device != queue[-1].device or weight.dtype != queue[-1].dtype:
            weight = self._weights[w] = torch.tensor(w, dtype=queue[-1].dtype, device=queue[-1].device)
        return "extrapolate", (queue[-1], queue[0], weight)

    def commit_reuse(self, key: UnitKey, step: int, value: torch.Tensor) -> None:
        self._queue(key, value)
