"""The ``goc`` command: thin argument parsing over ``goc_utils``.

Every user error is printed as one line ``goc <command>: error: <what and how to fix>``
with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from goc_utils.errors import GocError, InvalidArgumentError


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are a single line (no usage block)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def _parse_classes(text: str) -> list[int]:
    """``"207,992,387"`` or ``"0-9"`` (inclusive ranges) -> class ids."""
    classes: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                classes.extend(range(int(lo), int(hi) + 1))
            elif part:
                classes.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"malformed class list {text!r}; use e.g. 3,5,7 or 0-9") from None
    if not classes:
        raise argparse.ArgumentTypeError(f"empty class list {text!r}; use e.g. 3,5,7 or 0-9")
    return classes


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidArgumentError(f"--device {name} requested but no CUDA GPU is visible; use --device cpu")
    return name


def _check_writable(path: Path, flag: str) -> Path:
    """Create the parent folder if needed and make sure a file can be written there."""
    path = path.expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidArgumentError(f"{flag} {str(path)!r}: cannot create its folder ({exc.strerror})") from None
    if path.is_dir():
        raise InvalidArgumentError(f"{flag} {str(path)!r} is a folder; give a file name")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InvalidArgumentError(f"{flag} {str(path)!r} is not writable; choose another path")
    return path


# --------------------------------------------------------------------------------------
# goc sample
# --------------------------------------------------------------------------------------


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from goc_utils.models import load_model, preset_info
    from goc_utils.sampling import class_labels, generate, save_samples_npz
    from goc_utils.viz import save_image_grid

    info = preset_info(args.model)
    out = _check_writable(Path(args.out), "--out")
    npz = _check_writable(Path(args.save_npz), "--save-npz") if args.save_npz else None
    if args.steps < 1:
        raise InvalidArgumentError(f"--steps must be >= 1 (got {args.steps})")
    if not args.cfg_scale >= 0:
        raise InvalidArgumentError(f"--cfg-scale must be a number >= 0 (got {args.cfg_scale}); 1.0 disables guidance")
    device = _resolve_device(args.device)
    torch.set_grad_enabled(False)
    model = load_model(args.model, args.ckpt, args.image_size, device)
    labels = class_labels(args.classes, args.per_class)
    bad = [c for c in labels if not 0 <= c < model.num_classes]
    if bad:
        raise InvalidArgumentError(
            f"class id {bad[0]} is out of range for {args.model}; use 0..{model.num_classes - 1}"
        )
    vae = None
    if info.latent:
        from goc_utils.vae import load_vae

        vae = load_vae(args.vae, device)
    started = time.perf_counter()
    result = generate(
        model,
        labels,
        seed=args.seed,
        steps=args.steps,
        sampler=args.sampler,
        cfg_scale=args.cfg_scale,
        vae=vae,
        progress=True,
    )
    elapsed = time.perf_counter() - started
    nrow = args.per_class if args.per_class > 1 else min(len(labels), 16)
    save_image_grid(result.images, out, nrow=nrow, upscale=args.upscale or (4 if not info.latent else 1))
    if npz is not None:
        save_samples_npz(npz, result)
    print(
        f"sampled {len(labels)} images ({args.model}, {args.sampler}-{args.steps}, cfg {args.cfg_scale}, "
        f"seed {args.seed}) in {elapsed:.2f} s ({len(labels) / elapsed:.1f} images/s) -> {out}"
        + (f", {npz}" if npz else "")
    )
    return 0


def add_sample_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="sample a class-conditional image grid (and an ADM-format npz)",
        description="Sample images from a DiT preset with DiT's sampler and classifier-free guidance.",
    )
    p.add_argument("--model", default="tiny-digits", help="preset: tiny-digits, DiT-XL/2, ... (default tiny-digits)")
    p.add_argument(
        "--ckpt",
        default=None,
        help="DiT weights (.pt / train.py checkpoint / .safetensors); default: the committed weights of tiny-digits",
    )
    p.add_argument("--vae", default="ema", help="latent presets: ema | mse | local folder | hub id (default ema)")
    p.add_argument("--image-size", type=int, default=None, help="pixels (256 or 512 for DiT-XL/2; 8 for tiny-digits)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps after respacing (default 20)")
    p.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim", help="ddim (eta 0) or ddpm (default ddim)")
    p.add_argument(
        "--cfg-scale", type=_float, default=4.0, help="classifier-free guidance scale; 1 = off (default 4.0)"
    )
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument(
        "--classes",
        type=_parse_classes,
        default=_parse_classes("0-9"),
        help="class ids, e.g. 207,992,387 or 0-9 (default 0-9)",
    )
    p.add_argument("--per-class", type=int, default=1, help="samples per class (default 1)")
    p.add_argument("--out", default="samples.png", help="grid PNG to write (default samples.png)")
    p.add_argument("--save-npz", default=None, help="also write arr_0 (uint8 NHWC), labels, final (float32)")
    p.add_argument("--upscale", type=int, default=None, help="grid pixel upscaling (default 4 for pixel presets)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i] (default auto)")
    p.set_defaults(func=cmd_sample)


# --------------------------------------------------------------------------------------
# goc info
# --------------------------------------------------------------------------------------


def model_info(name: str, image_size: int | None = None) -> dict:
    """Architecture facts of a preset, built on the meta device (no memory, no weights)."""
    import torch

    from goc_utils.models import count_parameters, create_model, preset_info

    info = preset_info(name)
    with torch.device("meta"):
        model = create_model(name, image_size)
    out = {
        "model": name,
        "depth": model.depth,
        "hidden_size": model.hidden_size,
        "num_heads": model.num_heads,
        "patch_size": model.patch_size,
        "input_size": model.input_size,
        "in_channels": model.in_channels,
        "num_classes": model.num_classes,
        "learn_sigma": model.learn_sigma,
        "tokens": model.num_tokens,
        "params": count_parameters(model),
        "latent": info.latent,
        "image_size": image_size or info.default_image_size,
    }
    if info.checkpoint is not None:
        out["checkpoint"] = str(info.checkpoint)
    return out


def cmd_info(args: argparse.Namespace) -> int:
    print(json.dumps(model_info(args.model, args.image_size), indent=2))
    return 0


def add_info_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info", help="print a preset's architecture as JSON", description="Print a preset's facts as JSON."
    )
    p.add_argument("--model", default="tiny-digits", help="preset name (default tiny-digits)")
    p.add_argument("--image-size", type=int, default=None, help="pixels (default: the preset's)")
    p.set_defaults(func=cmd_info)


# --------------------------------------------------------------------------------------
# goc train-tiny / train-classifier
# --------------------------------------------------------------------------------------


def cmd_train_tiny(args: argparse.Namespace) -> int:
    from goc_utils.training import TinyTrainConfig, train_tiny_dit

    if args.train_steps < 1 or args.batch_size < 1 or not args.lr > 0:
        raise InvalidArgumentError("--train-steps and --batch-size must be >= 1 and --lr > 0")
    config = TinyTrainConfig(
        steps=args.train_steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, threads=args.threads
    )
    out = train_tiny_dit(config, Path(args.run_dir) if args.run_dir else None, Path(args.out) if args.out else None)
    print(f"EMA weights -> {out}")
    return 0


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from goc_utils.training import train_digits_classifier

    out, accuracy = train_digits_classifier(
        epochs=args.epochs, seed=args.seed, out=Path(args.out) if args.out else None
    )
    print(f"digits classifier: held-out accuracy {accuracy:.4f} -> {out}")
    return 0


def add_train_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-tiny",
        help="train (or resume) the embedded tiny-digits DiT",
        description="Train the tiny-digits DiT with DiT's objective; resumes from RUN_DIR/checkpoint.pt.",
    )
    p.add_argument("--train-steps", type=int, default=20_000, help="total optimiser steps (default 20000)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--lr", type=_float, default=4e-4, help="AdamW learning rate (default 4e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--run-dir", default=None, help="checkpoints and log (default runs/train_tiny)")
    p.add_argument("--out", default=None, help="exported EMA weights (default data/tiny_digits_dit_ema.safetensors)")
    p.set_defaults(func=cmd_train_tiny)

    p = sub.add_parser(
        "train-classifier",
        help="train the digits classifier (tiny study's feature extractor)",
        description="Train the digits CNN on 80%% of the digits and report held-out accuracy.",
    )
    p.add_argument("--epochs", type=int, default=60, help="epochs (default 60)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--out", default=None, help="weights (default data/digits_classifier.safetensors)")
    p.set_defaults(func=cmd_train_classifier)


def cmd_tiny_report(args: argparse.Namespace) -> int:
    from goc_utils.study import tiny_digits_report

    if args.per_class < 1 or args.steps < 1:
        raise InvalidArgumentError("--per-class and --steps must be >= 1")
    rows = tiny_digits_report(
        per_class=args.per_class,
        steps=args.steps,
        seed=args.seed,
        ckpt=args.ckpt,
        out_dir=Path(args.out_dir) if args.out_dir else None,
    )
    for r in rows:
        print(
            f"cfg {r.cfg_scale:g}: classifier agreement {100 * r.agreement:.1f}% on {r.samples} samples "
            f"({r.images_per_second:.0f} images/s)"
        )
    return 0


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tiny-report",
        help="sample tiny-digits at cfg 1.5 / 4.0, judge with the classifier",
        description="Writes figures/00_tiny_samples.png and figures/00_tiny_agreement.md.",
    )
    p.add_argument("--per-class", type=int, default=50, help="samples per digit and cfg scale (default 50)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--ckpt", default=None, help="weights (default: the committed tiny-digits EMA)")
    p.add_argument("--out-dir", default=None, help="output folder (default figures/)")
    p.set_defaults(func=cmd_tiny_report)


# --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="goc", description="goc-study: Gradient-Optimized Cache for Diffusion Transformers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    add_sample_parser(sub)
    add_info_parser(sub)
    add_train_parsers(sub)
    add_report_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except GocError as exc:
        print(f"goc {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"goc {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
