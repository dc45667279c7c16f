"""Model presets: DiT's sizes and the two tiny tiers, as factories by name (``DiT_models``), and what
each preset brings along (committed weights, VAE, router, judge: :class:`PresetInfo`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from goc_utils import paths
from goc_utils.errors import CheckpointError, InvalidArgumentError, UnknownPresetError
from goc_utils.model.dit import DiT
from goc_utils.model.macs import model_macs


def _dit(depth: int, hidden_size: int, patch_size: int, num_heads: int) -> Callable[..., DiT]:
    def factory(**kwargs) -> DiT:
        return DiT(depth=depth, hidden_size=hidden_size, patch_size=patch_size, num_heads=num_heads, **kwargs)

    factory.__name__ = f"DiT_d{depth}_h{hidden_size}_p{patch_size}"
    return factory


def tiny_digits(**kwargs) -> DiT:
    """The embedded model: 8x8 grey digits, patch 2 (16 tokens), width 128, depth 12, 10 classes."""
    config = dict(input_size=8, patch_size=2, in_channels=1, hidden_size=128, depth=12, num_heads=4, num_classes=10)
    config.update(kwargs)
    return DiT(**config)


def tiny_fashion(**kwargs) -> DiT:
    """The real-image tier: DiT-XL/2's pipeline in miniature on Fashion-MNIST.

    8x8x4 latents of the tier's VAE (32x32 images, factor 4), patch 2 (16 tokens, DiT-XL/2's patch
    size on latents), learned sigma (8 output channels), 10 classes + the null class, depth 12 (GOC's
    host schedules address 2 x depth units), width 128 (as tiny-digits): a training step of 128 latents
    takes about 0.45 s on two CPU cores, so 8,000 steps (an hour) fit the tier's training budget (under 3
    hours for VAE, judge, DiT and router together).
    """
    config = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=128, depth=12, num_heads=4, num_classes=10)
    config.update(kwargs)
    return DiT(**config)


DiT_models: dict[str, Callable[..., DiT]] = {
    "DiT-XL/2": _dit(28, 1152, 2, 16),
    "DiT-XL/4": _dit(28, 1152, 4, 16),
    "DiT-XL/8": _dit(28, 1152, 8, 16),
    "DiT-L/2": _dit(24, 1024, 2, 16),
    "DiT-L/4": _dit(24, 1024, 4, 16),
    "DiT-L/8": _dit(24, 1024, 8, 16),
    "DiT-B/2": _dit(12, 768, 2, 12),
    "DiT-B/4": _dit(12, 768, 4, 12),
    "DiT-B/8": _dit(12, 768, 8, 12),
    "DiT-S/2": _dit(12, 384, 2, 6),
    "DiT-S/4": _dit(12, 384, 4, 6),
    "DiT-S/8": _dit(12, 384, 8, 6),
    "tiny-digits": tiny_digits,
    "tiny-fashion": tiny_fashion,
}
"""Model factories by preset name, as in DiT (``DiT_models['DiT-XL/2'](input_size=32)``)."""

MAX_CLASSES = 1000
"""The most classes any preset has (ImageNet's 1,000 for DiT's sizes; 10 for the tiny tiers): a class id at or
above it is wrong for every model, so a class list is checked against it before it is expanded."""


@dataclass(frozen=True)
class PresetInfo:
    """How a preset is used by the sampler.

    Attributes:
        latent: True if the model works on VAE latents; False for pixel-space presets such as
            ``tiny-digits``.
        default_image_size: image side in pixels when none is given.
        checkpoint: committed weights for this preset, or None (user supplies ``--ckpt``).
        vae: the VAE used when ``--vae`` is not given: ``"ema"`` (``sd-vae-ft-ema``) for DiT's presets,
            the committed folder for ``tiny-fashion``; None for pixel-space presets. The latent scale
            always comes from the VAE's config (``scaling_factor``).
        vae_factor: pixels per latent cell along a side (8 for sd-vae, 4 for the tier's VAE).
        router: the committed Learning-to-Cache router for DDIM-20, or None.
        judge: the features that score this preset's samples by default (``digits`` / ``fashion``: the
            tiny tiers' classifiers; None: Inception, as the ADM evaluator).
    """

    latent: bool
    default_image_size: int
    checkpoint: Path | None = None
    vae: str | None = None
    vae_factor: int = 8
    router: Path | None = None
    judge: str | None = None


def preset_info(name: str) -> PresetInfo:
    """Usage facts for a preset name (raises :class:`UnknownPresetError`)."""
    check_preset(name)
    if name == "tiny-digits":
        return PresetInfo(
            latent=False,
            default_image_size=8,
            checkpoint=paths.TINY_DIGITS_WEIGHTS,
            router=paths.TINY_DIGITS_ROUTER,
            judge="digits",
        )
    if name == "tiny-fashion":
        return PresetInfo(
            latent=True,
            default_image_size=32,
            checkpoint=paths.TINY_FASHION_WEIGHTS,
            vae=str(paths.TINY_FASHION_VAE),
            vae_factor=4,
            router=paths.TINY_FASHION_ROUTER,
            judge="fashion",
        )
    return PresetInfo(latent=True, default_image_size=256, vae="ema")


def check_preset(name: str) -> None:
    """Raise a one-line :class:`UnknownPresetError` if ``name`` is not a preset."""
    if name not in DiT_models:
        raise UnknownPresetError(f"unknown model preset {name!r}; choose one of: {', '.join(DiT_models)}")


def input_size_for(name: str, image_size: int | None = None) -> int:
    """Model input side for a preset at ``image_size`` pixels (latents are ``vae_factor`` times smaller)."""
    info = preset_info(name)
    image_size = info.default_image_size if image_size is None else image_size
    if image_size < 1:
        raise InvalidArgumentError(f"--image-size must be a positive number of pixels (got {image_size})")
    if info.latent:
        if image_size % info.vae_factor:
            raise CheckpointError(
                f"image size {image_size} is not a multiple of {info.vae_factor} (the VAE factor of {name}); "
                f"use {info.default_image_size}"
            )
        return image_size // info.vae_factor
    return image_size


def create_model(name: str, image_size: int | None = None, **kwargs) -> DiT:
    """Build a preset with random (DiT-initialised) weights.

    Example:
        >>> model = create_model("tiny-digits")
        >>> model.depth, model.num_tokens
        (12, 16)
    """
    check_preset(name)
    kwargs.setdefault("input_size", input_size_for(name, image_size))
    return DiT_models[name](**kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters including the frozen ``pos_embed`` (DiT's reported count)."""
    return sum(p.numel() for p in model.parameters())


def smallest_image_shape(name: str, image_size: int | None = None) -> tuple[tuple[int, int, int], int]:
    """What a preset's samples need at least, known without weights (its DiT built on the meta device): the
    ``(H, W, C)`` of its uint8 images, where C is 1 for a latent preset (the VAE's output channels, 1 or 3, are
    known once it loads), and the float values of one latent (``C * H * W`` of the DiT's input). For the memory
    and disk checks that refuse a job before anything loads; the exact ones follow the load.

    Example:
        >>> smallest_image_shape("DiT-XL/2")
        ((256, 256, 1), 4096)
    """
    info = preset_info(name)
    with torch.device("meta"):
        model = create_model(name, image_size)
    side = model.input_size * (info.vae_factor if info.latent else 1)
    return (side, side, 1 if info.latent else model.in_channels), model.in_channels * model.input_size**2


def forward_bytes_at_least(name: str, image_size: int | None, images: int) -> int:
    """A lower bound of the memory a guided forward of ``images`` images of the preset takes: its activations,
    2 x images (CFG) x tokens x hidden float32 values, alive 8 times over in a block (its input, q, k, v and the
    MLP's 4x hidden layer). For refusing a batch that cannot fit before anything loads.

    Example:
        >>> forward_bytes_at_least("DiT-XL/2", None, 1) // 2**20  # MiB per image, at least
        18
    """
    with torch.device("meta"):
        model = create_model(name, image_size)
    return 2 * images * model.num_tokens * model.hidden_size * 4 * 8


def model_info(name: str, image_size: int | None = None) -> dict:
    """Architecture facts of a preset (``goc info``), built on the meta device (no memory, no weights)."""
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
