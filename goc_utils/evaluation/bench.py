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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from goc_utils.cache.method import ResolvedMethod, resolve_method
from goc_utils.errors import InvalidArgumentError
from goc_utils.evaluation.tables import markdown_table
from goc_utils.integrations.diffusers.peers import CALIBRATION_SAMPLES, Method, Runner, make_runner
from goc_utils.model.dit import DiT
from goc_utils.model.macs import model_macs
from goc_utils.model.sampler import SampleResult, generate, per_sample_inputs

DEFAULT_METHODS = (
    "none",
    "fora-25", "fora-25+goc", "fora-25+taylor",
    "fora-50", "fora-50+goc", "fora-50+taylor",
    "l2c", "l2c+goc", "l2c+taylor",
)  # fmt: skip


@dataclass(frozen=True)
class Sampling:
    """How the timed runs sample (``goc eval``'s :class:`~goc_utils.evaluation.eval.EvalSettings` has the same
    three fields)."""

    steps: int = 20
    cfg_scale: float = 4.0
    sampler: str = "ddim"


def time_engines(
    model: DiT,
    engines: dict[str, Runner],
    inputs: tuple[Sequence[int], torch.Tensor],
    sampling: Sampling,
    repeats: int = 3,
    warmup: int = 1,
    progress: bool = True,
) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
    """Seconds per run of every engine on the same ``inputs`` (labels and noise): ``(times, final samples)``.

    ``warmup`` untimed rounds, then ``repeats`` timed rounds, each round running every engine once
    (round-robin). The final samples are those of the last round.
    """
    if repeats < 1 or warmup < 0:
        raise InvalidArgumentError(f"timing needs repeats >= 1 and warmup >= 0 (got {repeats} and {warmup})")
    labels, noise = inputs
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
                    model, labels, steps=sampling.steps, sampler=sampling.sampler, cfg_scale=sampling.cfg_scale,
                    forward=engine.forward, noise=noise,
                ).final  # fmt: skip
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if round_ >= warmup:
                    times[name].append(time.perf_counter() - start)
                bar.update()
    return times, finals


@dataclass
class BenchRow:
    """One method's timing (``compiled``: its model calls ran as compiled graphs, :mod:`goc_utils.cache.compiled`)."""

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
    compiled: bool = False
    compile_s: float | None = None
    speedup_vs_eager: float | None = None

    @property
    def efficiency(self) -> float:
        """measured / theoretical speedup."""
        return self.measured_speedup / self.theoretical_speedup

    @property
    def name(self) -> str:
        return f"{self.method} (compiled)" if self.compiled else self.method


@dataclass(frozen=True)
class BenchSetup:
    """How ``goc bench`` times: ``batch`` images per run (labels ``0, 1, ...``, the noise of seed 0), guidance
    ``cfg_scale``, ``warmup`` untimed and ``repeats`` timed rounds; ``compile``: also every method compiled
    (:class:`~goc_utils.cache.compiled.CompiledEngine`, ``mode``), timed in the same rounds as the eager ones."""

    batch: int = 1
    cfg_scale: float = 4.0
    repeats: int = 5
    warmup: int = 1
    compile: bool = False
    mode: str = "default"


