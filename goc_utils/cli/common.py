"""The flag groups the ``goc`` commands share (model, sampling, router, caching resources, threads, TF32), each
option with its kind (:mod:`goc_utils.cli.kinds`)."""

from __future__ import annotations

import argparse

from goc_utils.cli.kinds import (
    Choice,
    Device,
    Flag,
    InputPath,
    Integer,
    Number,
    Preset,
    Seed,
    Vae,
    add_option,
)
from goc_utils.model.diffusion import NUM_TRAIN_TIMESTEPS

MAX_IMAGE_SIZE = 4096
"""The largest ``--image-size`` (pixels): DiT-XL/2 samples at 256 and 512."""
MAX_THREADS = 1024

CHECKPOINT = InputPath(
    "checkpoint", "pass {flag} PATH to a DiT .pt or .safetensors file or a diffusers DiT folder", "weights", folder=None
)
ROUTER = InputPath("router file", "pass {flag} PATH (an L2C router .pt)", "torch")
PRIORS = InputPath(
    "priors file", "create it with `goc priors --out FILE` or pass another priors file as {flag}", "safetensors"
)
STEPS = Integer(1, NUM_TRAIN_TIMESTEPS, what="--steps")
TCC_PACK = InputPath("TCC pack", "fit one with `goc tcc-pack` or pass {flag} PATH", "safetensors")


# ----------------------------------------------------------------------------- flag groups


def add_model_arguments(p: argparse.ArgumentParser, vae: bool = True) -> None:
    """The flags every model-running command shares: preset, weights, VAE, image size, device."""
    add_option(
        p, "--model", Preset(), default="tiny-digits",
        help="preset: tiny-digits, tiny-fashion, DiT-XL/2, ... (default tiny-digits)",
    )  # fmt: skip
    add_option(
        p,
        "--ckpt",
        CHECKPOINT,
        default=None,
        help="DiT weights (.pt / train.py checkpoint / .safetensors / diffusers pipeline or transformer folder); "
        "default: the preset's committed weights (tiny-digits, tiny-fashion)",
    )
    if vae:
        add_option(
            p,
            "--vae",
            Vae(),
            default=None,
            help="latent presets: ema | mse | local folder | hub id (default: the pipeline's vae/ when --ckpt is a "
            "diffusers pipeline folder, else the preset's: data/tiny_fashion_vae for tiny-fashion, ema for DiT)",
        )
    add_option(
        p, "--image-size", Integer(1, MAX_IMAGE_SIZE, name="size"), default=None,
        help="pixels (256 or 512 for DiT-XL/2; 8 tiny-digits; 32 tiny-fashion)",
    )  # fmt: skip
    add_device_argument(p)


def add_device_argument(p: argparse.ArgumentParser, help_text: str = "auto | cpu | cuda[:i] (default auto)") -> None:
    add_option(p, "--device", Device(), default="auto", help=help_text)


def add_sampling_arguments(
    p: argparse.ArgumentParser, cfg_scale: float | None = 4.0, seed_help: str | None = "noise seed (default 0)"
) -> None:
    """``--steps``, ``--cfg-scale`` (unless ``cfg_scale`` is None) and ``--seed`` (unless ``seed_help`` is None)."""
    add_option(p, "--steps", STEPS, default=20, help="sampling steps after respacing (default 20)")
    if cfg_scale is not None:
        add_option(
            p, "--cfg-scale", Number(0), default=cfg_scale, help=f"classifier-free guidance scale (default {cfg_scale})"
        )
    if seed_help is not None:
        add_option(p, "--seed", Seed(), default=0, help=seed_help)


def add_router_arguments(p: argparse.ArgumentParser, thres_default: float | None = 0.1, help_extra: str = "") -> None:
    """``--router`` and ``--router-thres`` for the l2c schedule."""
    add_option(p, "--router", ROUTER, default=None, help="L2C router checkpoint for l2c methods" + help_extra)
    add_option(
        p, "--router-thres", Number(0, 1, name="probability"), default=thres_default,
        help="l2c: recompute where score > T (default 0.1)",
    )  # fmt: skip


def add_backend_argument(p: argparse.ArgumentParser) -> None:
    add_option(
        p,
        "--backend",
        Choice(["native", "diffusers"]),
        default="native",
        help="native: our DiT; diffusers: the same weights as a diffusers DiTTransformer2DModel, methods through "
        "goc_utils.integrations.diffusers.hooks (needed for diffusers:* caches) (default native)",
    )


def add_priors_argument(p: argparse.ArgumentParser) -> None:
    add_option(
        p, "--priors", PRIORS, default=None,
        help="priors for goc:auto (default data/priors/<model>_ddim<steps>_cfg<cfg>...)",
    )  # fmt: skip


def add_tcc_pack_argument(p: argparse.ArgumentParser) -> None:
    add_option(
        p,
        "--tcc-pack",
        TCC_PACK,
        default=None,
        help="TCC pack for +tcc methods (default data/tcc/<model>_ddim<steps>_cfg<cfg>_<host>.safetensors)",
    )


def add_threads_argument(p: argparse.ArgumentParser, default: int | None = None) -> None:
    add_option(
        p,
        "--threads",
        Integer(1, MAX_THREADS),
        default=default,
        help="torch CPU threads, >= 1 (default " + (f"{default})" if default else "torch's: one per core)"),
    )


def add_tf32_argument(p: argparse.ArgumentParser) -> None:
    """``--tf32`` / ``--no-tf32``: TF32 matmuls and convolutions on CUDA (see ``goc_utils.model.sampler.set_tf32``)."""
    add_option(
        p,
        "--tf32",
        Flag(negatable=True),
        default=True,
        help="CUDA: TF32 matmuls and cuDNN convolutions, as DiT's sample.py / sample_ddp.py sampled the published "
        "FIDs (default on); --no-tf32 for strict fp32. No effect on CPU",
    )
