"""The paper's claims tested one by one on sampled images (notebook 08, ``make ablations``).

Every point is a ``goc eval`` run (:func:`goc_utils.evaluation.eval.run_eval`): the same per-sample noise for every
method, resumable under ``runs/``, scored with FID (digits features, bootstrap spread) and PSNR vs the un-cached
samples. Where fidelity is the verdict 500 samples per point are used (``runs/ablations/``); where FID is, 2,000
(``runs/eval/<model>/``, shared with ``make eval-tiny`` and notebook 05).

* :func:`weight_sweep`: GOC's w from 0 to 2 on FORA-50 and L2C (published steps), with the paper's w and the
  least-squares w marked;
* :func:`ratio_methods`: FORA intervals 2 / 3 / 4 and three L2C thresholds, each plain / +goc / +goc:auto / +taylor;
* :func:`inflection_methods`: each published correction step left out in turn, each skipped reused step added in turn;
* :func:`replay_predictions`: the priors replay's predicted error of every configuration, to set against the
  measured one (:func:`rank_correlation`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import spearmanr

from goc_utils.cache.method import CacheMethod
from goc_utils.priors.stats import PriorStats, simulate_goc, unit_macs_weights, weighted_error

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
"""The w grid of the weight sweep (the paper's 1.2 / 0.8 and the least-squares w are added)."""
HOSTS = {"fora-50": 1.2, "l2c": 0.8}
"""Hosts of the weight sweep and the inflection ablation, with the paper's w."""
RATIO_HOSTS = ("fora:interval=2", "fora:interval=3", "fora:interval=4", "l2c", "l2c@0.3", "l2c@0.5")
"""Cache ratios: FORA reusing 50 / 65 / 75 % of the steps, and the tiny L2C router at three thresholds."""
COMPENSATORS = ("", "+goc", "+goc:auto", "+taylor")


def weight_methods(smoke: bool = False) -> list[str]:
    """``none``, then per host: the w grid, the paper's w (the bare ``host+goc``) and ``goc:w=auto``."""
    grid = (0.0, 1.0, 2.0) if smoke else WEIGHTS
    methods = ["none"]
    for host in HOSTS:
        methods += [f"{host}+goc:w={w:g}" for w in grid] + [f"{host}+goc", f"{host}+goc:w=auto"]
    return methods


def ratio_methods(smoke: bool = False) -> list[str]:
    hosts = RATIO_HOSTS[:1] + RATIO_HOSTS[3:4] if smoke else RATIO_HOSTS
    return ["none"] + [host + comp for host in hosts for comp in COMPENSATORS]


def inflection_methods(depth: int, steps: int = 20, smoke: bool = False) -> list[tuple[str, str, str, int]]:
    """``(host, method, "without" | "with", step)``: each published correction step left out in turn, each
    skipped reused step (FORA-50 and L2C reuse at odd steps) added in turn."""
    published = list(CacheMethod.parse("fora-50").build_schedule(steps, depth).reference_correction_steps or ())
    runs = []
    for host in HOSTS:
        runs += [(host, f"{host}+goc:steps={_steps([x for x in published if x != s])}", "without", s)
                 for s in published]  # fmt: skip
        runs += [(host, f"{host}+goc:steps={_steps(sorted({*published, s}))}", "with", s)
                 for s in range(1, steps, 2) if s not in published]  # fmt: skip
    return [r for r in runs if r[3] in (3, 17)] if smoke else runs


def _steps(values: Sequence[int]) -> str:
    return ",".join(str(v) for v in values)


def replay_predictions(methods: Sequence[str], stats: PriorStats, steps: int, depth: int, router: str) -> dict:
    """Predicted MACs-weighted error of each method from the priors replay (None for Taylor and ``none``)."""
    uw = unit_macs_weights(stats)
    out: dict[str, float | None] = {}
    for text in methods:
        method = CacheMethod.parse(text, router=router)
        if method.schedule == "none" or method.compensator not in ("none", "goc"):
            out[text] = None
            continue
        schedule = method.build_schedule(steps, depth)
        if method.compensator == "none":
            sim = simulate_goc(stats, schedule, 0.0, [], unit_weights=uw)
            out[text] = weighted_error(sim, uw)[0]
            continue
        engine = method.engine(_Depth(depth), steps, stats)  # resolves the published / auto options
        config = engine.compensator.config
        sim = simulate_goc(stats, schedule, config.weight, config.correction_steps, unit_weights=uw,
                           coupling=config.coupling)  # fmt: skip
        out[text] = weighted_error(sim, uw)[1]
    return out


class _Depth:
    def __init__(self, depth: int) -> None:
        self.depth = depth


def rank_correlation(predicted: dict, rows: Sequence[dict]) -> tuple[float, int]:
    """Spearman's rho between the predicted error and the measured MSE vs un-cached (from PSNR), and n."""
    pairs = [(predicted[r["method"]], 10 ** (-r["psnr_vs_none"] / 10)) for r in rows
             if predicted.get(r["method"]) is not None and np.isfinite(r["psnr_vs_none"])]  # fmt: skip
    if len(pairs) < 3:
        return float("nan"), len(pairs)
    rho = spearmanr([p for p, _ in pairs], [m for _, m in pairs]).statistic
    return float(rho), len(pairs)
