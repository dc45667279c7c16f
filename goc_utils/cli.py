"""The ``goc`` command: thin argument parsing over ``goc_utils``.

Every user error is printed as one line ``goc <command>: error: <what and how to fix>``
with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
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
    from goc_utils.study import parse_classes

    try:
        return parse_classes(text)
    except InvalidArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _weight(text: str) -> float | str:
    return "auto" if text.strip() == "auto" else _float(text)


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


def _parse_range(text: str) -> tuple[int, int | None]:
    """``"a:b"`` -> (a, b); ``"a:"`` -> (a, None)."""
    try:
        start, stop = text.split(":")
        return int(start or 0), (int(stop) if stop else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"malformed step range {text!r}; use a:b, e.g. 2:18") from None


def _parse_steps(text: str) -> list[int] | str:
    if text.strip() == "auto":
        return "auto"
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"malformed step list {text!r}; use e.g. 3,5,7,9 or auto") from None


def cache_method_from_args(args: argparse.Namespace):
    """Build a :class:`~goc_utils.cache.method.CacheMethod` from ``goc sample`` flags (one-line errors)."""
    from goc_utils.cache.method import CacheMethod

    def _only_with(flag: str, value, needed: bool, requirement: str) -> None:
        if value is not None and not needed:
            raise InvalidArgumentError(f"{flag} needs {requirement}")

    _only_with("--fora-interval", args.fora_interval, args.cache == "fora", "--cache fora")
    _only_with("--fora-range", args.fora_range, args.cache == "fora", "--cache fora")
    _only_with("--matrix", args.matrix, args.cache == "matrix", "--cache matrix")
    _only_with("--router", args.router, args.cache == "l2c", "--cache l2c")
    _only_with("--router-thres", args.router_thres, args.cache == "l2c", "--cache l2c")
    _only_with("--goc-weight", args.goc_weight, args.compensator == "goc", "--compensator goc")
    _only_with("--goc-steps", args.goc_steps, args.compensator == "goc", "--compensator goc")
    _only_with("--goc-coupling", args.goc_coupling, args.compensator == "goc", "--compensator goc")
    _only_with("--taylor-order", args.taylor_order, args.compensator == "taylor", "--compensator taylor")
    options: dict = {}
    if args.cache == "fora":
        interval = 2 if args.fora_interval is None else args.fora_interval
        if interval < 1:
            raise InvalidArgumentError(f"--fora-interval must be >= 1 (got {interval})")
        options["interval"] = interval
        if args.fora_range is not None:
            options["start"], options["stop"] = args.fora_range
    elif args.cache == "matrix":
        if args.matrix is None:
            raise InvalidArgumentError("--cache matrix needs --matrix PATH (.json/.csv/.npy, rows = steps)")
        options["path"] = args.matrix
    elif args.cache == "l2c":
        if args.router is None:
            raise InvalidArgumentError("--cache l2c needs --router PATH (a Learning-to-Cache router checkpoint)")
        thres = 0.1 if args.router_thres is None else args.router_thres
        if not 0.0 <= thres <= 1.0:
            raise InvalidArgumentError(f"--router-thres must be in [0, 1] (got {thres})")
        options.update(router=args.router, thres=thres)
    comp: dict = {}
    if args.goc_weight is not None:
        if args.goc_weight != "auto" and not math.isfinite(args.goc_weight):
            raise InvalidArgumentError(f"--goc-weight must be a finite number (got {args.goc_weight})")
        comp["weight"] = args.goc_weight
    if args.goc_steps is not None:
        comp["correction_steps"] = args.goc_steps
    if args.goc_coupling is not None:
        comp["coupling"] = args.goc_coupling
    if args.taylor_order is not None:
        comp["order"] = args.taylor_order
    return CacheMethod(args.cache, options, args.compensator, comp)


def _priors_for(args: argparse.Namespace, method, model):
    """The priors a GOC 'auto' option needs (checked against the run), else None."""
    if "auto" not in (method.compensator_options.get("weight"), method.compensator_options.get("correction_steps")):
        if args.priors is not None:
            raise InvalidArgumentError("--priors needs --goc-steps auto or --goc-weight auto")
        return None
    from goc_utils.priors import priors_for_run

    return priors_for_run(args.model, model, args.steps, args.cfg_scale, args.priors)


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from goc_utils.macs import model_macs, theoretical_speedup
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
    method = cache_method_from_args(args)
    device = _resolve_device(args.device)
    torch.set_grad_enabled(False)
    model = load_model(args.model, args.ckpt, args.image_size, device)
    labels = class_labels(args.classes, args.per_class)
    bad = [c for c in labels if not 0 <= c < model.num_classes]
    if bad:
        raise InvalidArgumentError(
            f"class id {bad[0]} is out of range for {args.model}; use 0..{model.num_classes - 1}"
        )
    engine = method.engine(model, args.steps, _priors_for(args, method, model))
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
        forward=engine.forward,
        progress=True,
    )
    elapsed = time.perf_counter() - started
    nrow = args.per_class if args.per_class > 1 else min(len(labels), 16)
    save_image_grid(result.images, out, nrow=nrow, upscale=args.upscale or (4 if not info.latent else 1))
    if npz is not None:
        save_samples_npz(npz, result)
    schedule, macs = engine.schedule, model_macs(model)
    config = getattr(engine.compensator, "config", None)
    if method.compensator == "goc" and isinstance(config.weight, float):
        steps = "every reused step" if config.correction_steps is None else ",".join(map(str, config.correction_steps))
        print(f"GOC: w = {config.weight:.4g}, correction steps {steps}, {config.coupling} coupling")
    print(
        f"cache {method.label()} ({schedule.name}): {100 * schedule.cache_ratio:.1f}% of unit-steps reused, "
        f"{100 * schedule.cache_ratio_macs(macs.units):.1f}% of branch MACs, "
        f"theoretical speedup {theoretical_speedup(macs, schedule):.3f}x"
    )
    print(
        f"sampled {len(labels)} images ({args.model}, {args.sampler}-{args.steps}, cfg {args.cfg_scale}, "
        f"seed {args.seed}) in {elapsed:.2f} s ({len(labels) / elapsed:.1f} images/s) -> {out}"
        + (f", {npz}" if npz else "")
    )
    return 0


def _add_model_arguments(p: argparse.ArgumentParser, vae: bool = True) -> None:
    """The flags every model-running command shares: preset, weights, VAE, image size, device."""
    p.add_argument("--model", default="tiny-digits", help="preset: tiny-digits, DiT-XL/2, ... (default tiny-digits)")
    p.add_argument(
        "--ckpt",
        default=None,
        help="DiT weights (.pt / train.py checkpoint / .safetensors); "
        "default: the preset's committed weights (tiny-digits)",
    )
    if vae:
        p.add_argument("--vae", default="ema", help="latent presets: ema | mse | local folder | hub id (default ema)")
    p.add_argument("--image-size", type=int, default=None, help="pixels (256 or 512 for DiT-XL/2; 8 for tiny-digits)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i] (default auto)")


def add_sample_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="sample a class-conditional image grid (and an ADM-format npz)",
        description="Sample images from a DiT preset with DiT's sampler and classifier-free guidance.",
    )
    _add_model_arguments(p)
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
    g = p.add_argument_group("feature caching (schedule x compensator)")
    g.add_argument(
        "--cache",
        choices=["none", "fora", "fora-25", "fora-50", "matrix", "l2c"],
        default="none",
        help="which units are reused when (default none)",
    )
    g.add_argument("--fora-interval", type=int, default=None, help="fora: refresh every N steps (default 2)")
    g.add_argument("--fora-range", type=_parse_range, default=None, help="fora: cache only in steps a:b")
    g.add_argument("--matrix", default=None, help="matrix: 0/1 table (.json/.csv/.npy), rows = steps, 1 = recompute")
    g.add_argument("--router", default=None, help="l2c: Learning-to-Cache router checkpoint")
    g.add_argument("--router-thres", type=_float, default=None, help="l2c: recompute where score > T (default 0.1)")
    g.add_argument(
        "--compensator",
        choices=["none", "goc", "taylor"],
        default="none",
        help="what a reused unit returns: none = previous output (default), goc, taylor",
    )
    g.add_argument(
        "--goc-weight",
        type=_weight,
        default=None,
        help="goc: w, or auto (least squares on priors; default 1.2 with FORA, 0.8 with L2C)",
    )
    g.add_argument(
        "--goc-steps",
        type=_parse_steps,
        default=None,
        help="goc: correction steps, e.g. 3,5,7,9, or auto (inflection-aware, from priors; default: the paper's "
        "list for the schedule)",
    )
    g.add_argument(
        "--goc-coupling",
        choices=["block", "unit"],
        default=None,
        help="goc: correct a unit only when its whole block is reused (block, the published default) or each unit "
        "on its own (unit)",
    )
    g.add_argument(
        "--priors",
        default=None,
        help="goc auto: priors file (default data/priors/<model>_ddim<steps>_cfg<cfg>.safetensors)",
    )
    g.add_argument("--taylor-order", type=int, default=None, help="taylor: forecast order k (default 1)")
    p.set_defaults(func=cmd_sample)


# --------------------------------------------------------------------------------------
# goc info
# --------------------------------------------------------------------------------------


def model_info(name: str, image_size: int | None = None) -> dict:
    """Architecture facts of a preset, built on the meta device (no memory, no weights)."""
    import torch

    from goc_utils.macs import model_macs
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
    macs = model_macs(model)
    out.update(
        macs_forward=macs.forward,
        macs_attention_branch=macs.attention_branch,
        macs_mlp_branch=macs.mlp_branch,
        macs_adaln_per_block=macs.adaln_per_block,
    )
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


def cmd_train_router(args: argparse.Namespace) -> int:
    import torch

    from goc_utils.cache.l2c import router_mask
    from goc_utils.cache.l2c_training import (
        RouterTrainConfig,
        image_folder_batches,
        save_router,
        tensor_batches,
        train_router,
    )
    from goc_utils.cache.schedule import CacheSchedule
    from goc_utils.macs import model_macs
    from goc_utils.models import load_model, preset_info

    out = _check_writable(Path(args.out), "--out")
    config = RouterTrainConfig(
        steps=args.steps,
        train_steps=args.train_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        l1=args.l1,
        seed=args.seed,
    )
    device = _resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, args.ckpt, args.image_size, device)
    if preset_info(args.model).latent:
        if args.data is None:
            raise InvalidArgumentError(f"{args.model} routers train on images: pass --data DIR (ImageNet-style folder)")
        from goc_utils.vae import load_vae

        image_size = args.image_size or preset_info(args.model).default_image_size
        batches = image_folder_batches(args.data, image_size, load_vae(args.vae, device), device)
    else:
        from goc_utils.data import load_digits_tensors

        batches = tensor_batches(*load_digits_tensors())
    logits, opt_state = train_router(model, batches, config)
    save_router(out, logits, opt_state, config, args.model)
    schedule = CacheSchedule(router_mask(logits.numpy(), 0.1), name="l2c@0.1")
    macs = model_macs(model)
    print(
        f"router -> {out}: at thres 0.1 it reuses {schedule.reused_units} of {schedule.mask.size} unit-steps "
        f"({100 * schedule.cache_ratio:.1f}%; {100 * schedule.cache_ratio_macs(macs.units):.1f}% of branch MACs)"
    )
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
        "train-router",
        help="train Learning-to-Cache routers (L2C objective, frozen DiT)",
        description="Train one router per sampling step; writes L2C's official checkpoint format.",
    )
    _add_model_arguments(p)
    p.add_argument("--data", default=None, help="latent presets: ImageNet-style image folder")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps the routers are for (default 20)")
    p.add_argument("--train-steps", type=int, default=2000, help="optimiser steps (default 2000)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--lr", type=_float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--l1", type=_float, default=5e-6, help="weight of the sum of router scores (default 5e-6)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", required=True, help="router checkpoint to write (.pt)")
    p.set_defaults(func=cmd_train_router)

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


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from goc_utils.bench import format_table, rows_as_dicts, run_bench
    from goc_utils.models import create_model, load_model

    device = _resolve_device(args.device)
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.random_weights:
        torch.manual_seed(0)
        model = create_model(args.model, args.image_size).to(device).eval()
    else:
        model = load_model(args.model, args.ckpt, args.image_size, device)
    methods = [m for m in args.methods.split(",") if m]
    if args.router is None:
        dropped = [m for m in methods if m.startswith("l2c")]
        methods = [m for m in methods if not m.startswith("l2c")]
        if dropped:
            print(f"(skipping {', '.join(dropped)}: no --router given)")
    priors = None
    if any(":" in m and "auto" in m for m in methods):
        from goc_utils.priors import PriorStats, default_priors_path

        priors = PriorStats.load(args.priors or default_priors_path(args.model, args.steps, args.cfg_scale))
    rows = run_bench(
        model,
        methods,
        steps=args.steps,
        batch=args.batch,
        cfg_scale=args.cfg_scale,
        repeats=args.repeats,
        warmup=args.warmup,
        router=args.router,
        thres=args.router_thres,
        priors=priors,
    )
    header = (
        f"goc bench: {args.model}{' (random weights)' if args.random_weights else ''}, {device}, "
        f"DDIM-{args.steps}, batch {args.batch}, cfg {args.cfg_scale}, {args.repeats} repeats"
    )
    if args.json:
        print(json.dumps({"setup": header, "rows": rows_as_dicts(rows)}, indent=2))
    else:
        print(header)
        print(format_table(rows))
    return 0


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    from goc_utils.bench import DEFAULT_METHODS

    p = sub.add_parser(
        "bench",
        help="latency of caching methods vs MACs-theoretical speedup",
        description="Time sampling under each caching method (warm-up, then repeats).",
    )
    _add_model_arguments(p, vae=False)
    p.add_argument("--random-weights", action="store_true", help="DiT-initialised random weights (timing only)")
    p.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help="comma-separated schedule[+compensator[:opt]], e.g. fora-50+goc:auto, fora-25+taylor:k=2",
    )
    p.add_argument("--router", default=None, help="L2C router for the l2c methods (skipped without one)")
    p.add_argument("--router-thres", type=_float, default=0.1, help="L2C threshold (default 0.1)")
    p.add_argument("--priors", default=None, help="priors for goc:auto methods (default data/priors/...)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    p.add_argument("--batch", type=int, default=1, help="images per run (default 1; CFG doubles it)")
    p.add_argument("--cfg-scale", type=_float, default=4.0, help="guidance scale (default 4.0)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per method (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_bench)


def cmd_notebooks(args: argparse.Namespace) -> int:
    from goc_utils.notebooks import figures_dir_for, load_params_file, run_notebooks

    only = [o.strip() for o in args.only.split(",")] if args.only else None
    started = time.perf_counter()
    figures = figures_dir_for(args.smoke, args.figures_dir)
    done = run_notebooks(args.preset, args.smoke, load_params_file(args.params), only, figures_dir=figures)
    for path, seconds in done:
        print(f"{path.name}: {seconds:.1f} s -> {path}")
    print(f"{len(done)} notebooks in {time.perf_counter() - started:.1f} s; figures in {figures}")
    return 0


def add_notebooks_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "notebooks",
        help="run the study notebooks headless (papermill)",
        description="Execute notebooks/NN_*.ipynb in order; executed copies go to runs/notebooks/.",
    )
    p.add_argument("--preset", choices=["tiny", "xl"], default="tiny", help="tiny (embedded model) or xl (DiT-XL/2)")
    p.add_argument("--smoke", action="store_true", help="fast mode (few samples), as in the tests")
    p.add_argument("--params", default=None, help="YAML file of parameter overrides (e.g. ckpt and vae for xl)")
    p.add_argument("--only", default=None, help="comma-separated notebook numbers, e.g. 01,03")
    p.add_argument(
        "--figures-dir",
        default=None,
        help="where figures and tables go (default: figures/; with --smoke: runs/smoke/figures/)",
    )
    p.set_defaults(func=cmd_notebooks)


def cmd_priors(args: argparse.Namespace) -> int:
    import torch

    from goc_utils.priors import PriorStats, default_priors_path, extract_priors

    out = Path(args.out) if args.out else None
    if args.merge:
        if out is None:
            raise InvalidArgumentError("--merge needs --out PATH for the merged file")
        _check_writable(out, "--out")
        stats = PriorStats.load(args.merge[0])
        for other in args.merge[1:]:
            stats.merge(PriorStats.load(other))
        stats.save(out)
        print(f"merged {len(args.merge)} files ({stats.count} samples) -> {out}")
        return 0
    out = _check_writable(out or default_priors_path(args.model, args.steps, args.cfg_scale), "--out")
    if args.steps < 1 or args.per_class < 1 or not args.cfg_scale >= 0:
        raise InvalidArgumentError("--steps and --per-class must be >= 1 and --cfg-scale >= 0")
    device = _resolve_device(args.device)
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model_from_args(args, device)
    classes = list(range(model.num_classes)) if args.classes == "all" else _parse_classes(args.classes)
    started = time.perf_counter()
    stats = extract_priors(
        model,
        args.model,
        classes,
        seeds=list(range(args.per_class)),
        steps=args.steps,
        cfg_scale=args.cfg_scale,
        batch_size=args.batch_size,
    )
    stats.save(out)
    print(
        f"priors of {stats.count} samples ({args.model}, DDIM-{args.steps}, cfg {args.cfg_scale:g}) in "
        f"{time.perf_counter() - started:.1f} s -> {out}"
    )
    return 0


def load_model_from_args(args: argparse.Namespace, device: str):
    from goc_utils.models import load_model

    return load_model(args.model, args.ckpt, args.image_size, device)


def cmd_inflections(args: argparse.Namespace) -> int:
    import numpy as np

    from goc_utils.cache.schedule import build_schedule
    from goc_utils.priors import PriorStats, auto_goc

    stats = PriorStats.load(args.priors)
    options = {"router": args.router, "thres": args.router_thres} if args.schedule == "l2c" else {}
    schedule = build_schedule(args.schedule, stats.steps, stats.depth, **options)
    weight = schedule.reference_weight if args.weight is None else args.weight
    auto = auto_goc(stats, schedule, "auto", weight, args.coupling, args.granularity, args.source)
    print(
        f"priors: {stats.model}, DDIM-{stats.steps}, cfg {stats.cfg_scale:g}, {stats.count} samples; "
        f"schedule {schedule.name} (reuses at steps {schedule.reuse_steps()}); {auto.coupling} coupling; "
        "replayed on the "
        + ("per-sample trajectories" if auto.source == "samples" else "class-averaged mean trajectory")
    )
    print(f"correction steps: {','.join(map(str, auto.steps)) or '(none)'}")
    print(f"inflection steps (correction skipped): {','.join(map(str, auto.inflections)) or '(none)'}")
    if isinstance(auto.weight, np.ndarray):
        w = auto.weight
        per_step = {s: round(float(w[s][w[s] != 0].mean()), 3) for s in auto.steps if (w[s] != 0).any()}
        print(f"weight ({args.granularity}): mean per step {per_step}")
    else:
        print(f"weight: {auto.weight:.4f}" + (" (least squares)" if args.weight == "auto" else ""))
    plain = auto.error_plain
    print(
        f"predicted error (MACs-weighted relative L2, summed over reused units): plain reuse {plain:.3f} -> "
        f"GOC {auto.error_auto:.3f} ({100 * (auto.error_auto / plain - 1):+.1f}%)"
    )
    if schedule.reference_correction_steps is not None:
        print(
            f"paper's hand-set steps {','.join(map(str, schedule.reference_correction_steps))} with "
            f"w={schedule.reference_weight}: GOC {auto.error_paper:.3f} ({100 * (auto.error_paper / plain - 1):+.1f}%)"
        )
    return 0


def add_priors_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "priors",
        help="extract block-feature priors (streaming statistics of un-cached sampling)",
        description="Un-cached sampling per (class, seed), statistics accumulated on the fly.",
    )
    _add_model_arguments(p, vae=False)
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    p.add_argument("--classes", default="all", help="all | 0-99 | 3,5 (default all)")
    p.add_argument("--per-class", type=int, default=1, help="samples (seeds 0..K-1) per class (default 1)")
    p.add_argument("--cfg-scale", type=_float, default=4.0, help="guidance scale (default 4.0, the paper's)")
    p.add_argument("--batch-size", type=int, default=16, help="samples per sampling batch (default 16)")
    p.add_argument("--out", default=None, help="priors file (default data/priors/<model>_ddim<steps>_cfg<cfg>...)")
    p.add_argument("--merge", nargs="+", default=None, metavar="FILE", help="merge shard files into --out instead")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=cmd_priors)

    p = sub.add_parser(
        "inflections",
        help="inflection-aware GOC steps and weight from a priors file",
        description="Replay GOC on the prior trajectory: correction steps, weight, predicted error.",
    )
    p.add_argument("priors", help="priors file from `goc priors`")
    p.add_argument("--schedule", choices=["fora-25", "fora-50", "l2c"], default="fora-50", help="host schedule")
    p.add_argument("--router", default=None, help="l2c: router checkpoint")
    p.add_argument("--router-thres", type=_float, default=0.1, help="l2c: threshold (default 0.1)")
    p.add_argument("--weight", type=_weight, default=None, help="w, or auto (least squares); default the paper's")
    p.add_argument(
        "--source",
        choices=["samples", "mean"],
        default=None,
        help="replay on the per-sample trajectories (default when the file has them) or on the class-averaged "
        "mean trajectory (the paper's prior knowledge)",
    )
    p.add_argument(
        "--granularity",
        choices=["global", "step", "unit"],
        default="global",
        help="auto weight: one w, one per step, or one per unit (default global)",
    )
    p.add_argument(
        "--coupling",
        choices=["block", "unit"],
        default="block",
        help="GOC corrects a unit only when its whole block is reused (block, published) or each unit on its own",
    )
    p.set_defaults(func=cmd_inflections)


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
    add_bench_parser(sub)
    add_notebooks_parser(sub)
    add_priors_parsers(sub)
    add_eval_sample_parser(sub)
    add_fid_parser(sub)
    add_eval_parser(sub)
    return parser


# --------------------------------------------------------------------------------------
# goc eval-sample / fid / eval
# --------------------------------------------------------------------------------------

METHOD_HELP = (
    "method strings: schedule[+compensator[:option...]]; schedules none, fora-25, fora-50, fora (interval 2), "
    "l2c (router from --router, or l2c:PATH@THRES); compensators goc (paper's w and steps; goc:w=0.8, "
    "goc:steps=auto, goc:auto = inflection-aware steps and least-squares w from priors) and taylor (taylor:k=2). "
    "Examples: fora-50+goc, l2c:data/routers/tiny_digits_ddim20.pt@0.1+goc:w=0.8"
)


def _eval_settings(args: argparse.Namespace):
    from goc_utils.evaluation import EvalSettings
    from goc_utils.study import default_router

    if args.steps < 1:
        raise InvalidArgumentError(f"--steps must be >= 1 (got {args.steps})")
    return EvalSettings(
        model=args.model,
        ckpt=args.ckpt,
        image_size=args.image_size,
        vae=args.vae,
        steps=args.steps,
        sampler=args.sampler,
        cfg_scale=args.cfg_scale if isinstance(args.cfg_scale, float) else args.cfg_scale[0],
        seed=args.seed,
        per_device_batch=args.per_device_batch,
        router=args.router or default_router(args.model, args.steps),
        thres=args.router_thres,
        priors=args.priors,
    )


def _load_for_eval(args: argparse.Namespace):
    """Model, VAE and process group for the sampling commands."""
    import torch

    from goc_utils.evaluation import init_distributed
    from goc_utils.models import load_model, preset_info

    if args.num_samples < 1:
        raise InvalidArgumentError(f"--num-samples must be >= 1 (got {args.num_samples})")
    dist = init_distributed(_resolve_device(args.device))
    torch.set_grad_enabled(False)
    model = load_model(args.model, args.ckpt, args.image_size, dist.device)
    vae = None
    if preset_info(args.model).latent:
        from goc_utils.vae import load_vae

        vae = load_vae(args.vae, dist.device)
    return model, vae, dist


def cmd_eval_sample(args: argparse.Namespace) -> int:
    from goc_utils.evaluation import eval_sample, parse_methods

    if "," in args.method:
        raise InvalidArgumentError("--method takes one method; use `goc eval --methods a,b,...` for several")
    (method,) = parse_methods(args.method)
    settings = _eval_settings(args)
    model, vae, dist = _load_for_eval(args)
    started = time.perf_counter()
    path = eval_sample(
        model, settings, method, Path(args.out), args.num_samples, vae, dist.rank, dist.world, dist.barrier
    )
    if dist.rank == 0:
        print(
            f"{args.num_samples} samples ({method}, cfg {settings.cfg_scale:g}) "
            f"in {time.perf_counter() - started:.1f} s -> {path}"
        )
    dist.close()
    return 0


def _add_eval_sampling_arguments(p: argparse.ArgumentParser) -> None:
    _add_model_arguments(p)
    p.add_argument("--num-samples", type=int, default=50000, help="images per method (default 50000)")
    p.add_argument("--per-device-batch", type=int, default=32, help="images per forward and per shard (default 32)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    p.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim", help="ddim (eta 0) or ddpm (default ddim)")
    p.add_argument("--seed", type=int, default=0, help="run seed; sample i is seeded from (seed, i) (default 0)")
    p.add_argument("--router", default=None, help="L2C router for l2c methods (default: the committed tiny router)")
    p.add_argument("--router-thres", type=_float, default=0.1, help="L2C threshold (default 0.1)")
    p.add_argument(
        "--priors", default=None, help="priors for goc:auto (default data/priors/<model>_ddim<steps>_cfg<cfg>)"
    )


def add_eval_sample_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval-sample",
        help="sample N images of one method to an ADM npz (resumable, torchrun)",
        description="Sample --num-samples images into OUT/samples.npz (arr_0 uint8 NHWC, arr_1 labels). Shards are "
        "written atomically to OUT/shards/; rerunning the same command resumes. Labels are uniform over the classes "
        "and every sample has its own seed, so the result does not depend on the number of processes. "
        "Multi-GPU: torchrun --nproc_per_node K -m goc_utils.cli eval-sample ... " + METHOD_HELP,
    )
    _add_eval_sampling_arguments(p)
    p.add_argument("--method", default="none", help="one method string (default none); see the description")
    p.add_argument("--cfg-scale", type=_float, default=1.5, help="guidance scale (default 1.5, DiT's FID setting)")
    p.add_argument("--out", required=True, help="output folder (created; holds run.json, shards/, samples.npz)")
    p.set_defaults(func=cmd_eval_sample)


def _extractor_for(args: argparse.Namespace, device: str):
    from goc_utils.metrics.features import build_extractor

    return build_extractor(args.features, device, args.inception_weights)


def cmd_fid(args: argparse.Namespace) -> int:
    from goc_utils.metrics.evaluate import evaluate_batches

    extractor = _extractor_for(args, _resolve_device(args.device))
    print(evaluate_batches(args.ref, args.samples, extractor).report())
    return 0


def _add_feature_arguments(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument(
        "--features",
        choices=["inception", "digits"],
        default=default,
        help="feature extractor: inception (ImageNet, ADM evaluator) or digits (tiny study)"
        + (f" (default {default})" if default else " (default: digits for tiny-digits, else inception)"),
    )
    p.add_argument(
        "--inception-weights",
        default=None,
        help="local weights-inception-2015-12-05-6726825d.pth (or set GOC_INCEPTION_WEIGHTS)",
    )


def add_fid_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fid",
        help="IS, FID, sFID, precision, recall of a sample npz vs a reference npz",
        description="The ADM evaluator's numbers for two ADM-format batches (arr_0 uint8 NHWC).",
    )
    p.add_argument("ref", help="reference batch, e.g. VIRTUAL_imagenet256_labeled.npz or data/reference/digits_ref.npz")
    p.add_argument("samples", help="sample batch (goc eval-sample's samples.npz)")
    _add_feature_arguments(p, "inception")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i] (default auto)")
    p.set_defaults(func=cmd_fid)


def cmd_eval(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from goc_utils import paths
    from goc_utils.evaluation import format_results, parse_methods, run_eval, write_results

    methods = parse_methods(args.methods)
    if args.features is None:
        args.features = "digits" if args.model == "tiny-digits" else "inception"
    ref = args.ref_batch or (str(paths.DIGITS_REFERENCE_BATCH) if args.features == "digits" else None)
    if ref is None:
        raise InvalidArgumentError(
            "--ref-batch is required for Inception features: the ADM reference batch, "
            "e.g. VIRTUAL_imagenet256_labeled.npz"
        )
    from goc_utils.metrics.batches import batch_info

    batch_info(ref)
    settings = _eval_settings(args)
    model, vae, dist = _load_for_eval(args)
    extractor = _extractor_for(args, dist.device) if dist.rank == 0 else None
    rows = []
    for cfg in args.cfg_scale:
        cfg_settings = replace(settings, cfg_scale=cfg)
        out = Path(args.out) / f"cfg{cfg:g}"
        result = run_eval(
            model, cfg_settings, methods, args.num_samples, out, ref, extractor, vae, args.latency_batch,
            args.latency_repeats, dist, fid_bootstrap=args.fid_bootstrap,
        )  # fmt: skip
        rows += result or []
    if dist.rank == 0:
        table = Path(args.table) if args.table else Path(args.out) / "results"
        csv_path, md_path = write_results(rows, table.parent, table.name)
        print(format_results(rows))
        print(f"-> {csv_path}, {md_path}")
    dist.close()
    return 0


def _cfg_list(text: str) -> list[float]:
    values = [_float(part) for part in text.split(",") if part.strip()]
    if not values or any(not v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"malformed cfg list {text!r}; use e.g. 1.5 or 1.5,4.0")
    return values


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    from goc_utils.evaluation import TABLE_METHODS

    p = sub.add_parser(
        "eval",
        help="sample every method, score it (IS/FID/sFID/P/R, PSNR/SSIM vs none, MACs, latency) -> results table",
        description="Run goc eval-sample for each method and cfg scale (resumable, torchrun), then score every batch "
        "against the reference with the ADM metrics, compare with the un-cached samples of the same noise, time "
        "one batch per method and write OUT/results.csv and .md. " + METHOD_HELP,
    )
    _add_eval_sampling_arguments(p)
    p.add_argument(
        "--methods", default=",".join(TABLE_METHODS), help=f"comma-separated (default {','.join(TABLE_METHODS)})"
    )
    p.add_argument("--cfg-scale", type=_cfg_list, default=[1.5], help="guidance scale(s), e.g. 1.5,4.0 (default 1.5)")
    p.add_argument(
        "--ref-batch", default=None, help="ADM reference npz (default for digits: data/reference/digits_ref.npz)"
    )
    _add_feature_arguments(p, None)
    p.add_argument("--latency-batch", type=int, default=8, help="images per timed batch (default 8)")
    p.add_argument("--latency-repeats", type=int, default=3, help="timed runs per method (default 3)")
    p.add_argument(
        "--fid-bootstrap", type=int, default=0, help="also report FID's bootstrap std over N resamples (default 0: off)"
    )
    p.add_argument("--out", required=True, help="folder for the samples (OUT/cfg<c>/<method>/) and results.*")
    p.add_argument("--table", default=None, help="path prefix of the table (default OUT/results -> .csv, .md)")
    p.set_defaults(func=cmd_eval)


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
