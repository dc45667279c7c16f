"""``goc train-tiny``, ``goc train-router``, ``goc train-classifier``: retrain what ``data/`` holds."""

from __future__ import annotations

import argparse
from pathlib import Path

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
from goc_utils.cli.common import add_model_arguments, add_threads_argument, check_writable, number, seed
from goc_utils.data import load_digits_tensors
from goc_utils.errors import InvalidArgumentError
from goc_utils.macs import model_macs
from goc_utils.models import load_model, preset_info, resolve_device
from goc_utils.training import TinyTrainConfig, train_digits_classifier, train_tiny_dit
from goc_utils.vae import load_vae, vae_spec


def cmd_train_tiny(args: argparse.Namespace) -> int:
    if args.train_steps < 1 or args.batch_size < 1 or not args.lr > 0:
        raise InvalidArgumentError("--train-steps and --batch-size must be >= 1 and --lr > 0")
    config = TinyTrainConfig(
        steps=args.train_steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, threads=args.threads
    )
    out = train_tiny_dit(config, Path(args.run_dir) if args.run_dir else None, Path(args.out) if args.out else None)
    print(f"EMA weights -> {out}")
    return 0


def add_train_tiny(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train-steps", type=int, default=20_000, help="total optimiser steps (default 20000)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--lr", type=number, default=4e-4, help="AdamW learning rate (default 4e-4)")
    p.add_argument("--seed", type=seed, default=0, help="seed (default 0)")
    add_threads_argument(p, default=2)
    p.add_argument("--run-dir", default=None, help="checkpoints and log (default runs/train_tiny)")
    p.add_argument("--out", default=None, help="exported EMA weights (default data/tiny_digits_dit_ema.safetensors)")
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
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, args.ckpt, args.image_size, device)
    if preset_info(args.model).latent:
        if args.data is None:
            raise InvalidArgumentError(f"{args.model} routers train on images: pass --data DIR (ImageNet-style folder)")
        image_size = args.image_size or preset_info(args.model).default_image_size
        batches = image_folder_batches(args.data, image_size, load_vae(vae_spec(args.vae, args.ckpt), device), device)
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
    p.add_argument("--data", default=None, help="latent presets: ImageNet-style image folder")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps the routers are for (default 20)")
    p.add_argument("--train-steps", type=int, default=2000, help="optimiser steps (default 2000)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--lr", type=number, default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--l1", type=number, default=5e-6, help="weight of the sum of router scores (default 5e-6)")
    p.add_argument("--seed", type=seed, default=0, help="seed (default 0)")
    add_threads_argument(p)
    p.add_argument(
        "--checkpoint-seconds",
        type=number,
        default=300.0,
        help="save the training state to OUT.partial at most this often; a rerun resumes from it (default 300)",
    )
    p.add_argument("--out", required=True, help="router checkpoint to write (.pt)")
    p.set_defaults(func=cmd_train_router)


def cmd_train_classifier(args: argparse.Namespace) -> int:
    out, accuracy = train_digits_classifier(
        epochs=args.epochs, seed=args.seed, out=Path(args.out) if args.out else None
    )
    print(f"digits classifier: held-out accuracy {accuracy:.4f} -> {out}")
    return 0


def add_train_classifier(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, default=60, help="epochs (default 60)")
    p.add_argument("--seed", type=seed, default=0, help="seed (default 0)")
    p.add_argument("--out", default=None, help="weights (default data/digits_classifier.safetensors)")
    p.set_defaults(func=cmd_train_classifier)
