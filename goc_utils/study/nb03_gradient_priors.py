"""Notebook 03 (gradient priors): the inflection-aware steps and least-squares w per host schedule, and GOC
replayed on the prior trajectory."""

from __future__ import annotations

from collections.abc import Sequence

from goc_utils.cache import Resources, RunShape, resolve_method, without_router
from goc_utils.cache.l2c import default_router
from goc_utils.evaluation.tables import show_table, write_table
from goc_utils.priors.auto import auto_goc, unit_macs_weights
from goc_utils.study.params import StudyParams, load_or_extract_priors
from goc_utils.study.viz import goc_simulation_plot

__all__ = [  # what notebook 03 uses
    "StudyParams",
    "default_router",
    "goc_on_priors_figure",
    "inflection_table",
    "load_or_extract_priors",
    "show_table",
    "write_table",
]


def inflection_table(
    stats,
    schedules: Sequence[str] = ("fora-25", "fora-50", "l2c"),
    router: str | None = None,
    sources: Sequence[str] = ("samples", "mean"),
    coupling: str = "block",
):
    """Per host schedule and replayed trajectory: automatic correction steps and weight vs the paper's.

    ``sources``: ``samples`` (GOC replayed on every prior sample's own trajectory, the default
    rule) and ``mean`` (on the class-averaged trajectory, the paper's prior knowledge); ``samples``
    is skipped for files without per-sample statistics. Rows hold the predicted (MACs-weighted
    relative L2) error of plain reuse, of GOC with the paper's steps and w, and of GOC with the
    inflection-aware steps and least-squares w. Schedules needing a router are skipped without one.
    """
    rows = []
    for source in sources:
        if source == "samples" and not stats.has_gram:
            continue
        for name in without_router(list(schedules), router)[0]:
            schedule = resolve_method(name, RunShape(stats.steps, stats.depth), Resources(router)).schedule
            auto = auto_goc(stats, schedule, source=source, coupling=coupling)
            rows.append(
                {
                    "schedule": name,
                    "replayed on": "per-sample trajectories" if source == "samples" else "class-mean trajectory",
                    "paper steps": ",".join(map(str, schedule.reference_correction_steps or ())),
                    "paper w": schedule.reference_weight,
                    "auto steps": ",".join(map(str, auto.steps)),
                    "inflections": ",".join(map(str, auto.inflections)),
                    "auto w": round(auto.weight, 3),
                    "error plain": round(auto.error_plain, 3),
                    "error paper GOC": round(auto.error_paper, 3),
                    "error auto GOC": round(auto.error_auto, 3),
                }
            )
    return rows


def goc_on_priors_figure(stats, schedule_name: str, router: str | None = None):
    """:func:`goc_utils.study.viz.goc_simulation_plot` for the automatic steps and weight of a host schedule."""
    schedule = resolve_method(schedule_name, RunShape(stats.steps, stats.depth), Resources(router)).schedule
    auto = auto_goc(stats, schedule)
    return goc_simulation_plot(
        auto.probe_simulation,
        f"{schedule_name}: GOC on the prior trajectory, w = {auto.probe:.2f} (red: inflection steps)",
        unit_macs_weights(stats),
    )
