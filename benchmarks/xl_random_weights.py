"""DiT-XL/2 through the study's code path with random weights (nothing downloaded).

Builds DiT-XL/2 (and, with diffusers, the sd-vae-ft architecture) with random weights,
saves the DiT as a checkpoint, then:

1. times ``generate`` (DDIM, cfg 4.0, batch of B labels -> CFG batch 2B) per image;
2. checks that two runs with one seed give identical samples on this device;
3. runs ``goc sample`` end to end on that checkpoint and the random VAE.

Prints one JSON object. Usage: ``python benchmarks/xl_random_weights.py --device cuda``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from goc_utils.model.presets import count_parameters, create_model
from goc_utils.model.sampler import generate
from goc_utils.model.vae import SD_VAE_CONFIG


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cli", action="store_true", help="also run `goc sample` end to end")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    report: dict = {"device": args.device, "torch": torch.__version__}
    if args.device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name()
    torch.manual_seed(0)
    model = create_model("DiT-XL/2").to(args.device).eval()
    report["params"] = count_parameters(model)
    for b in args.batch:
        labels = list(range(b))
        generate(model, labels, seed=0, steps=2, cfg_scale=4.0)  # warm-up
        times = []
        for _ in range(args.repeats):
            _sync(args.device)
            start = time.perf_counter()
            generate(model, labels, seed=0, steps=args.steps, cfg_scale=4.0)
            _sync(args.device)
            times.append(time.perf_counter() - start)
        times.sort()
        report[f"ddim{args.steps}_cfg4_batch{b}_s"] = round(times[len(times) // 2], 4)
        report[f"ddim{args.steps}_cfg4_batch{b}_s_per_image"] = round(times[len(times) // 2] / b, 4)
    a = generate(model, [207, 360], seed=3, steps=args.steps, cfg_scale=4.0)
    b2 = generate(model, [207, 360], seed=3, steps=args.steps, cfg_scale=4.0)
    report["same_seed_identical"] = bool(torch.equal(a.final, b2.final))
    if args.cli:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / "xl_random.pt"
            torch.save({k: v.cpu() for k, v in model.state_dict().items()}, ckpt)
            del model
            from diffusers import AutoencoderKL

            vae = AutoencoderKL(**SD_VAE_CONFIG)  # the sd-vae-ft-ema architecture, random weights
            vae.save_pretrained(Path(tmp) / "vae")
            cmd = [
                sys.executable,
                "-m",
                "goc_utils.cli",
                "sample",
                "--model",
                "DiT-XL/2",
                "--ckpt",
                str(ckpt),
                "--vae",
                str(Path(tmp) / "vae"),
                "--steps",
                str(args.steps),
                "--cfg-scale",
                "4.0",
                "--classes",
                "207,360,387,974,88,979,417,279",
                "--out",
                str(Path(tmp) / "grid.png"),
                "--save-npz",
                str(Path(tmp) / "s.npz"),
                "--device",
                args.device,
            ]
            start = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True)
            report["cli_seconds"] = round(time.perf_counter() - start, 2)
            report["cli_returncode"] = done.returncode
            report["cli_stdout"] = done.stdout.strip().splitlines()[-1:] if done.stdout else []
            report["cli_stderr_tail"] = done.stderr.strip().splitlines()[-3:] if done.returncode else []
            if done.returncode == 0:
                import numpy as np

                with np.load(Path(tmp) / "s.npz") as data:
                    report["cli_npz_shape"] = list(data["arr_0"].shape)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
