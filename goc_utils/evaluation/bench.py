"""Methods compared on the same noise: wall-clock timing and trajectories.

* :func:`time_engines` is the one timing loop (warm-up, then round-robin repeats so that a slow phase
  of the machine hits every method alike); ``goc bench`` (:func:`run_bench`) and ``goc eval``'s latency
  column use it.
* :func:`run_bench` (``goc bench``) reports per method the median and spread (min-max) of the wall time,
  the MACs-theoretical speedup over no cache, the measured speedup, their ratio, the overhead of a
  compensator over its host schedule with plain reuse, and the RMSE of the final samples against the
  un-cached run with the same noise. Targets (docs/method.md): measured >= 90% of theoretical for DiT-XL/2 at
  fora-50; GOC overhead <= 2% (the paper reports about 2%).
* :func:`same_noise_runs` samples every method from the same noise and returns the per-step error
  against the un-cached trajectory (notebook 04).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from goc_utils.cache.engine import CacheEngine
from goc_utils.cache.method import CacheMethod
from goc_utils.cache.tcc import PackSource
from goc_utils.errors import InvalidArgumentError
from goc_utils.evaluation.tables import markdown_table
from goc_utils.integrations.diffusers.hooks import DiffusersDiT
from goc_utils.integrations.diffusers.peers import HookRunner, is_peer
from goc_utils.model.dit import DiT
from goc_utils.model.macs import MACs, model_macs
from goc_utils.model.sampler import SampleResult, generate, per_sample_inputs

DEFAULT_METHODS = (
    "none",
    "fora-25", "fora-25+goc", "fora-25+taylor",
    "fora-50", "fora-50+goc", "fora-50+taylor",
    "l2c", "l2c+goc", "l2c+taylor",
)  # fmt: skip


def make_engine(
    model: DiT | DiffusersDiT,
    text: str,
    steps: int,
    router: str | None = None,
    thres: float = 0.1,
    priors=None,
    cfg_scale: float = 1.5,
    sampler: str = "ddim",
    seed: int = 0,
    packs: PackSource | None = None,
) -> CacheEngine | HookRunner:
    """What samples ``text`` on ``model``: a :class:`CacheEngine` on our ``DiT``; a
    :class:`~goc_utils.integrations.diffusers.peers.HookRunner` on a diffusers transformer (``--backend diffusers``),
    for our methods and for ``diffusers:*`` caches alike. Both have ``forward(x, t, y, step)``. ``packs``: where
    ``+tcc`` methods find their packs."""
    if isinstance(model, DiffusersDiT):

        def calibration(forward) -> None:  # MagCache: one un-cached run of fixed samples of this seed
            labels, noise = per_sample_inputs(model, range(16), seed)
            generate(model, labels, steps=steps, sampler=sampler, cfg_scale=cfg_scale, forward=forward, noise=noise)

        return HookRunner(model, text, steps, router, thres, priors, calibration, cfg_scale, packs)
    if is_peer(text):
        raise InvalidArgumentError(f"{text!r} is another library's cache: it runs with --backend diffusers")
    return CacheMethod.parse(text, router=router, thres=thres).engine(model, steps, priors, packs)


def engine_cost(engine: CacheEngine | HookRunner, macs: MACs, run=None) -> dict:
    """``cache_ratio``, ``cache_ratio_macs`` and ``macs_speedup`` of an engine: from its schedule, or, for
    diffusers' own caches, measured by counting what ``run(forward)`` (one sampling run) really computes."""
    if isinstance(engine, HookRunner):
        return engine.measure(run, macs)
    return engine.cost(macs)


def time_engines(
    model: DiT,
    engines: dict[str, CacheEngine | HookRunner],
    labels: Sequence[int],
    noise: torch.Tensor,
    steps: int,
    cfg_scale: float,
    sampler: str = "ddim",
    repeats: int = 3,
    warmup: int = 1,
    progress: bool = True,
) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
    """Seconds per run of every engine on the same labels and noise: ``(times, final samples)``.

    ``warmup`` untimed rounds, then ``repeats`` timed rounds, each round running every engine once
    (round-robin). The final samples are those of the last round.
    """
    if repeats < 1 or warmup < 0:
        raise InvalidArgumentError(f"timing needs repeats >= 1 and warmup >= 0 (got {repeats} and {warmup})")
    device = next(model.parameters()).device
    noise = noise.to(device)
    times: dict[str, list[float]] = {name: [] for name in engines}
    finals: dict[str, torch.Tensor] = {}
    with tqdm(total=len(engines) * (warmup + repeats), desc="timing", leave=False, disable=not progress) as bar:
        for round_ in range(warmup + repeats):
            for name, engine in engines.items():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                finals[name] = generate(
                    model, labels, steps=steps, sampler=sampler, cfg_scale=cfg_scale, forward=engine.forward,
                    noise=noise,
                ).final  # fmt: skip
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if round_ >= warmup:
                    times[name].append(time.perf_counter() - start)
                bar.update()
    return times, finals