def run_bench(model: DiT, methods: Sequence[Method], setup: BenchSetup = BenchSetup(), progress: bool = True
              ) -> list[BenchRow]:  # fmt: skip
    """Time ``generate`` under each resolved method; ``none`` is the baseline (of the eager rows, and the compiled
    ``none`` of the compiled ones). The methods share one run (:class:`~goc_utils.cache.run.RunShape`): its steps are
    the bench's. Our methods only are compiled (other libraries' caches decide from data, step by step, and are left to
    their own compile support)."""
    batch, cfg_scale = setup.batch, setup.cfg_scale
    if batch < 1:
        raise InvalidArgumentError(f"--batch must be >= 1 (got {batch})")
    if not methods:
        raise InvalidArgumentError("goc bench needs at least one method")
    steps = methods[0].run.steps
    labels = [i % model.num_classes for i in range(batch)]
    torch.manual_seed(0)
    noise = torch.randn(batch, model.in_channels, model.input_size, model.input_size)
    macs = model_macs(model)
    calibration = _calibration(model, steps, cfg_scale)
    engines = {(m.text, False): make_runner(model, m, calibration) for m in methods}
    if setup.compile:
        from goc_utils.cache.compiled import CompiledEngine  # torch.compile's import cost only when asked

        for m in methods:  # ours, on our DiT or through the diffusers hooks (DiffusersDiT takes the same unit_fn)
            if isinstance(m, ResolvedMethod):
                engines[(m.text, True)] = CompiledEngine(m.engine(model), setup.mode)
    for engine in engines.values():
        engine.prepare()
    timing = Sampling(steps, cfg_scale)
    times, finals = time_engines(model, engines, (labels, noise), timing, setup.repeats, setup.warmup, progress)
    rows: dict[tuple, BenchRow] = {}
    for (text, compiled), engine in engines.items():
        cost = engine.cost(macs, lambda forward: generate(
            model, labels, steps=steps, cfg_scale=cfg_scale, forward=forward, noise=noise))  # fmt: skip
        reference = finals.get(("none", False))
        key = (text, compiled)
        rows[key] = BenchRow(
            method=text,
            cache_ratio=cost["cache_ratio"],
            cache_ratio_macs=cost["cache_ratio_macs"],
            median_s=statistics.median(times[key]),
            min_s=min(times[key]),
            max_s=max(times[key]),
            theoretical_speedup=cost["macs_speedup"],
            rmse_vs_none=None if reference is None else float(((finals[key] - reference) ** 2).mean().sqrt()),
            compiled=compiled,
            compile_s=getattr(engine, "compile_seconds", None) if compiled else None,
        )
    for (text, compiled), row in rows.items():
        baseline = rows.get(("none", compiled))
        if baseline is not None:
            row.measured_speedup = baseline.median_s / row.median_s
        host = rows.get((text.split("+")[0], compiled))
        if "+" in text and host is not None:
            row.overhead_vs_host = row.median_s / host.median_s - 1
        if compiled:
            row.speedup_vs_eager = rows[(text, False)].median_s / row.median_s
    return list(rows.values())


def _calibration(model, steps: int, cfg_scale: float, seed: int = 0) -> Callable[[Callable], None]:
    """MagCache's calibration on a diffusers transformer: one un-cached run of fixed samples of ``seed``."""

    def run(forward) -> None:
        labels, noise = per_sample_inputs(model, range(CALIBRATION_SAMPLES), seed)
        generate(model, labels, steps=steps, cfg_scale=cfg_scale, forward=forward, noise=noise)

    return run


def format_table(rows: list[BenchRow]) -> str:
    """Markdown table of a benchmark (with compiled rows: their speedup over the same method eager and their
    compilation time)."""
    compiled = any(r.compiled for r in rows)
    return markdown_table(
        [
            {
                "method": r.name,
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
            | ({} if not compiled else {
                "compiled vs eager": "" if r.speedup_vs_eager is None else f"{r.speedup_vs_eager:.3f}x",
                "compile s": "" if r.compile_s is None else f"{r.compile_s:.1f}",
            })  # fmt: skip
            for r in rows
        ]
    )


def rows_as_dicts(rows: list[BenchRow]) -> list[dict]:
    return [asdict(r) | {"efficiency": r.efficiency} for r in rows]


def same_noise_runs(
    model: DiT,
    methods: Sequence[ResolvedMethod],
    labels: Sequence[int],
    seed: int = 0,
    cfg_scale: float = 4.0,
    vae=None,
    compile: bool = False,
) -> tuple[dict[str, SampleResult], dict[str, np.ndarray], dict[str, dict]]:
    """Run every resolved method from the same noise; return ``(results, per-step RMSE vs the un-cached run,
    costs)`` keyed by method text (the un-cached run ``none`` first, added when missing).

    ``results[method]`` is a :class:`~goc_utils.evaluation.sampling.SampleResult`; the per-step error of
    method m is the RMSE between its sample after step s and the un-cached sample after step s; ``costs[method]``
    is its :meth:`~goc_utils.cache.method.ResolvedMethod.cost`. ``compile``: the model calls run as compiled graphs
    (:class:`~goc_utils.cache.compiled.CompiledEngine`; the same samples to float tolerance).
    """
    if not methods:
        raise InvalidArgumentError("same_noise_runs needs at least one method")
    results, trajectories, costs = {}, {}, {}
    macs = model_macs(model)
    plain = [m for m in methods if m.text == "none"] or [resolve_method("none", methods[0].run)]
    for method in [plain[0], *[m for m in methods if m.text != "none"]]:
        text = method.text
        costs[text] = method.cost(macs)
        states: list[torch.Tensor] = []
        results[text] = generate(
            model,
            labels,
            seed=seed,
            steps=method.run.steps,
            cfg_scale=cfg_scale,
            vae=vae,
            forward=method.engine(model, compile).forward,
            callback=lambda s, x, states=states: states.append(x[: len(labels)].clone()),
        )
        trajectories[text] = torch.stack(states)
    reference = trajectories["none"]
    errors = {m: ((t - reference) ** 2).flatten(1).mean(1).sqrt().numpy() for m, t in trajectories.items()}
    return results, errors, costs
