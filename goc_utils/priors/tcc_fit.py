"""Fitting a TCC pack (:mod:`goc_utils.cache.tcc`) from the project's own same-noise sampling.

For every sample (``per_class`` samples of each class, sample ``i``'s noise from its own generator,
:func:`~goc_utils.model.sampler.sample_seed` of ``seed`` and ``i``) the same noise is sampled twice,
un-cached (A) and under the host schedule (B). At a target step the cached run's reused units
return the stale output of the last step that computed them (the published collector rolls its
cached line back to that refresh step; replaying from the noise gives the same stale outputs);
A's and B's raw branch outputs of the conditional half are paired there and streamed into one
:class:`~goc_utils.cache.tcc.SimilarityStats` per (block, unit).

**Trajectory-consistent.** Targets are fitted in order: the cached run of target k applies the
maps already fitted for the earlier targets (with ``alpha``), so each map sees the inputs it will
meet at sampling time. Every target therefore needs its own pass over the samples, each run stopped
after its target step: about ``2 * sum(target + 1)`` model calls per sample (40 for the published
DDIM-20 window 1, 3, 5, 7). Memory is the statistics (per unit C x D class sums, or D x D moments)
and one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from goc_utils.cache.compensator import ReuseCompensator
from goc_utils.cache.engine import CacheEngine
from goc_utils.cache.method import ResolvedMethod, resolve_method
from goc_utils.cache.run import Resources, RunShape
from goc_utils.cache.schedule import CacheSchedule, none_schedule
from goc_utils.cache.tcc import (
    PUBLISHED_ALPHA,
    PUBLISHED_WINDOW,
    SimilarityStats,
    TCCCompensator,
    TCCConfig,
    TCCPack,
    fit_similarity,
)
from goc_utils.errors import InvalidArgumentError
from goc_utils.model.dit import DiT
from goc_utils.model.sampler import generate, sample_seed


class _StopSampling(Exception):
    """Raised by the step callback once the run has passed the step it was started for."""


def default_targets(schedule: CacheSchedule) -> list[int]:
    """The published window: the host's reuse steps within steps 1..7 (DDIM-20 reverse steps 18..12)."""
    low, high = PUBLISHED_WINDOW
    return [s for s in schedule.reuse_steps() if low <= s <= high]


@dataclass(frozen=True)
class TCCFit:
    """What a pack is fitted from.

    Attributes:
        model_name: the preset the pack is for (recorded in it). classes / per_class: ``per_class`` samples of each.
        steps, cfg_scale: the runs the pack serves. seed: the noise (default 1: not the evaluation runs' 0).
        targets: the corrected steps (None: :func:`default_targets`). alpha: the strength of the earlier targets'
            corrections in the replay (use the alpha you will sample with). pooling / variant / svd: see
            :mod:`goc_utils.cache.tcc`. batch_size: samples per forward.
    """

    model_name: str
    classes: Sequence[int]
    per_class: int
    steps: int = 20
    cfg_scale: float = 1.5
    seed: int = 1
    targets: Sequence[int] | None = None
    alpha: float = PUBLISHED_ALPHA
    pooling: str = "class"
    variant: str = "full"
    svd: str = "gesdd"
    batch_size: int = 64


def host_method(model: DiT, host: str | ResolvedMethod, fit: TCCFit, resources: Resources | None = None):
    """``host`` resolved for the fit's runs; one line unless it is a plain schedule (no compensator)."""
    method = resolve_method(host, RunShape.of(model, fit.steps), resources)
    if method.compensator != "none":
        raise InvalidArgumentError(
            f"--host {method.text!r} must be a plain schedule (fora-50, l2c, ...): the pack is fitted for its stale "
            "outputs"
        )
    return method