@dataclass
class BenchRow:
    """One method's timing."""

    method: str
    cache_ratio: float
    cache_ratio_macs: float
    median_s: float
    min_s: float
    max_s: float
    theoretical_speedup: float
    rmse_vs_none: float | None = None
    measured_speedup: float = 1.0
    overhead_vs_host: float | None = None

    @property
    def efficiency(self) -> float:
        """measured / theoretical speedup."""
        return self.measured_speedup / self.theoretical_speedup


def run_bench(
    model: DiT,
    methods: list[str],
    steps: int = 20,
    batch: int = 1,
    cfg_scale: float = 4.0,
    repeats: int = 5,
    warmup: int = 1,
    router: str | None = None,
    thres: float = 0.1,
    progress: bool = True,
    priors=None,
    packs: PackSource | None = None,
) -> list[BenchRow]:
    """Time ``generate`` under each method (labels ``0, 1, ...``, the noise of seed 0); ``none`` is the baseline."""
    if batch < 1:
        raise InvalidArgumentError(f"--batch must be >= 1 (got {batch})")
    labels = [i % model.num_classes for i in range(batch)]
    torch.manual_seed(0)
    noise = torch.randn(batch, model.in_channels, model.input_size, model.input_size)
    macs = model_macs(model)
    engines = {m: make_engine(model, m, steps, router, thres, priors, cfg_scale, packs=packs) for m in methods}
    for engine in engines.values():
        if isinstance(engine, HookRunner):
            engine.prepare()
    times, finals = time_engines(model, engines, labels, noise, steps, cfg_scale, repeats=repeats, warmup=warmup,
                                 progress=progress)  # fmt: skip
    reference = finals.get("none")
    rows: dict[str, BenchRow] = {}
    for text, engine in engines.items():
        cost = engine_cost(engine, macs, lambda forward: generate(
            model, labels, steps=steps, cfg_scale=cfg_scale, forward=forward, noise=noise))  # fmt: skip
        rows[text] = BenchRow(
            method=text,
            cache_ratio=cost["cache_ratio"],
            cache_ratio_macs=cost["cache_ratio_macs"],
            median_s=statistics.median(times[text]),
            min_s=min(times[text]),
            max_s=max(times[text]),
            theoretical_speedup=cost["macs_speedup"],
            rmse_vs_none=None if reference is None else float(((finals[text] - reference) ** 2).mean().sqrt()),
        )
    baseline = rows.get("none")
    for row in rows.values():
        if baseline is not None:
            row.measured_speedup = baseline.median_s / row.median_s
        host = rows.get(row.method.split("+")[0])
        if "+" in row.method and host is not None:
            row.overhead_vs_host = row.median_s / host.median_s - 1
    return list(rows.values())


def format_table(rows: list[BenchRow]) -> str:
    """Markdown table of a benchmark."""
    return markdown_table(
        [
            {
                "method": r.method,
                "cached units": f"{100 * r.cache_ratio:.1f}%",
                "cached MACs": f"{100 * r.cache_ratio_macs:.1f}%",
                "median s": f"{r.median_s:.4f}",
                "min-max s": f"{r.min_s:.4f}-{r.max_s:.4f}",
                "theor. speedup": f"{r.theoretical_speedup:.3f}x",
                "measured speedup": f"{r.measured_speedup:.3f}x",
                "measured/theor.": f"{100 * r.efficiency:.0f}%",
                "overhead vs host": "" if r.overhead_vs_host is None else f"{100 * r.overhead_vs_host:+.1f}%",
                "final RMSE vs none": "" if r.rmse_vs_none is None else f"{r.rmse_vs_none:.4f}",
            }
            for r in rows
        ]
    )


def rows_as_dicts(rows: list[BenchRow]) -> list[dict]:
    return [asdict(r) | {"efficiency": r.efficiency} for r in rows]


def same_noise_runs(
    model: DiT,
    methods: Sequence[str],
    labels: Sequence[int],
    seed: int = 0,
    steps: int = 20,
    cfg_scale: float = 4.0,
    router: str | None = None,
    priors=None,
    vae=None,
    packs: PackSource | None = None,
) -> tuple[dict[str, SampleResult], dict[str, np.ndarray], dict[str, dict]]:
    """Run every method from the same noise; return ``(results, per-step RMSE vs the un-cached run, costs)``.

    ``results[method]`` is a :class:`~goc_utils.evaluation.sampling.SampleResult`; the per-step error of
    method m is the RMSE between its sample after step s and the un-cached sample after step s; ``costs[method]``
    is its engine's :meth:`~goc_utils.cache.engine.CacheEngine.cost`.
    """
    results, trajectories, costs = {}, {}, {}
    macs = model_macs(model)
    for text in ["none", *[m for m in methods if m != "none"]]:
        engine = CacheMethod.parse(text, router=router).engine(model, steps, priors, packs)
        costs[text] = engine.cost(macs)
        states: list[torch.Tensor] = []
        results[text] = generate(
            model,
            labels,
            seed=seed,
            steps=steps,
            cfg_scale=cfg_scale,
            vae=vae,
            forward=engine.forward,
            callback=lambda s, x, states=states: states.append(x[: len(labels)].clone()),
        )
        trajectories[text] = torch.stack(states)
    reference = trajectories["none"]
    errors = {m: ((t - reference) ** 2).flatten(1).mean(1).sqrt().numpy() for m, t in trajectories.items()}
    return results, errors, costs
