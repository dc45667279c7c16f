"""``goc train-tiny``, ``goc train-router``, ``goc train-classifier``, ``goc train-fashion``: retrain ``data/``."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from goc_utils import paths
from goc_utils.cache.l2c import router_mask
from goc_utils.cache.schedule import CacheSchedule
from goc_utils.cli.common import STEPS, add_model_arguments, add_threads_argument
from goc_utils.cli.kinds import (
    Batch,
    Choice,
    InputPath,
    Integer,
    Items,
    Number,
    OutputPath,
    Seed,
    add_option,
    check_output_dir,
    check_writable,
)
from goc_utils.datasets import load_digits_tensors, load_fashion_mnist, load_fashion_tensors
from goc_utils.errors import InvalidArgumentError
from goc_utils.evaluation.metrics.judges import write_reference
from goc_utils.files import output_lock
from goc_utils.model.checkpoints import load_model, resolve_device
from goc_utils.model.macs import model_macs
from goc_utils.model.presets import preset_info
from goc_utils.model.vae import load_vae, vae_spec
from goc_utils.priors.stats import default_priors_path
from goc_utils.training.dit import TRAINABLE_PRESETS, default_train_config, fashion_latents, train_dit
from goc_utils.training.judges import train_digits_classifier, train_fashion_classifier
from goc_utils.training.routers import (
    RouterTrainConfig,
    image_folder,
    image_folder_batches,
    posterior_batches,
    save_router,
    tensor_batches,
    train_router,
)
from goc_utils.training.vae import VAETrainConfig, train_fashion_vae

LEARNING_RATE = Number(0, above=True)
IMAGE_FOLDER = InputPath("image folder", "pass {flag} DIR, an ImageNet-style folder (class_x/*.JPEG)", folder=True)


def cmd_train_tiny(args: argparse.Namespace) -> int:
    config = default_train_config(
        args.model, steps=args.train_steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, threads=args.threads
    )
    out = check_writable(Path(args.out), "--out") if args.out else None
    run_dir = check_output_dir(Path(args.run_dir), "--run-dir") if args.run_dir else None
    out = train_dit(args.model, config, run_dir, out)
    print(f"EMA weights -> {out}")
    return 0


def add_train_tiny(p: argparse.ArgumentParser) -> None:
    """Train (or resume) a tiny DiT preset with DiT's recipe (eps MSE + VLB, class dropout 0.1, EMA weights):
    tiny-digits on the digits' pixels, tiny-fashion on the tier VAE's latents of Fashion-MNIST."""
    add_option(p, "--model", Choice(TRAINABLE_PRESETS), default="tiny-digits", help="preset (default tiny-digits)")
    add_option(
        p, "--train-steps", Integer(1), default=None, help="optimiser steps (tiny-digits 20000, tiny-fashion 8000)"
    )
    add_option(p, "--batch-size", Batch(), default=None, help="batch size (default 128)")
    add_option(p, "--lr", LEARNING_RATE, default=None, help="AdamW learning rate (default 4e-4)")
    add_option(p, "--seed", Seed(), default=0, help="seed (default 0)")
    add_threads_argument(p, default=2)
    add_option(
        p, "--run-dir", OutputPath(folder=True), default=None, help="checkpoints and log (default runs/train_<preset>)"
    )
    add_option(
        p, "--out", OutputPath(), default=None, help="exported EMA weights (default: the preset's file under data/)"
    )
    p.set_defaults(func=cmd_train_tiny)


def cmd_train_router(args: argparse.Namespace) -> int:
    out = check_writable(Path(args.out), "--out")
    config = RouterTrainConfig(
        steps=args.steps,
        train_steps=args.train_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        l1=args.l1,
        seed=args.seed,
    )
    device = resolve_device(args.device)
    images = preset_info(args.model).latent and args.model != "tiny-fashion"  # trains on an image folder
    if images and args.data is None:
        raise InvalidArgumentError(f"{args.model} routers train on images: pass --data DIR (ImageNet-style folder)")
    if not images and args.data is not None:
        raise InvalidArgumentError(
            f"--data is not used for {args.model} (its routers train on its built-in data set); drop --data, "
            "or pass it with a DiT preset such as DiT-XL/2"
        )
    dataset = image_folder(args.data) if images else None
    with output_lock(out):
        if args.threads:
            torch.set_num_threads(args.threads)
        model = load_model(args.model, args.ckpt, args.image_size, device)
        if args.model == "tiny-fashion":
            mean, std, scale = fashion_latents(cache_dir=paths.RUNS_DIR / "train_tiny_fashion")  # the DiT run's cache
            _, labels = load_fashion_tensors("train")
            batches = posterior_batches(mean, std, scale, labels)
        elif images:
            image_size = args.image_size or preset_info(args.model).default_image_size
            vae = load_vae(vae_spec(args.vae, args.ckpt, args.model), device, args.model)
            batches = image_folder_batches(dataset, image_size, vae, device)
        else:
            batches = tensor_batches(*load_digits_tensors())
        checkpoint = out.with_name(out.name + ".partial")
        logits, opt_state = train_router(
            model, batches, config, checkpoint=checkpoint, checkpoint_seconds=args.checkpoint_seconds
        )
        save_router(out, logits, opt_state, config, args.model)
        checkpoint.unlink(missing_ok=True)
    schedule = CacheSchedule(router_mask(logits.numpy(), 0.1), name="l2c@0.1")
    macs = model_macs(model)
    print(
        f"router -> {out}: at thres 0.1 it reuses {schedule.reused_units} of {schedule.mask.size} unit-steps "
        f"({100 * schedule.cache_ratio:.1f}%; {100 * schedule.cache_ratio_macs(macs.units):.1f}% of branch MACs)"
    )
    return 0


def add_train_router(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_option(
        p, "--data", IMAGE_FOLDER, default=None,
        help="DiT's presets: ImageNet-style image folder (tiny presets: built in)",
    )  # fmt: skip
    add_option(p, "--steps", STEPS, default=20, help="DDIM steps the routers are for (default 20)")
    add_option(p, "--train-steps", Integer(1), default=2000, help="optimiser steps (default 2000)")
    add_option(p, "--batch-size", Batch(), default=64, help="batch size (default 64)")
    add_option(p, "--lr", LEARNING_RATE, default=1e-3, help="AdamW learning rate (default 1e-3)")
    add_option(p, "--l1", Number(0), default=5e-6, help="weight of the sum of router scores (default 5e-6)")
    add_option(p, "--seed", Seed(), default=0, help="seed (default 0)")
    add_threads_argument(p)
    add_option(
        p,
        "--checkpoint-seconds",
        Number(0),
        default=300.0,
        help="save the training state to OUT.partial at most this often; a rerun resumes from it (default 300)",
    )
    add_option(p, "--out", OutputPath(), required=True, help="router checkpoint to write (.pt)")
    p.set_defaults(func=cmd_train_router)


def cmd_train_classifier(args: argparse.Namespace) -> int:
    out = check_writable(Path(args.out), "--out") if args.out else None
    if args.model == "tiny-fashion":
        out, accuracy = train_fashion_classifier(epochs=args.epochs or 8, seed=args.seed, out=out)
        print(f"Fashion-MNIST judge: accuracy on the 10,000 test images {accuracy:.4f} -> {out}")
    else:
        out, accuracy = train_digits_classifier(epochs=args.epochs or 60, seed=args.seed, out=out)
        print(f"digits classifier: held-out accuracy {accuracy:.4f} -> {out}")
    return 0


def add_train_classifier(p: argparse.ArgumentParser) -> None:
    """Train a tiny tier's judge, the classifier whose features are its FID / sFID / IS / P / R features."""
    add_option(p, "--model", Choice(TRAINABLE_PRESETS), default="tiny-digits", help="whose judge (default tiny-digits)")
    add_option(p, "--epochs", Integer(1), default=None, help="epochs (tiny-digits 60, tiny-fashion 8)")
    add_option(p, "--seed", Seed(), default=0, help="seed (default 0)")
    add_option(p, "--out", OutputPath(), default=None, help="weights (default: the judge's file under data/)")
    p.set_defaults(func=cmd_train_classifier)