def fit_tcc_pack(
    model: DiT, host: str | ResolvedMethod, fit: TCCFit, resources: Resources | None = None, progress: bool = True
) -> TCCPack:
    """Fit the maps of ``host`` (a plain schedule's method string, resolved with ``resources``: an ``l2c`` router)
    at ``fit.targets`` (default: :func:`default_targets`). Same arguments, same bytes on the CPU."""
    method = host_method(model, host, fit, resources)
    schedule, host, steps, cfg_scale = method.schedule, method.text, fit.steps, fit.cfg_scale
    classes, per_class, batch_size = fit.classes, fit.per_class, fit.batch_size
    targets = sorted({int(t) for t in (default_targets(schedule) if fit.targets is None else fit.targets)})
    reused = set(schedule.reuse_steps())
    if not targets or any(t not in reused for t in targets):
        bad = [t for t in targets if t not in reused]
        raise InvalidArgumentError(
            f"TCC target steps must be steps where {host!r} reuses units (its reuse steps: "
            f"{sorted(reused)}); {'no target given' if not targets else f'{bad[0]} is not one'}"
        )
    if per_class < 1 or batch_size < 1:
        raise InvalidArgumentError(f"--per-class and --batch-size must be >= 1 (got {per_class} and {batch_size})")
    bad_class = [c for c in classes if not 0 <= int(c) < model.num_classes]
    if bad_class or not classes:
        raise InvalidArgumentError(
            f"TCC fit classes must be 0..{model.num_classes - 1} and not empty "
            f"({'none given' if not classes else f'got {bad_class[0]}'}); give --classes within them"
        )
    labels = [int(c) for c in classes for _ in range(per_class)]
    noise = torch.stack([
        torch.randn(model.in_channels, model.input_size, model.input_size,
                    generator=torch.Generator().manual_seed(sample_seed(fit.seed, i)))
        for i in range(len(labels))
    ])  # fmt: skip
    device = next(model.parameters()).device
    depth, hidden, k = model.depth, model.hidden_size, len(targets)
    fitted = {name: np.zeros(shape) for name, shape in (
        ("R", (k, depth, 2, hidden, hidden)), ("s", (k, depth, 2)), ("mu_a", (k, depth, 2, hidden)),
        ("mu_b", (k, depth, 2, hidden)), ("rank", (k, depth, 2)),
    )}  # fmt: skip
    pooling, variant, svd = fit.pooling, fit.variant, fit.svd
    pack = TCCPack(
        fit.model_name, steps, float(cfg_scale), host, schedule.mask.copy(), targets,
        *(torch.zeros(0) for _ in range(5)), variant, pooling, svd, float(fit.alpha), len(labels),
        sorted({int(c) for c in classes}), int(fit.seed),
    )  # fmt: skip
    for index, target in enumerate(targets):
        stats = {(b, u): SimilarityStats(hidden, pooling, model.num_classes) for b in range(depth) for u in range(2)}
        partial = _partial(pack, fitted, index)
        batches = range(0, len(labels), batch_size)
        for start in tqdm(batches, desc=f"tcc pack {host} step {target}", disable=not progress):
            batch_labels = labels[start : start + batch_size]
            batch_noise = noise[start : start + batch_size].to(device)
            plain = CacheEngine(none_schedule(steps, depth), ReuseCompensator(), model=model)
            fresh = _outputs(model, plain, batch_labels, batch_noise, target, fit)
            cached = CacheEngine(schedule, TCCCompensator(TCCConfig(alpha=fit.alpha, pack=partial)), model=model)
            stale = _outputs(model, cached, batch_labels, batch_noise, target, fit)
            y = torch.tensor(batch_labels)
            for key, unit_stats in stats.items():
                unit_stats.add(fresh[key], stale[key], y)
        for (b, u), unit_stats in stats.items():
            for name, value in fit_similarity(unit_stats, variant, svd).items():
                fitted[name][index, b, u] = value
    return _partial(pack, fitted, len(targets))


def _partial(pack: TCCPack, fitted: dict[str, np.ndarray], count: int) -> TCCPack:
    """``pack`` holding its first ``count`` fitted targets (float32 maps)."""
    maps = {name: torch.from_numpy(fitted[name][:count]).float() for name in ("R", "s", "mu_a", "mu_b")}
    rank = torch.from_numpy(fitted["rank"][:count]).to(torch.int64)
    return replace(pack, targets=pack.targets[:count], rank=rank, **maps)


def _outputs(
    model: DiT, engine: CacheEngine, labels: list[int], noise: torch.Tensor, target: int, fit: TCCFit
) -> dict[tuple[int, int], torch.Tensor]:
    """Every unit's output (conditional half) at step ``target`` of one run, which stops right after it."""
    seen: dict[tuple[int, int], torch.Tensor] = {}
    n = len(labels)

    def observe(step: int, block: int, unit: int, value: torch.Tensor, computed: bool) -> None:
        if step == target:
            seen[(block, unit)] = value[:n].detach()

    def stop(step: int, x: torch.Tensor) -> None:
        if step >= target:
            raise _StopSampling

    engine.on_unit = observe
    try:
        generate(model, labels, steps=fit.steps, cfg_scale=fit.cfg_scale, forward=engine.forward, noise=noise,
                 callback=stop)  # fmt: skip
    except _StopSampling:
        pass
    return seen
