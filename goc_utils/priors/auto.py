"""Automatic GOC from a priors file: the inflection-aware correction steps (:func:`inflection_steps`), the
least-squares w (:func:`calibrate_weight`) and both together for a host schedule (:func:`auto_goc`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from goc_utils.cache.schedule import CacheSchedule
from goc_utils.errors import InvalidArgumentError
from goc_utils.model.macs import branch_macs
from goc_utils.priors.replay import Simulation, Trajectories, simulate_goc, weighted_error


def inflection_steps(
    stats: Trajectories,
    schedule: CacheSchedule,
    weight: float | np.ndarray = 1.2,
    unit_weights: tuple[float, float] = (1.0, 1.0),
    source: str | None = None,
    coupling: str = "block",
) -> tuple[list[int], list[int], Simulation]:
    """The inflection-aware rule: ``(correction steps, inflection steps, simulation)``.

    Replaying GOC on the prior trajectory in step order, a reused step is corrected where
    the correction lowers the MACs-weighted relative error of that step's correction
    candidates (the trajectory keeps its direction), and skipped otherwise: the skipped steps
    with correction candidates are the inflection steps. ``coupling``: see :func:`simulate_goc`.
    """
    sim = simulate_goc(
        stats, schedule, weight, decide=True, unit_weights=unit_weights, source=source, coupling=coupling
    )
    correctable = sorted({s for (s, _, _) in sim.terms})
    correct = [s for s in correctable if sim.corrected[s]]
    return correct, [s for s in correctable if not sim.corrected[s]], sim


def calibrate_weight(
    stats: Trajectories,
    schedule: CacheSchedule,
    correction_steps: Sequence[int] | None = None,
    granularity: str = "global",
    unit_weights: tuple[float, float] = (1.0, 1.0),
    initial: float = 1.0,
    iterations: int = 8,
    source: str | None = None,
    coupling: str = "block",
) -> float | np.ndarray:
    """Least-squares GOC weight on the prior trajectory.

    At a corrected unit with queue ``(P, Q)`` and target ``F`` the error
    ``||F - P - w (P - Q)||^2 / ||F||^2`` is quadratic in w, so the minimiser is
    ``w* = sum a / sum c`` (terms of :class:`Simulation`), summed over all corrected
    units (``global``), per step (``step``) or per unit (``unit``), weighted by
    ``unit_weights``. Because the queue holds corrected values, per-step weights are fitted
    sequentially in step order (exact), and global / per-unit weights by ``iterations``
    fixed-point rounds from ``initial`` on the queue the fitted weight produces.
    Returns a float (global) or an array ``(steps, depth, 2)`` (step / unit; 0 where nothing is corrected).
    ``source`` and ``coupling``: the trajectories replayed and which units GOC corrects (see :func:`simulate_goc`).
    """
    if granularity not in GRANULARITIES:
        raise InvalidArgumentError(f"granularity must be global, step or unit (got {granularity!r})")
    replay = {"source": source, "coupling": coupling}
    if granularity == "step":
        sim = simulate_goc(
            stats, schedule, 0.0, correction_steps, unit_weights=unit_weights, fit_step_weights=True, **replay
        )
        return np.where(sim.corrected[:, None, None], sim.weights, 0.0)
    weight: float | np.ndarray = initial
    for _ in range(iterations):
        sim = simulate_goc(stats, schedule, weight, correction_steps, **replay)
        steps_used = {s for s in range(stats.steps) if sim.corrected[s]}
        num = np.zeros((stats.steps, stats.depth, 2))
        den = np.zeros((stats.steps, stats.depth, 2))
        for (s, b, u), (a, c) in sim.terms.items():
            if s in steps_used:
                num[s, b, u] += unit_weights[u] * a
                den[s, b, u] += unit_weights[u] * c
        if granularity == "global":
            weight = float(num.sum() / den.sum()) if den.sum() > 0 else initial
        else:  # one w per unit, shared by its corrected steps
            per_unit = np.divide(num.sum(0), den.sum(0), out=np.zeros(num.shape[1:]), where=den.sum(0) > 0)
            weight = np.broadcast_to(per_unit, num.shape).copy()
    return weight


GRANULARITIES = ("global", "step", "unit")


def unit_macs_weights(stats: Trajectories) -> tuple[float, float]:
    """``(attention, MLP)`` branch MACs of the priors' model, normalised to the attention branch."""
    attention, mlp = branch_macs(stats.tokens, stats.hidden)
    return 1.0, mlp / attention


