"""benchmarks/gpu_check.py, the check for the day a GPU is lent, run here as its CPU dry run: every section (stand-ins,
GEMMs, torchrun eval-sample, notebooks on the xl preset, goc bench eager and compiled on both backends) succeeds on a
tiny model, and the report holds what the GPU run will report."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from goc_utils.paths import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "benchmarks" / "gpu_check.py"
SECTIONS = {"setup", "gemm", "eval_sample", "notebooks", "bench"}


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_the_gpu_check_dry_run_passes_every_section(tmp_path):
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "elapsed" in done.stdout.splitlines()[-1]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    sections = report["sections"]
    assert set(sections) == SECTIONS and report["failed_sections"] == []
    assert all(s["status"] == "ok" and positive(s["seconds"]) for s in sections.values())
    assert report["dry_run"] and report["torch"] and report["date"] and positive(report["elapsed_s"])

    gemm = sections["gemm"]["result"]["runs"]
    assert gemm and all(positive(run["s_per_image_run"]) for run in gemm)
    assert all(positive(v) for run in gemm for v in run["seconds_per_run"].values())

    runs = sections["bench"]["result"]["runs"]
    assert {run["backend"] for run in runs} == {"native", "diffusers"} and all(run["compiled"] for run in runs)
    for run in runs:
        methods = {(row["method"], row["compiled"]) for row in run["rows"]}
        wanted = {"none", "fora-25", "fora-25+goc", "fora-50", "fora-50+goc", "l2c", "l2c+goc"}
        assert methods == {(m, compiled) for m in wanted for compiled in (False, True)}, run["backend"]
        for row in run["rows"]:
            assert all(positive(row[k]) for k in ("median_s", "min_s", "max_s", "measured_speedup")), row
            assert row["theoretical_speedup"] >= 1 and (row["compile_s"] is None) != row["compiled"]

    sampled = sections["eval_sample"]["result"]
    assert sampled["samples_shape"][0] == report["plan"]["eval_samples"] and positive(sampled["s_per_sample"])
    assert sampled["command"].startswith("torchrun ") and "eval-sample" in sampled["command"]

    notebooks = sections["notebooks"]["result"]["notebooks"]
    assert list(notebooks) == report["plan"]["notebooks"] and all(positive(n["seconds"]) for n in notebooks.values())
    assert {"01_samples.png", "04_per_step_error.png", "07_diffusers_same_noise.png"} <= set(
        sections["notebooks"]["result"]["figures"]
    )

    summary = (tmp_path / "out" / "gpu_check.md").read_text()
    assert summary.startswith("# GPU check: tiny-fashion") and "| l2c+goc (compiled) |" in summary
