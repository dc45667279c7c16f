"""Taylor-series forecast of a reused unit (TaylorSeer-style), for comparison with GOC.

From the last ``order + 1`` *computed* outputs ``F(s_0), ..., F(s_k)`` (k = order) the
derivatives at the latest computed step ``s_k`` are estimated by divided differences, and
the reused step ``s`` gets the truncated Taylor series

    F(s) ~= sum_{i=0..k} f[s_k, ..., s_{k-i}] * (s - s_k) ** i

where ``f[...]`` is the i-th divided difference (the i-th derivative estimate over i!).
With fewer computed outputs than ``order + 1`` the highest available order is used;
order 0 is plain reuse. Reused (forecast) outputs are never fed back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from goc_utils.cache.compensator import Compensator, UnitKey, register_compensator
from goc_utils.errors import InvalidArgumentError


@dataclass
class TaylorConfig:
    """Options of the Taylor compensator.

    Attributes:
        order: k, the order of the forecast (0 = plain reuse, 1 = linear, 2 = quadratic).
            Keeps k + 1 computed outputs per reused unit. Default 1.
    """

    order: int = field(default=1, metadata={"option": "k"})

    def __post_init__(self) -> None:
        if int(self.order) < 0:
            raise InvalidArgumentError(f"Taylor order must be >= 0 (got {self.order})")
        self.order = int(self.order)


@register_compensator("taylor", TaylorConfig)
class TaylorCompensator(Compensator):
    """Forecast reused units from a divided-difference Taylor expansion of computed outputs."""

    name = "taylor"

    def __init__(self, config: TaylorConfig | None = None) -> None:
        super().__init__()
        self.config = config or TaylorConfig()

    def computed(self, key: UnitKey, step: int, value: torch.Tensor) -> None:
        history = self.state.setdefault(key, [])
        history.append((step, value))
        if len(history) > self.config.order + 1:
            del history[0]

    def reuse(self, key: UnitKey, step: int) -> torch.Tensor:
        history = self.state[key]
        steps = [s for s, _ in history]
        # Newton divided differences anchored at the latest computed step.
        table = [value for _, value in history]
        last_step, out = steps[-1], table[-1]
        if len(table) > 1:
            self.note_correction(step, key)
        for order in range(1, len(table)):
            table = [(table[i + 1] - table[i]) / float(steps[i + order] - steps[i]) for i in range(len(table) - 1)]
            out = out + table[-1] * float(step - last_step) ** order
        return out