FASHION_STAGES = ("vae", "judge", "reference", "dit", "router", "priors")


def _fashion_outputs() -> dict[str, list[Path]]:
    return {
        "vae": [paths.TINY_FASHION_VAE / name for name in ("config.json", "diffusion_pytorch_model.safetensors")],
        "dit": [paths.TINY_FASHION_WEIGHTS],
        "judge": [paths.FASHION_CLASSIFIER_WEIGHTS],
        "reference": [paths.FASHION_REFERENCE_BATCH],
        "router": [paths.TINY_FASHION_ROUTER],
        "priors": [default_priors_path("tiny-fashion", 20, cfg) for cfg in FASHION_PRIOR_CFGS],
    }


FASHION_PRIOR_CFGS = (1.5, 4.0)

FASHION_ROUTER_RECIPE = ("--train-steps", "1000", "--lr", "0.05", "--l1", "2e-5")
"""The committed tiny routers' recipe (tiny-digits' too): fewer, larger steps than L2C's DiT-XL/2 setting."""


def _run_fashion_stage(stage: str, threads: int) -> None:
    from goc_utils.cli import main  # the package's entry point runs the router and priors stages as commands

    if stage == "vae":
        out, report = train_fashion_vae(VAETrainConfig(threads=threads))
        print(f"VAE -> {out}: scaling_factor {report['scaling_factor']}, test PSNR {report['psnr_32']:.2f} dB "
              f"(32x32), {report['psnr_28']:.2f} dB (28x28 garment area)")  # fmt: skip
    elif stage == "dit":
        print(f"EMA weights -> {train_dit('tiny-fashion', default_train_config('tiny-fashion', threads=threads))}")
    elif stage == "judge":
        out, accuracy = train_fashion_classifier(threads=threads)
        print(f"Fashion-MNIST judge: accuracy on the 10,000 test images {accuracy:.4f} -> {out}")
    elif stage == "reference":
        print(f"reference batch -> {write_reference('tiny-fashion')}")
    elif stage == "router":
        argv = ["train-router", "--model", "tiny-fashion", "--threads", str(threads), *FASHION_ROUTER_RECIPE,
                "--out", str(paths.TINY_FASHION_ROUTER)]  # fmt: skip
        if main(argv):
            raise InvalidArgumentError("router training failed (see above)")
    else:
        for cfg in FASHION_PRIOR_CFGS:
            argv = ["priors", "--model", "tiny-fashion", "--cfg-scale", f"{cfg:g}", "--per-class", "5",
                    "--threads", str(threads)]  # fmt: skip
            if main(argv):
                raise InvalidArgumentError("priors extraction failed (see above)")


