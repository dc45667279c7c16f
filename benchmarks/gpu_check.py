"""The GPU check: DiT-XL/2 with random weights through every GPU path of the study, in about 8 minutes, offline.

Sections, each with its own time budget (a section over its budget is stopped and recorded as failed; one failure
never stops the others):

* ``setup``: random-weight stand-ins in the user's formats: DiT's checkpoint (a plain state dict), an sd-vae-shaped
  ``AutoencoderKL`` folder, an L2C router file for the run's steps (one random row for every step, so that compiled
  L2C has few step patterns), the DiT as a diffusers folder (notebook 07), the FID Inception and a reference batch.
* ``gemm``: the model's own matrix products alone (``torch.matmul`` on random tensors of one forward's shapes, CFG
  batch 2B, times the steps), TF32 on and off: the limit of each bench row, in seconds per image-run.
* ``eval_sample``: ``torchrun --standalone --nproc_per_node 1 -m goc_utils.cli eval-sample`` (l2c+goc) on the stand-ins.
* ``notebooks``: the study notebooks headless on the ``xl`` preset in smoke mode, the stand-ins in its params file
  (not 08: it reads its priors only from data/priors/, which this check does not write).
* ``bench``: ``goc bench --compile`` in process, batch 1 and 8, TF32 on and off, native and diffusers backends, for
  none, fora-25, fora-50, l2c, each plain and +goc, in this order: TF32 on before off, native before diffusers, batch 1
  before 8. Each configuration is one call, compiled (eager and compiled rows side by side, round-robin) while a
  compiled call still fits the section's time, eager-only while an eager one does, skipped after. The bench runs last
  and takes what is left of ``--total-budget`` (480 s): raise it to compile more configurations.

Writes ``gpu_check.json`` (everything) and ``gpu_check.md`` (summary tables) to ``--out``; prints its elapsed
seconds; exits 1 if any section failed. ``--dry-run``: the same code on the CPU with tiny-fashion (random weights, a
random tier-shaped VAE), 4 steps, batch 1, one repeat, default compile mode.

Usage: ``python benchmarks/gpu_check.py [--out DIR]`` on a CUDA machine;
``python benchmarks/gpu_check.py --dry-run`` on a CPU (results in runs/gpu_check_dry/).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import io
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from goc_utils import paths
from goc_utils.cli import main as goc
from goc_utils.files import atomic_torch_save, atomic_write_text
from goc_utils.model.presets import create_model, preset_info
from goc_utils.model.sampler import set_tf32
from goc_utils.model.vae import SD_VAE_CONFIG
from goc_utils.study.notebooks import load_params_file, run_notebooks
from goc_utils.training.routers import RouterTrainConfig, save_router

XL_PARAMS = paths.NOTEBOOKS_DIR / "params" / "xl.yaml"
METHODS = "none,fora-25,fora-25+goc,fora-50,fora-50+goc,l2c,l2c+goc"


@dataclass(frozen=True)
class Plan:
    """What the check runs.

    Attributes:
        model: preset sampled (``DiT-XL/2``; ``tiny-fashion`` in the dry run).
        device: ``cuda`` | ``cpu``.
        steps: DDIM steps of every section (the router file is made for them).
        batches: images per bench run (CFG doubles each).
        tf32: TF32 settings benched (None: the flag is left out, as on the CPU).
        backends: ``goc bench --backend`` values.
        methods: ``goc bench --methods``.
        repeats, warmup: timed and untimed rounds per bench run (warm-up >= 1 keeps compilation out of the timing).
        compile_mode: ``goc bench --compile-mode``.
        compile_guess_s, eager_guess_s: seconds a compiled / eager bench call is assumed to take until one is timed
            (a configuration is compiled while a compiled call still fits the section's time, eager while an eager
            one does, and skipped after).
        notebooks: notebook numbers run (08 reads its priors only from data/priors/, which a check never writes).
        fid_features: notebook 05's features (``inception``: the stand-in Inception; ``""``: the preset's judge).
        eval_samples: images of the eval-sample run.
        eval_procs: torchrun processes (world size 1 joins no process group; NCCL / gloo need 2 or more).
        budgets: seconds per section; the bench takes what is left of ``total_budget``, at least its own.
        total_budget: seconds of the whole check.
    """

    model: str = "DiT-XL/2"
    device: str = "cuda"
    steps: int = 20
    batches: tuple[int, ...] = (1, 8)
    tf32: tuple[bool | None, ...] = (True, False)
    backends: tuple[str, ...] = ("native", "diffusers")
    methods: str = METHODS
    repeats: int = 3
    warmup: int = 1
    compile_mode: str = "reduce-overhead"
    compile_guess_s: float = 240.0
    eager_guess_s: float = 20.0
    notebooks: tuple[str, ...] = ("01", "02", "03", "04", "05", "06", "07")
    fid_features: str = "inception"
    eval_samples: int = 8
    eval_procs: int = 1
    budgets: dict[str, float] = field(
        default_factory=lambda: {"setup": 60, "gemm": 30, "eval_sample": 60, "notebooks": 240, "bench": 120}
    )
    total_budget: float = 480.0


DRY_RUN = Plan(
    model="tiny-fashion", device="cpu", steps=4, batches=(1,), tf32=(None,), repeats=1, compile_mode="default",
    compile_guess_s=0.0, eager_guess_s=0.0, fid_features="", eval_samples=4,
    budgets={"setup": 60, "gemm": 60, "eval_sample": 180, "notebooks": 600, "bench": 600}, total_budget=1200.0,
)  # fmt: skip
"""The dry run: the same sections on the CPU at a tiny size (budgets sized for a busy 2-core machine)."""


# ----------------------------------------------------------------------------- sections and their budgets


class SectionTimeout(Exception):
    """A section ran past its time budget."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`SectionTimeout` in the main thread after ``seconds``."""

    def expire(signum, frame):
        raise SectionTimeout(f"stopped at its budget of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_section(report: dict, name: str, budget: float, body: Callable[[dict, float], None]) -> None:
    """Run ``body(result, deadline)`` (deadline: a ``time.perf_counter`` value) within ``budget`` seconds and record
    its status, seconds and result (what it filled in before failing, too) in ``report["sections"][name]``."""
    entry: dict = {"status": "ok", "budget_s": round(budget, 1), "result": {}}
    report["sections"][name] = entry
    started = time.perf_counter()
    print(f"[{name}] started (budget {budget:.0f} s)", flush=True)
    try:
        with time_limit(budget):
            body(entry["result"], started + budget)
    except Exception as exc:  # noqa: BLE001 - every failure is recorded; the other sections still run
        entry["status"] = "failed"
        entry["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        entry["traceback"] = traceback.format_exc()[-4000:]
    entry["seconds"] = round(time.perf_counter() - started, 2)
    error = f": {entry['error']}" if "error" in entry else ""
    print(f"[{name}] {entry['status']} in {entry['seconds']:.1f} s{error}", flush=True)


def run_goc(argv: list[str]) -> str:
    """``goc ARGV`` in process; its stdout (stderr's last lines in the error when it fails)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = goc(argv)
        except SystemExit as exc:  # argparse refusals
            code = exc.code
    if code:
        raise RuntimeError(f"goc {' '.join(argv)} exited {code}: {err.getvalue().strip()[-1500:]}")
    return out.getvalue()


def release_compiled_graphs() -> None:
    """Free the graphs of the bench calls before (dynamo's caches; the graphs themselves go with their models)."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- setup: the stand-ins


def random_vae(model: str):
    """A random ``AutoencoderKL`` of the preset's VAE shape: sd-vae-ft-ema for DiT's presets, the tier's for
    tiny-fashion (None for pixel-space presets)."""
    from diffusers import AutoencoderKL  # the VAE's library, only where a VAE is made

    info = preset_info(model)
    if not info.latent:
        return None
    torch.manual_seed(0)
    if info.vae and Path(info.vae).is_dir():
        return AutoencoderKL.from_config(AutoencoderKL.load_config(info.vae))
    return AutoencoderKL(**SD_VAE_CONFIG)


def setup(plan: Plan, files: dict, work: Path) -> Callable[[dict, float], None]:
    def body(result: dict, deadline: float) -> None:
        from goc_utils.evaluation.metrics.inception import random_inception
        from goc_utils.integrations.diffusers.transformer import export_diffusers

        started = time.perf_counter()
        generator = torch.Generator().manual_seed(0)
        with torch.device("meta"):
            model = create_model(plan.model)
        # every weight random (DiT's init zeroes the adaLN gates: caches would be no-ops)
        state = {k: torch.randn(v.shape, generator=generator) * 0.02 for k, v in model.state_dict().items()}
        files["ckpt"] = str(atomic_torch_save(state, work / "dit.pt"))
        logits = torch.randn(2 * model.depth, generator=generator) * 2 - 2  # about half the units reused at 0.1
        config = RouterTrainConfig(steps=plan.steps)
        files["router"] = str(save_router(work / "router.pt", logits.repeat(plan.steps, 1), {}, config, plan.model))
        vae = random_vae(plan.model)
        if vae is not None:
            vae.save_pretrained(work / "vae")
            files["vae"] = str(work / "vae")
        model.load_state_dict(state, assign=True)
        result["parameters"] = sum(p.numel() for p in model.parameters())
        files["diffusers_dir"] = str(export_diffusers(model.eval(), work / "diffusers"))
        del state, model
        if plan.fid_features == "inception":
            files["inception_weights"] = str(atomic_torch_save(random_inception(seed=0).state_dict(),
                                                               work / "inception.pth"))  # fmt: skip
            size = preset_info(plan.model).default_image_size
            images = np.random.default_rng(0).integers(0, 256, size=(8, size, size, 3), dtype=np.uint8)
            np.savez(work / "ref_batch.npz", arr_0=images)
            files["ref_batch"] = str(work / "ref_batch.npz")
        result["files"] = {k: Path(v).name for k, v in files.items()}
        result["seconds"] = round(time.perf_counter() - started, 2)

    return body


# ----------------------------------------------------------------------------- gemm: the model's matrix products


def forward_gemms(model_name: str, batch: int) -> dict[str, list[tuple[str, tuple, tuple, int]]]:
    """One forward's matrix products at ``batch`` images (CFG: 2 x batch rows): ``{kind: [(name, A shape, B shape,
    count)]}``; kinds ``always`` (embeddings, adaLN, final layer: run at every step, cached or not), ``attention`` and
    ``mlp`` (the cacheable units)."""
    with torch.device("meta"):
        model = create_model(model_name)
    n, t, d = 2 * batch, model.num_tokens, model.hidden_size
    block, heads = model.blocks[0], model.num_heads
    head_dim, depth = d // heads, model.depth

    def linear(name: str, rows: int, layer, count: int = depth) -> tuple:
        return name, (rows, layer.in_features), (layer.in_features, layer.out_features), count

    patch = model.x_embedder.proj
    patch_in = patch.in_channels * patch.kernel_size[0] * patch.kernel_size[1]
    return {
        "always": [
            ("patch embed (as GEMM)", (n * t, patch_in), (patch_in, d), 1),
            linear("t-embed fc1", n, model.t_embedder.mlp[0], 1),
            linear("t-embed fc2", n, model.t_embedder.mlp[2], 1),
            linear("adaLN", n, block.adaLN_modulation[1]),
            linear("final adaLN", n, model.final_layer.adaLN_modulation[1], 1),
            linear("final linear", n * t, model.final_layer.linear, 1),
        ],
        "attention": [
            linear("qkv", n * t, block.attn.qkv),
            ("q k^T", (n * heads, t, head_dim), (n * heads, head_dim, t), depth),
            ("scores v", (n * heads, t, t), (n * heads, t, head_dim), depth),
            linear("proj", n * t, block.attn.proj),
        ],
        "mlp": [linear("fc1", n * t, block.mlp.fc1), linear("fc2", n * t, block.mlp.fc2)],
    }


def time_gemms(gemms: list[tuple[str, tuple, tuple, int]], steps: int, device: str, repeats: int = 3) -> float:
    """Median seconds of ``steps`` forwards' worth of ``gemms`` (random float32 operands, one warm-up run)."""
    operands = [(torch.randn(a, device=device), torch.randn(b, device=device), count) for _, a, b, count in gemms]

    def run() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            for a, b, count in operands:
                for _ in range(count):
                    torch.matmul(a, b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - started

    run()
    return statistics.median(run() for _ in range(repeats))


def gemm(plan: Plan, files: dict, work: Path) -> Callable[[dict, float], None]:
    def body(result: dict, deadline: float) -> None:
        result["runs"] = []
        with torch.no_grad():
            for batch in plan.batches:
                shapes = forward_gemms(plan.model, batch)
                for tf32 in plan.tf32:
                    effective = set_tf32(plan.device, bool(tf32))
                    seconds = {kind: time_gemms(g, plan.steps, plan.device) for kind, g in shapes.items()}
                    total = sum(seconds.values())
                    result["runs"].append({
                        "batch": batch, "tf32": effective, "steps": plan.steps,
                        "seconds_per_run": {k: round(v, 6) for k, v in seconds.items()} | {"total": round(total, 6)},
                        "s_per_image_run": round(total / batch, 6),
                        "gemms": {k: [{"name": n, "a": a, "b": b, "count": c} for n, a, b, c in g]
                                  for k, g in shapes.items()},
                    })  # fmt: skip
                    print(f"[gemm] batch {batch}, TF32 {effective}: {total / batch:.4f} s per image-run", flush=True)

    return body


def gemm_limit(gemm_runs: list[dict], batch: int, tf32: bool | None, cached_macs: float) -> float | None:
    """Seconds per image of a run's matrix products alone, the cached units' share left out (approximate: the
    MACs-weighted cache ratio applied to attention and MLP together)."""
    for run in gemm_runs:
        if run["batch"] == batch and run["tf32"] == tf32:
            s = run["seconds_per_run"]
            return (s["always"] + (s["attention"] + s["mlp"]) * (1 - cached_macs)) / batch
    return None


# ----------------------------------------------------------------------------- bench


def bench(plan: Plan, files: dict, work: Path) -> Callable[[dict, float], None]:
    def body(result: dict, deadline: float) -> None:
        configs = [(tf32, backend, batch) for tf32 in plan.tf32 for backend in plan.backends for batch in plan.batches]
        guess = {True: plan.compile_guess_s, False: plan.eager_guess_s}  # seconds of a call, then the last one's
        result["runs"], failed = [], []
        for tf32, backend, batch in configs:
            left = deadline - time.perf_counter()
            entry = {"backend": backend, "tf32": tf32, "batch": batch}
            result["runs"].append(entry)
            if left < guess[False]:
                entry["skipped"] = f"{left:.0f} s left of the section's budget"
                continue
            compile_it = left >= guess[True]
            argv = [
                "bench", "--model", plan.model, "--random-weights", "--device", plan.device, "--methods", plan.methods,
                "--router", files["router"], "--steps", str(plan.steps), "--batch", str(batch), "--cfg-scale", "4",
                "--repeats", str(plan.repeats), "--warmup", str(plan.warmup), "--backend", backend, "--json",
            ]  # fmt: skip
            if tf32 is not None:
                argv.append("--tf32" if tf32 else "--no-tf32")
            if compile_it:
                argv += ["--compile", "--compile-mode", plan.compile_mode]
            entry |= {"compiled": compile_it, "argv": ["goc", *argv]}
            entry["error"] = "did not finish (stopped at the section's budget)"
            started = time.perf_counter()
            try:
                text = run_goc(argv)
                parsed = json.loads(text[text.index("{") :])
                entry |= {"setup": parsed["setup"], "rows": parsed["rows"]}
                del entry["error"]
            except SectionTimeout:
                raise
            except Exception as exc:  # noqa: BLE001 - recorded; the next configuration runs
                entry["error"] = f"{type(exc).__name__}: {exc}"[:2000]
                failed.append(f"{backend}/TF32 {tf32}/batch {batch}")
            finally:
                release_compiled_graphs()
            entry["seconds"] = guess[compile_it] = round(time.perf_counter() - started, 2)
            print(f"[bench] {backend}, TF32 {tf32}, batch {batch}, compiled {compile_it}: {entry['seconds']:.1f} s"
                  + (" FAILED" if "error" in entry else ""), flush=True)  # fmt: skip
        if failed:
            raise RuntimeError(f"goc bench failed for {', '.join(failed)}; see result.runs")

    return body


# ----------------------------------------------------------------------------- notebooks and eval-sample


def notebook_params(plan: Plan, files: dict, work: Path) -> Path:
    """notebooks/params/xl.yaml with the stand-ins' paths, smoke mode and the plan's size, as a user would edit it."""
    params = load_params_file(XL_PARAMS)
    params |= {k: files[k] for k in ("ckpt", "vae", "router", "ref_batch", "inception_weights") if k in files}
    params |= {"smoke": True, "device": plan.device, "steps": plan.steps, "diffusers_dir": files["diffusers_dir"],
               "samples_dir": str(work / "nb05_samples"), "features": plan.fid_features}  # fmt: skip
    if plan.model != "DiT-XL/2":  # the dry run: another preset, its own judge and reference batch
        params |= {"model": plan.model, "image_size": 0, "vae": files.get("vae", ""), "ref_batch": "",
                   "inception_weights": ""}  # fmt: skip
    path = work / "params.yaml"
    atomic_write_text(path, yaml.safe_dump(params, sort_keys=False))
    return path


def notebooks(plan: Plan, files: dict, work: Path) -> Callable[[dict, float], None]:
    def body(result: dict, deadline: float) -> None:
        params = load_params_file(notebook_params(plan, files, work))
        result["notebooks"] = {}
        failed = []
        for number in plan.notebooks:
            if deadline - time.perf_counter() < 10:
                result["notebooks"][number] = {"skipped": "the section's budget is spent"}
                failed.append(number)
                continue
            started = time.perf_counter()
            result["notebooks"][number] = {"error": "did not finish (stopped at the section's budget)"}
            try:
                ((path, seconds),) = run_notebooks("xl", True, params, [number], output_dir=work / "executed",
                                                   progress=False, figures_dir=work / "figures")  # fmt: skip
                result["notebooks"][number] = {"name": path.name, "seconds": round(seconds, 2)}
            except SectionTimeout:
                raise
            except Exception as exc:  # noqa: BLE001 - one notebook's failure is recorded, the next one runs
                result["notebooks"][number] = {"error": f"{type(exc).__name__}: {exc}"[:1500]}
                failed.append(number)
            print(f"[notebooks] {number}: {time.perf_counter() - started:.1f} s", flush=True)
        result["figures"] = sorted(p.name for p in (work / "figures").glob("*.png"))
        if failed:
            raise RuntimeError(f"notebook(s) {', '.join(failed)} did not run; see result.notebooks")

    return body


def eval_sample(plan: Plan, files: dict, work: Path) -> Callable[[dict, float], None]:
    def body(result: dict, deadline: float) -> None:
        out = work / "eval_sample"
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(plan.eval_procs),
            "-m", "goc_utils.cli", "eval-sample", "--model", plan.model, "--ckpt", files["ckpt"],
            "--steps", str(plan.steps), "--num-samples", str(plan.eval_samples),
            "--per-device-batch", str(max(1, plan.eval_samples // (2 * plan.eval_procs))), "--method", "l2c+goc",
            "--router", files["router"], "--device", plan.device, "--out", str(out),
        ] + (["--vae", files["vae"]] if "vae" in files else [])  # fmt: skip
        result["command"] = "torchrun " + " ".join(cmd[3:])
        started = time.perf_counter()
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True) as proc:  # fmt: skip
            try:
                output, _ = proc.communicate(timeout=max(deadline - time.perf_counter() - 2, 1))
            except BaseException:
                os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers: the group this call started
                proc.wait()
                raise
        result["seconds"] = round(time.perf_counter() - started, 2)
        result["output_tail"] = output.strip().splitlines()[-5:]
        if proc.returncode:
            raise RuntimeError(f"torchrun exited {proc.returncode}: {output.strip()[-1500:]}")
        with np.load(out / "samples.npz") as data:
            images = data["arr_0"]
        result |= {"samples_shape": list(images.shape), "dtype": str(images.dtype),
                   "s_per_sample": round(result["seconds"] / len(images), 3)}  # fmt: skip
        if len(images) != plan.eval_samples or images.dtype != np.uint8:
            raise RuntimeError(f"samples.npz holds {images.shape} {images.dtype}, not {plan.eval_samples} uint8 images")

    return body


# ----------------------------------------------------------------------------- report


def number(value: float | None, spec: str, suffix: str = "") -> str:
    """``value`` formatted with ``spec`` (empty for None)."""
    return "" if value is None else f"{value:{spec}}{suffix}"


def summary(report: dict) -> str:
    """The markdown summary of a report."""
    sections = report["sections"]
    steps = report["plan"]["steps"]
    lines = [
        f"# GPU check: {report['model']} on {report['device_name']} ({report['date']})",
        "",
        f"torch {report['torch']}{', dry run' if report['dry_run'] else ''}; elapsed {report['elapsed_s']:.0f} s. "
        f"Times are seconds per image-run (DDIM-{steps}, cfg 4, CFG doubling the batch). GEMM limit: the model's "
        "matrix products alone at the same shapes, the cached units' MACs share left out.",
        "",
        "| section | status | seconds | budget s | error |",
        "|---|---|---|---|---|",
    ]
    for name, s in sections.items():
        error = (s.get("error") or "").splitlines()[:1]
        lines.append(f"| {name} | {s['status']} | {s['seconds']:.1f} | {s['budget_s']:.0f} | {''.join(error)[:160]} |")
    gemm_runs = sections.get("gemm", {}).get("result", {}).get("runs", [])
    if gemm_runs:
        lines += [
            "",
            "| GEMMs: batch | TF32 | always s | attention s | MLP s | s per image-run |",
            "|---|---|---|---|---|---|",
        ]
        for r in gemm_runs:
            s = r["seconds_per_run"]
            lines.append(f"| {r['batch']} | {r['tf32']} | {s['always']:.4f} | {s['attention']:.4f} | {s['mlp']:.4f} | "
                         f"{r['s_per_image_run']:.4f} |")  # fmt: skip
    rows = []
    for run in sections.get("bench", {}).get("result", {}).get("runs", []):
        where = f"| {run['backend']} | {run['tf32']} | {run['batch']} |"
        if "rows" not in run:
            rows.append(f"{where} {run.get('skipped') or 'failed'} | | | | | | | |")
            continue
        for r in run["rows"]:
            limit = gemm_limit(gemm_runs, run["batch"], run["tf32"], r["cache_ratio_macs"])
            rows.append(
                f"{where} {r['method']}{' (compiled)' if r['compiled'] else ''} | {r['median_s'] / run['batch']:.4f} | "
                f"{number(limit, '.4f')} | {r['measured_speedup']:.3f}x | {r['theoretical_speedup']:.3f}x | "
                f"{number(r['overhead_vs_host'] and 100 * r['overhead_vs_host'], '+.1f', '%')} | "
                f"{number(r['speedup_vs_eager'], '.3f', 'x')} | {number(r['compile_s'], '.1f')} |"
            )
    if rows:
        lines += [
            "",
            "| backend | TF32 | batch | method | median s | GEMM limit s | speedup | MACs speedup | overhead vs host "
            "| vs eager | compile s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    notebooks_run = sections.get("notebooks", {}).get("result", {}).get("notebooks", {})
    if notebooks_run:
        lines += ["", "| notebook | seconds (or what stopped it) |", "|---|---|"]
        lines += [f"| {k} | {v.get('seconds', v.get('error', v.get('skipped')))} |" for k, v in notebooks_run.items()]
    sampled = sections.get("eval_sample", {}).get("result", {})
    if "samples_shape" in sampled:
        lines += ["", f"eval-sample through torchrun: {sampled['samples_shape']} in {sampled['seconds']:.1f} s "
                  f"({sampled['s_per_sample']:.3f} s per sample, start-up and model loading included)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def finite_positive(report: dict) -> list[str]:
    """Where a timing of the report is not a positive finite number (empty when all are)."""
    bad = []
    for run in report["sections"].get("bench", {}).get("result", {}).get("runs", []):
        for r in run.get("rows", []):
            if not (math.isfinite(r["median_s"]) and r["median_s"] > 0):
                bad.append(f"bench {run['backend']} {run['batch']} {r['method']}")
    for run in report["sections"].get("gemm", {}).get("result", {}).get("runs", []):
        if not (math.isfinite(run["s_per_image_run"]) and run["s_per_image_run"] > 0):
            bad.append(f"gemm batch {run['batch']}")
    return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny-fashion, 4 steps, batch 1 (same code)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default benchmarks/results/gpu_check/; dry run: runs/gpu_check_dry/)",
    )
    parser.add_argument("--total-budget", type=float, default=None, help="seconds for the whole check (default 480)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the stand-ins (default: a temporary one)")
    parser.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="SECTION=SECONDS",
        help="a section's budget, e.g. notebooks=300 (repeatable; setup, gemm, eval_sample, notebooks, bench)",
    )
    parser.add_argument("--only", default=None, help="comma-separated sections to run (setup always runs)")
    args = parser.parse_args()
    plan = DRY_RUN if args.dry_run else Plan()
    budgets = dict(plan.budgets)
    for text in args.budget:
        name, _, seconds = text.partition("=")
        if name not in budgets or not seconds.replace(".", "", 1).isdigit():
            parser.error(f"--budget {text!r}: give SECTION=SECONDS with SECTION one of {', '.join(budgets)}")
        budgets[name] = float(seconds)
    plan = Plan(**(asdict(plan) | {"budgets": budgets, "total_budget": args.total_budget or plan.total_budget}))
    out = args.out or (
        paths.RUNS_DIR / "gpu_check_dry" if args.dry_run else Path(__file__).parent / "results" / "gpu_check"
    )
    if plan.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --dry-run on a CPU")
    # notebook kernels and torchrun's workers import goc_utils from this checkout, installed or not
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(paths.PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    torch.set_grad_enabled(False)
    started = time.perf_counter()
    report = {
        "model": plan.model, "dry_run": args.dry_run, "device": plan.device,
        "device_name": torch.cuda.get_device_name() if plan.device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "cpu_count": os.cpu_count(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv),
        "plan": asdict(plan), "sections": {},
    }  # fmt: skip
    files: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu_check_")))
        work.mkdir(parents=True, exist_ok=True)
        vae = ("vae",) if preset_info(plan.model).latent else ()
        sections = (  # name, what makes its body, the stand-ins it needs (the bench runs last: it takes the rest)
            ("setup", setup, ()),
            ("gemm", gemm, ()),
            ("eval_sample", eval_sample, ("ckpt", "router", *vae)),
            ("notebooks", notebooks, ("ckpt", "router", "diffusers_dir", *vae)),
            ("bench", bench, ("router",)),
        )
        only = set(args.only.split(",")) | {"setup"} if args.only else {name for name, _, _ in sections}
        if only - {name for name, _, _ in sections}:
            parser.error(f"--only {args.only!r}: choose from {', '.join(name for name, _, _ in sections)}")
        for name, make, needs in [section for section in sections if section[0] in only]:
            budget = budgets[name]
            if name == "bench":
                budget = max(budget, plan.total_budget - (time.perf_counter() - started))
            missing = [k for k in needs if k not in files]
            if missing:
                error = f"setup made no {', '.join(missing)}"
                report["sections"][name] = {"status": "failed", "error": error, "seconds": 0.0, "budget_s": budget}
                continue
            run_section(report, name, budget, make(plan, files, work))
    bad = finite_positive(report)
    if bad:
        report["sections"]["bench"]["status"] = "failed"
        report["sections"]["bench"]["error"] = f"timings not positive and finite: {', '.join(bad)}"
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    failed = [name for name, s in report["sections"].items() if s["status"] != "ok"]
    report["failed_sections"] = failed
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "gpu_check.json", json.dumps(report, indent=2, default=str) + "\n")
    atomic_write_text(out / "gpu_check.md", summary(report))
    print(f"gpu_check: {len(report['sections'])} sections, failed: {', '.join(failed) or 'none'}; "
          f"elapsed {report['elapsed_s']:.1f} s; results in {out}", flush=True)  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
