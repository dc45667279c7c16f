"""``goc export-diffusers``: our DiT weights as a diffusers ``DiTTransformer2DModel`` folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from goc_utils.cli.common import add_model_arguments, check_output_dir
from goc_utils.diffusers_dit import export_diffusers
from goc_utils.models import load_model


def add_export_diffusers(p: argparse.ArgumentParser) -> None:
    """Write a preset's weights (committed or --ckpt) as a diffusers DiTTransformer2DModel folder
    (config.json + diffusion_pytorch_model.safetensors) that DiTTransformer2DModel.from_pretrained loads."""
    add_model_arguments(p, vae=False)
    p.add_argument("--out", required=True, help="folder to write (created; an old transformer folder is replaced)")
    p.set_defaults(func=run_export_diffusers)


def run_export_diffusers(args: argparse.Namespace) -> int:
    out = check_output_dir(Path(args.out).expanduser(), "--out")
    model = load_model(args.model, args.ckpt, args.image_size, "cpu")
    export_diffusers(model, out)
    print(json.dumps({"model": args.model, "out": str(out), "class": "DiTTransformer2DModel"}))
    return 0
