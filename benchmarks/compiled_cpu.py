"""Compiled sampling against eager on the CPU: tiny-fashion, DDIM-20, cfg 1.5, batch 1 and 16 (issue targets:
fora-50 and l2c at >= 95% of their MACs-ideal speedup compiled, GOC's overhead over its host <= 1%, compiled un-cached
>= 1.4x eager at batch 1 and >= 1.2x at batch 16).

Runs ``goc bench --compile`` (eager and compiled rows timed round-robin in one run) per batch and writes
``benchmarks/results/compiled_cpu.md`` (with date, machine and command) and ``compiled_cpu.csv``.
Usage: ``python benchmarks/compiled_cpu.py [--threads 2] [--repeats 9]`` on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import io
import json
import os
import platform
from pathlib import Path

from goc_utils.cli import main as goc

METHODS = "none,fora-50,fora-50+goc,l2c,l2c+goc"
RESULTS = Path(__file__).parent / "results"


def bench(batch: int, threads: int, repeats: int) -> tuple[list[str], list[dict]]:
    argv = ["bench", "--model", "tiny-fashion", "--methods", METHODS, "--cfg-scale", "1.5", "--batch", str(batch),
            "--repeats", str(repeats), "--warmup", "2", "--threads", str(threads), "--compile", "--json"]  # fmt: skip
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = goc(argv)
    if code:
        raise SystemExit(f"goc {' '.join(argv)} failed with {code}")
    return argv, json.loads(out.getvalue())["rows"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    table, commands = [], []
    for batch in args.batch:
        argv, rows = bench(batch, args.threads, args.repeats)
        commands.append("goc " + " ".join(argv))
        for row in rows:
            table.append({
                "batch": batch, "method": row["method"], "compiled": row["compiled"],
                "median s": f"{row['median_s']:.4f}", "min-max s": f"{row['min_s']:.4f}-{row['max_s']:.4f}",
                "MACs-ideal speedup": f"{row['theoretical_speedup']:.3f}",
                "measured speedup": f"{row['measured_speedup']:.3f}",
                "measured / ideal": f"{row['efficiency']:.3f}",
                "overhead vs host": "" if row["overhead_vs_host"] is None else f"{row['overhead_vs_host']:+.3f}",
                "compiled vs eager": "" if row["speedup_vs_eager"] is None else f"{row['speedup_vs_eager']:.3f}",
                "compile s": "" if row["compile_s"] is None else f"{row['compile_s']:.1f}",
            })  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / "compiled_cpu.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    keys = list(table[0])
    lines = [
        f"# Compiled vs eager sampling, CPU ({datetime.date.today()})",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads; "
        f"torch {__import__('torch').__version__}. Speedups and overheads within a batch are of the same run "
        "(round-robin); the spread of each time is its min-max over the repeats.",
        "",
        *[f"`{c}`" for c in commands],
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
        *["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in table],
    ]
    (RESULTS / "compiled_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
