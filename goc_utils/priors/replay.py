"""GOC's queue replayed on prior trajectories (:func:`simulate_goc`): the expected error of plain reuse and
of GOC at every reused unit, without sampling, from a priors file's per-sample Gram matrices (default) or
its class-mean trajectory (the paper's prior knowledge)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from goc_utils.cache.goc import COUPLINGS
from goc_utils.cache.schedule import CacheSchedule
from goc_utils.errors import InvalidArgumentError


class Trajectories(Protocol):
    """What a replay reads from prior statistics (:class:`~goc_utils.priors.stats.PriorStats` provides it)."""

    steps: int
    depth: int
    tokens: int
    hidden: int

    @property
    def has_gram(self) -> bool: ...

    def gram(self, source: str = "samples") -> np.ndarray:
        """``(steps, steps, depth, 2)`` expected inner products of the two units' features across steps."""
        ...


@dataclass
class Simulation:
    """GOC's queue replayed on the prior trajectories of the two units (see :func:`simulate_goc`).

    Attributes:
        reused: ``(steps, depth, 2)`` True where the schedule reuses the unit.
        error_plain: relative L2 error ``||F_s - used[s-1]|| / ||F_s||`` at reused units, NaN elsewhere
            (root mean square over samples relative to the root mean square of ``F_s`` for ``samples``).
        error_goc: the same for the GOC output ``used[s-1] + w (used[s-1] - used[s-2])`` (NaN when only
            one value is queued).
        corrected: ``(steps,)`` the correction decision used for the queue at each step.
    """

    reused: np.ndarray
    error_plain: np.ndarray
    error_goc: np.ndarray
    corrected: np.ndarray
    terms: dict = field(repr=False, default_factory=dict)
    weights: np.ndarray | None = field(repr=False, default=None)


