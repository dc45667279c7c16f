"""Latency benchmark of caching methods: ``goc bench``.

For each method (schedule x compensator) the same sampling run is timed after warm-up;
reported: median and spread (min-max) of the wall time, the MACs-theoretical speedup over
no cache, the measured speedup, their ratio, and for compensated methods the overhead over
their host schedule with plain reuse, and the RMSE of the final samples against the
un-cached run with the same noise (model space). Targets (README): measured >= 90% of theoretical for
DiT-XL/2 at fora-50; GOC overhead <= 2% (the paper reports about 2%).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from goc_utils.cache.method import CacheMethod
from goc_utils.macs import model_macs, theoretical_speedup
from goc_utils.models import DiT
from goc_utils.sampling import generate

DEFAULT_METHODS = (
    "none",
    "fora-25", "fora-25+goc", "fora-25+taylor",
    "fora-50", "fora-50+goc", "fora-50+taylor",
    "l2c", "l2c+goc", "l2c+taylor",
)  # fmt: skip


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
) -> list[BenchRow]:
    """Time ``generate`` under each method; the first method should be ``none`` (the baseline)."""
    device = next(model.parameters()).device
    labels = [i % model.num_classes for i in range(batch)]
    macs = model_macs(model)
    rows: dict[str, BenchRow] = {}
    reference = None
    for text in tqdm(methods, desc="bench", disable=not progress):
        method = CacheMethod.parse(text, router=router, thres=thres)
        engine = method.engine(model, steps, priors)
        times = []
        for i in range(warmup + repeats):
            _sync(device)
            start = time.perf_counter()
            final = generate(model, labels, seed=0, steps=steps, cfg_scale=cfg_scale, forward=engine.forward).final
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
        if text == "none":
            reference = final
        schedule = engine.schedule
        rows[text] = BenchRow(
            method=text,
            cache_ratio=schedule.cache_ratio,
            cache_ratio_macs=schedule.cache_ratio_macs(macs.units),
            median_s=statistics.median(times),
            min_s=min(times),
            max_s=max(times),
            theoretical_speedup=theoretical_speedup(macs, schedule),
            rmse_vs_none=None if reference is None else float(((final - reference) ** 2).mean().sqrt()),
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
    lines = [
        "| method | cached units | cached MACs | median s | min-max s | theor. speedup | measured speedup "
        "| measured/theor. | overhead vs host | final RMSE vs none |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        overhead = "" if r.overhead_vs_host is None else f"{100 * r.overhead_vs_host:+.1f}%"
        lines.append(
            f"| {r.method} | {100 * r.cache_ratio:.1f}% | {100 * r.cache_ratio_macs:.1f}% | {r.median_s:.4f} | "
            f"{r.min_s:.4f}-{r.max_s:.4f} | {r.theoretical_speedup:.3f}x | {r.measured_speedup:.3f}x | "
            f"{100 * r.efficiency:.0f}% | {overhead} | {'' if r.rmse_vs_none is None else f'{r.rmse_vs_none:.4f}'} |"
        )
    return "\n".join(lines)


def rows_as_dicts(rows: list[BenchRow]) -> list[dict]:
    return [asdict(r) | {"efficiency": r.efficiency} for r in rows]
