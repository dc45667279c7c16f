"""Notebook 04 (FORA / L2C with and without GOC): the methods a notebook can run, and their cost table."""

from __future__ import annotations

from goc_utils.cache import ResolvedMethod, Resources, RunShape, resolve_method, split_methods, without_router
from goc_utils.cache.l2c import default_router
from goc_utils.evaluation.bench import same_noise_runs
from goc_utils.evaluation.tables import show_table, write_table
from goc_utils.model.sampler import parse_classes
from goc_utils.priors.stats import PriorStats, default_priors_path
from goc_utils.study.params import StudyParams

__all__ = [  # what notebook 04 uses
    "PriorStats",
    "StudyParams",
    "default_priors_path",
    "default_router",
    "method_table",
    "notebook_methods",
    "parse_classes",
    "same_noise_runs",
    "show_table",
    "write_table",
]



def notebook_methods(methods: str, model, p: StudyParams, router: str | None, priors) -> list[ResolvedMethod]:
    """The methods a notebook can run, resolved once for ``model`` and the notebook's parameters: those needing a
    router are dropped without one, ``auto`` ones without priors; smoke mode keeps the fora-50 ones."""
    wanted = without_router(split_methods(methods), router, priors is not None)[0]
    wanted = [m for m in wanted if "fora-50" in m] if p.smoke else wanted
    resources = Resources(router, priors=priors, model=p.model, cfg_scale=p.cfg_scale)
    return [resolve_method(m, RunShape.of(model, p.steps), resources) for m in wanted]


def method_table(results: dict, errors: dict, costs: dict) -> list[dict]:
    """Cache ratio (units, MACs), theoretical speedup (the compensator's own MACs included) and final RMSE vs no
    cache for each method, from :func:`same_noise_runs`' results, errors and costs."""
    return [
        {
            "method": method,
            "cached units": f"{100 * costs[method]['cache_ratio']:.1f}%",
            "cached MACs": f"{100 * costs[method]['cache_ratio_macs']:.1f}%",
            "theoretical speedup": f"{costs[method]['macs_speedup']:.3f}x",
            "final RMSE vs none": f"{float(errors[method][-1]):#.3g}",
        }
        for method in results
    ]