def cmd_train_fashion(args: argparse.Namespace) -> int:
    stages = args.stages
    outputs = _fashion_outputs()
    todo = [s for s in FASHION_STAGES if s in stages and not all(path.exists() for path in outputs[s])]
    if any(stage != "priors" for stage in todo):
        load_fashion_mnist("test")  # the data must be there before anything starts (one line if not)
    for stage in FASHION_STAGES:
        if stage in stages and stage not in todo:
            print(f"[{stage}] done: {', '.join(str(p.relative_to(paths.PROJECT_ROOT)) for p in outputs[stage])}")
        elif stage in todo:
            print(f"[{stage}] training ...", flush=True)
            _run_fashion_stage(stage, args.threads)
    return 0


def add_train_fashion(p: argparse.ArgumentParser) -> None:
    """Build the tiny-fashion tier from Debian's Fashion-MNIST, in order: the VAE, the judge, the reference batch
    with the judge's statistics, the latent DiT, its L2C router and its priors at cfg 1.5 and 4.0. A stage
    whose outputs under data/ exist is skipped (delete them to redo it and the stages after it); an interrupted
    stage resumes from its checkpoint under runs/."""
    add_option(
        p,
        "--stages",
        Items("stage list", "stage", "vae,judge", choices=FASHION_STAGES, everything="all"),
        default="all",
        help=f"comma-separated subset of {','.join(FASHION_STAGES)} (default all)",
    )
    add_threads_argument(p, default=2)
    p.set_defaults(func=cmd_train_fashion)