@dataclass
class AutoGOC:
    """What :func:`auto_goc` resolved, with the replay's predicted errors.

    Attributes:
        steps: the correction steps (inflection-aware, or the ones given).
        inflections: reused steps with correction candidates where the correction is skipped.
        weight: w (a float, or an array ``(steps, depth, 2)`` for ``step`` / ``unit`` granularity).
        probe: the w used to locate the inflections.
        error_plain, error_auto, error_paper: predicted error (MACs-weighted relative L2, summed over
            reused units) of plain reuse, of GOC with ``steps`` / ``weight``, and of GOC with the
            schedule's published steps and w (NaN when the schedule has no published steps).
        source: the trajectories replayed (``samples`` or ``mean``); coupling: as the compensator.
        probe_simulation: the replay that located the inflections (what the priors figure plots).
    """

    steps: list[int]
    inflections: list[int]
    weight: float | np.ndarray
    probe: float | np.ndarray
    error_plain: float
    error_auto: float
    error_paper: float
    source: str
    coupling: str
    probe_simulation: Simulation = field(repr=False)


def auto_goc(
    stats: Trajectories,
    schedule: CacheSchedule,
    steps: str | Sequence[int] | None = "auto",
    weight: str | float | np.ndarray = "auto",
    coupling: str = "block",
    granularity: str = "global",
    source: str | None = None,
) -> AutoGOC:
    """Automatic GOC from priors: inflection-aware correction steps and the least-squares weight.

    The one place where GOC's ``"auto"`` options are resolved (method strings ``+goc:auto``,
    ``goc inflections``, the study's tables and figures):

    1. the probe weight is ``weight`` when it is a number, else the global least-squares w over
       every reused step;
    2. ``steps="auto"``: replaying GOC with the probe in step order, a step is corrected where the
       correction lowers the predicted error (:func:`inflection_steps`); the skipped ones are the
       inflections. Otherwise the given steps (None = every reused step) are kept;
    3. ``weight="auto"``: the least-squares w over the chosen steps, at ``granularity``;
    4. the predicted errors of plain reuse, of the result, and of the schedule's published steps and w.

    Errors are MACs-weighted (an MLP branch counts by its MACs relative to an attention branch).

    Example:
        >>> from goc_utils.cache import build_schedule
        >>> from goc_utils.paths import DATA_DIR
        >>> from goc_utils.priors.stats import PriorStats
        >>> stats = PriorStats.load(DATA_DIR / "priors" / "tiny-digits_ddim20_cfg4.safetensors")
        >>> auto = auto_goc(stats, build_schedule("fora-50", 20, stats.depth))
        >>> auto.error_auto < auto.error_plain
        True
    """
    uw = unit_macs_weights(stats)
    source = source or ("samples" if stats.has_gram else "mean")
    replay = {"source": source, "coupling": coupling}
    if isinstance(weight, str):
        if weight != "auto":
            raise InvalidArgumentError(f"GOC weight must be a number or 'auto' (got {weight!r})")
        probe = calibrate_weight(stats, schedule, None, "global", uw, **replay)
    else:
        probe = weight
    if isinstance(steps, str):
        if steps != "auto":
            raise InvalidArgumentError(f"GOC correction steps must be a list of steps or 'auto' (got {steps!r})")
        chosen, inflections, probe_sim = inflection_steps(stats, schedule, probe, uw, **replay)
    else:
        chosen = None if steps is None else [int(s) for s in steps]
        inflections = []
        probe_sim = simulate_goc(stats, schedule, probe, chosen, **replay)
    final = calibrate_weight(stats, schedule, chosen, granularity, uw, **replay) if isinstance(weight, str) else probe
    plain, auto = weighted_error(simulate_goc(stats, schedule, final, chosen, **replay), uw)
    paper = float("nan")
    if schedule.reference_correction_steps is not None:
        sim = simulate_goc(stats, schedule, schedule.reference_weight, schedule.reference_correction_steps, **replay)
        paper = weighted_error(sim, uw)[1]
    steps_out = list(chosen) if chosen is not None else sorted({s for (s, _, _) in probe_sim.terms})
    return AutoGOC(steps_out, inflections, final, probe, plain, auto, paper, source, coupling, probe_sim)
