"""Peak memory and time of prior extraction vs plain sampling (issue: memory must not grow with classes).

Each configuration runs in a fresh subprocess so that peak resident memory (``ru_maxrss``)
and, on CUDA, ``torch.cuda.max_memory_allocated`` belong to it alone:

* ``plain``: un-cached sampling of one batch of ``--batch`` labels (the baseline);
* ``priors-8`` / ``priors-64``: ``extract_priors`` over 8 / 64 samples in batches of ``--batch``.

Usage: ``python benchmarks/priors_memory.py --model tiny-digits`` or
``python benchmarks/priors_memory.py --model DiT-XL/2 --random-weights --steps 4 --device cuda``.
Prints one JSON object (MiB, seconds, ratios to plain sampling).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _child(args: argparse.Namespace) -> dict:
    import torch

    from goc_utils.model.checkpoints import load_model
    from goc_utils.model.presets import create_model
    from goc_utils.model.sampler import generate
    from goc_utils.priors.extraction import extract_priors

    torch.set_grad_enabled(False)
    if args.random_weights:
        torch.manual_seed(0)
        model = create_model(args.model).to(args.device).eval()
    else:
        model = load_model(args.model, device=args.device)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    n = args.samples
    classes = [i % model.num_classes for i in range(n)]
    if args.mode == "plain":
        generate(model, classes[: args.batch], steps=args.steps, cfg_scale=4.0)
    else:
        # distinct (class, seed) pairs: seeds cycle when there are fewer classes than samples
        per_class = -(-n // model.num_classes) if n > model.num_classes else 1
        wanted = list(range(min(n, model.num_classes)))
        extract_priors(
            model,
            args.model,
            wanted,
            seeds=list(range(per_class)),
            steps=args.steps,
            batch_size=args.batch,
            progress=False,
        )
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    out = {
        "seconds": round(time.perf_counter() - start, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if args.device.startswith("cuda"):
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-digits")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", choices=["plain", "priors"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode is not None:
        print(json.dumps(_child(args)))
        return
    base = [
        sys.executable,
        __file__,
        "--model",
        args.model,
        "--steps",
        str(args.steps),
        "--batch",
        str(args.batch),
        "--device",
        args.device,
    ] + (["--random-weights"] if args.random_weights else [])
    report = {"model": args.model, "steps": args.steps, "batch": args.batch, "device": args.device}
    for name, extra in (
        ("plain", ["--mode", "plain"]),
        ("priors-8", ["--mode", "priors", "--samples", "8"]),
        ("priors-64", ["--mode", "priors", "--samples", "64"]),
    ):
        done = subprocess.run(base + extra, capture_output=True, text=True, check=True)
        report[name] = json.loads(done.stdout.strip().splitlines()[-1])
    key = "peak_cuda_mib" if "peak_cuda_mib" in report["plain"] else "peak_rss_mib"
    for name in ("priors-8", "priors-64"):
        report[f"{name}_vs_plain_{key}"] = round(report[name][key] / report["plain"][key], 3)
    report["growth_8_to_64"] = round(report["priors-64"]["peak_rss_mib"] / report["priors-8"]["peak_rss_mib"], 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
