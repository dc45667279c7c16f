"""``goc export-diffusers``: our DiT weights as a diffusers folder (a transformer, or a full ``DiTPipeline``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from goc_utils.cli.common import add_model_arguments
from goc_utils.cli.kinds import OutputPath, add_option, check_output_dir
from goc_utils.datasets import FASHION_CLASSES
from goc_utils.integrations.diffusers.transformer import check_export_target, export_diffusers
from goc_utils.model.checkpoints import load_model
from goc_utils.model.presets import preset_info
from goc_utils.model.vae import load_vae, vae_spec


def add_export_diffusers(p: argparse.ArgumentParser) -> None:
    """Write a preset's weights (committed or --ckpt) as a diffusers DiTTransformer2DModel folder
    (config.json + diffusion_pytorch_model.safetensors) that DiTTransformer2DModel.from_pretrained loads; for
    tiny-fashion (its VAE is committed) or with --vae, a full DiTPipeline folder (transformer/, vae/, scheduler/,
    model_index.json) that DiTPipeline.from_pretrained loads."""
    add_model_arguments(p)
    add_option(
        p, "--out", OutputPath(folder=True), required=True,
        help="folder to write (created; an old folder of the same kind is replaced)",
    )  # fmt: skip
    p.set_defaults(func=run_export_diffusers)


def run_export_diffusers(args: argparse.Namespace) -> int:
    out = Path(args.out).expanduser()
    info = preset_info(args.model)
    pipeline = info.latent and (args.vae or info.vae not in (None, "ema"))
    check_export_target(out, "pipeline" if pipeline else "transformer")
    vae = load_vae(vae_spec(args.vae, args.ckpt, args.model), preset=args.model) if pipeline else None  # it must fit
    model = load_model(args.model, args.ckpt, args.image_size, "cpu")
    check_output_dir(out, "--out")  # created once every input is read
    names = FASHION_CLASSES if args.model == "tiny-fashion" else None
    export_diffusers(model, out, vae, names)
    kind = "DiTPipeline" if pipeline else "DiTTransformer2DModel"
    print(json.dumps({"model": args.model, "out": str(out), "class": kind}))
    return 0