def simulate_goc(
    stats: Trajectories,
    schedule: CacheSchedule,
    weight: float | np.ndarray = 1.2,
    correction_steps: Sequence[int] | None = None,
    decide: bool = False,
    unit_weights: tuple[float, float] = (1.0, 1.0),
    fit_step_weights: bool = False,
    source: str | None = None,
    coupling: str = "block",
) -> Simulation:
    """Replay GOC's queue on the prior trajectories of the attention / MLP units.

    Every value in the queue is a linear combination of the un-cached features ``F_t`` of
    the same sample, so the replay runs on coefficient vectors ``c`` (length = steps) and a
    squared error is ``c^T K c`` with ``K = stats.gram(source)``: with ``source="samples"``
    (default when the file has it) the mean per-sample squared error, with ``"mean"`` the error
    on the class-averaged mean trajectory (the paper's prior knowledge).

    ``weight``: a float, or an array ``(steps, depth, 2)``. With ``decide`` the correction
    at each reused step is chosen greedily, in step order, where it lowers the
    ``unit_weights``-weighted (e.g. MACs) sum of relative errors over the step's reused
    units given the queue so far; otherwise ``correction_steps`` (None = every reused step).
    ``coupling`` follows the compensator (:class:`~goc_utils.cache.goc.GOCConfig`): with ``"block"``
    (published) a reused unit is a correction candidate only when every unit of its block is reused
    at the step with two queued values; the others are reused plain (and queued). ``terms`` holds,
    per correction candidate (step, block, unit), the least-squares terms
    ``a = <F - P, P - Q> / ||F||^2`` and ``c = ||P - Q||^2 / ||F||^2`` used by :func:`calibrate_weight`.

    Example (two steps of one unit, then a reused step): with ``F_0 = (1, 0)``, ``F_1 = (1, 1)`` and
    ``F_2 = (1, 2)``, the queue at step 2 holds ``P = F_1`` and ``Q = F_0``; plain reuse errs by
    ``||F_2 - F_1|| / ||F_2|| = 1 / sqrt(5)``, GOC with w = 1 returns ``2 F_1 - F_0 = (1, 2) = F_2``
    exactly (error 0), and the least-squares terms are ``a = c = 1 / 5`` (so w* = 1). In coefficient
    space the queue values are ``P = e_1``, ``Q = e_0`` and the GOC output ``e_1 + w (e_1 - e_0)``.
    """
    schedule.check_fits(stats.steps, stats.depth)
    if coupling not in COUPLINGS:
        raise InvalidArgumentError(f"GOC coupling must be one of {', '.join(COUPLINGS)} (got {coupling!r})")
    source = source or ("samples" if stats.has_gram else "mean")
    gram = stats.gram(source)
    reused = ~schedule.mask
    steps, depth = stats.steps, stats.depth
    eye = np.eye(steps)
    w = np.broadcast_to(np.asarray(weight, dtype=np.float64), (steps, depth, 2)).copy()
    err_plain = np.full((steps, depth, 2), np.nan)
    err_goc = np.full((steps, depth, 2), np.nan)
    corrected = np.zeros(steps, dtype=bool)
    queue: dict[tuple[int, int], list[np.ndarray]] = {}
    terms: dict[tuple[int, int, int], tuple[float, float]] = {}
    uw = np.asarray(unit_weights, dtype=np.float64)
    wanted = None if correction_steps is None else {int(c) for c in correction_steps}
    for s in range(steps):
        candidates = {}
        for b in range(depth):
            block_ok = all(reused[s, b, u] and len(queue.get((b, u), ())) == 2 for u in range(2))
            for u in range(2):
                if not reused[s, b, u]:
                    continue
                k = gram[:, :, b, u]
                q = queue[(b, u)]
                norm2 = max(k[s, s], 1e-30)
                residual = eye[s] - q[-1]  # F_s - used[s-1]
                err_plain[s, b, u] = np.sqrt(max(residual @ k @ residual, 0.0) / norm2)
                if len(q) == 2 and (coupling == "unit" or block_ok):
                    diff = q[-1] - q[-2]
                    terms[(s, b, u)] = (float(residual @ k @ diff) / norm2, float(diff @ k @ diff) / norm2)
                    candidates[(b, u)] = (residual, diff, k, norm2)
        if fit_step_weights and candidates and (wanted is None or s in wanted):
            num = sum(uw[u] * terms[(s, b, u)][0] for (b, u) in candidates)
            den = sum(uw[u] * terms[(s, b, u)][1] for (b, u) in candidates)
            w[s] = num / den if den > 0 else 0.0
        for (b, u), (residual, diff, k, norm2) in list(candidates.items()):
            left = residual - w[s, b, u] * diff
            err_goc[s, b, u] = np.sqrt(max(left @ k @ left, 0.0) / norm2)
            candidates[(b, u)] = queue[(b, u)][-1] + w[s, b, u] * diff
        if candidates:
            if decide:
                gain = sum(uw[u] * (err_plain[s, b, u] - err_goc[s, b, u]) for (b, u) in candidates)
                corrected[s] = gain > 0
            else:
                corrected[s] = wanted is None or s in wanted
        for b in range(depth):
            for u in range(2):
                if reused[s, b, u]:
                    value = candidates[(b, u)] if corrected[s] and (b, u) in candidates else queue[(b, u)][-1]
                else:
                    value = eye[s]
                q = queue.setdefault((b, u), [])
                q.append(value)
                if len(q) > 2:
                    del q[0]
    return Simulation(reused, err_plain, err_goc, corrected, terms, w)


def weighted_error(sim: Simulation, unit_weights: tuple[float, float] = (1.0, 1.0)) -> tuple[float, float]:
    """Total (plain, GOC-as-decided) error over reused units, weighted per unit kind."""
    uw = np.asarray(unit_weights)[None, None, :]
    plain = np.nansum(np.where(sim.reused, sim.error_plain, 0) * uw)
    used = np.where(sim.corrected[:, None, None] & ~np.isnan(sim.error_goc), sim.error_goc, sim.error_plain)
    return float(plain), float(np.nansum(np.where(sim.reused, used, 0) * uw))
