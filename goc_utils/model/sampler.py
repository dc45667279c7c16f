"""The sampler: noise as DiT's ``sample.py`` draws it (one seed, or one generator per sample), guidance,
decoding.

``generate`` is the one entry point used by the CLI, the notebooks and (later) the cache
engine: the model call goes through a ``forward(x, t, y, step=s)`` function whose default
is the plain model, so a cache engine plugs in without touching the sampler.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from goc_utils.datasets import to_uint8
from goc_utils.errors import InvalidArgumentError, shorten
from goc_utils.lists import plain_int, split_items
from goc_utils.model.diffusion import NUM_TRAIN_TIMESTEPS, cfg_denoiser, create_diffusion
from goc_utils.model.dit import DiT
from goc_utils.model.presets import MAX_CLASSES
from goc_utils.model.vae import decode_latents


@dataclass
class SampleResult:
    """What a sampling run returns.

    Attributes:
        final: model-space samples ``(N, C, H, W)`` float32 before decoding (latents for
            VAE presets), the conditional half of the CFG batch.
        images: uint8 ``(N, H, W, 3 or 1)`` images (the ADM evaluator's batch format).
        labels: ``(N,)`` int64 class labels.
    """

    final: torch.Tensor
    images: np.ndarray
    labels: np.ndarray


def plain_forward(model: DiT) -> Callable[..., torch.Tensor]:
    """``forward(x, t, y, step=s)`` that ignores the step: the un-cached model."""

    def forward(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        return model(x, t, y)

    return forward


def check_sampling_args(
    model: DiT, labels: Sequence[int], steps: int, cfg_scale: float, model_name: str = "this model"
) -> None:
    """Raise one-line errors for labels out of range, steps < 1 and a negative / NaN cfg scale."""
    if len(labels) == 0:
        raise InvalidArgumentError("no class labels given; pass e.g. --classes 0,1,2")
    bad = [c for c in labels if not 0 <= int(c) < model.num_classes]
    if bad:
        raise InvalidArgumentError(
            f"class id {bad[0]} is out of range for {model_name}; use 0..{model.num_classes - 1}"
        )
    if not 1 <= int(steps) <= NUM_TRAIN_TIMESTEPS:
        raise InvalidArgumentError(f"steps must be in 1..{NUM_TRAIN_TIMESTEPS} (got {steps})")
    if not cfg_scale >= 0:  # also catches NaN
        raise InvalidArgumentError(f"cfg scale must be a number >= 0 (got {cfg_scale}); 1.0 disables guidance")


def set_tf32(device: str | torch.device, enabled: bool = True) -> bool | None:
    """Turn TF32 matmuls and cuDNN convolutions on or off for sampling on ``device``; returns the effective setting.

    DiT's, GOC's and Learning-to-Cache's ``sample.py`` set ``torch.backends.cuda.matmul.allow_tf32`` and
    ``torch.backends.cudnn.allow_tf32`` to True, and DiT's ``sample_ddp.py --tf32`` defaults to on: the published
    FIDs were sampled that way, so ``enabled=True`` is the default of every sampling command. On a CUDA device both
    flags are set to ``enabled`` and ``enabled`` is returned; on the CPU there is no TF32: nothing is touched and
    None is returned (so CPU runs, and their run.json, do not depend on the flag).

    Example:
        >>> set_tf32("cpu", True) is None
        True
    """
    if torch.device(device).type != "cuda":
        return None
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    return enabled


def image_shape(model: DiT, vae=None) -> tuple[int, int, int]:
    """``(H, W, C)`` of the uint8 images :func:`generate` makes with ``model`` (and ``vae`` for latent presets),
    known before sampling, for the memory and disk checks of a job."""
    if vae is None:
        return model.input_size, model.input_size, model.in_channels
    side = model.input_size * 2 ** (len(vae.config.block_out_channels) - 1)
    return side, side, int(vae.config.out_channels)


def draw_noise(model: DiT, n: int, seed: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """DiT's ``sample.py`` noise: ``torch.manual_seed(seed)`` then one ``randn(n, C, H, W)``."""
    torch.manual_seed(seed)
    return torch.randn(n, model.in_channels, model.input_size, model.input_size, device=device)


def generate(
    model: DiT,
    labels: Sequence[int],
    seed: int = 0,
    steps: int | str = 20,
    sampler: str = "ddim",
    cfg_scale: float = 4.0,
    vae=None,
    forward: Callable[..., torch.Tensor] | None = None,
    progress: bool = False,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    noise: torch.Tensor | None = None,
) -> SampleResult:
    """Sample one image per label, reproducibly.

    Noise is drawn first (seed, then one ``randn`` for all labels), then the reverse chain
    runs with DiT's classifier-free guidance when ``cfg_scale != 1`` (batch ``[z, z]``,
    labels ``[y, null]``) and the plain model otherwise. ``steps`` is a respacing spec
    (``20``, ``"ddim20"``, ``"250"``). ``forward(x, t, y, step=s)`` replaces the model
    call (cache engines); ``callback(s, x)`` sees the batch after every step. ``noise``
    ``(N, C, H, W)`` replaces the seeded draw (per-sample seeding by the caller).

    Example:
        >>> from goc_utils.model.checkpoints import load_model
        >>> result = generate(load_model("tiny-digits"), [3, 5], seed=0, steps=10)
        >>> result.images.shape
        (2, 8, 8, 1)
    """
    diffusion = create_diffusion(steps, learn_sigma=model.learn_sigma)  # rejects steps < 1
    check_sampling_args(model, labels, diffusion.num_timesteps, cfg_scale)
    device = next(model.parameters()).device
    if noise is None:
        noise = draw_noise(model, len(labels), seed, device)
    elif tuple(noise.shape) != (len(labels), model.in_channels, model.input_size, model.input_size):
        raise InvalidArgumentError(f"noise has shape {tuple(noise.shape)}; expected one (C, H, W) draw per label")
    y = torch.tensor([int(c) for c in labels], device=device, dtype=torch.long)
    plain = forward is None
    forward = forward or plain_forward(model)
    if cfg_scale != 1.0:
        z = torch.cat([noise, noise], dim=0)
        y = torch.cat([y, torch.full_like(y, model.null_class)], dim=0)
        denoiser = cfg_denoiser(forward, cfg_scale, model.in_channels)
    else:
        z, denoiser = noise, forward
    with torch.no_grad():
        out = diffusion.sample_loop(denoiser, z, y, sampler=sampler, progress=progress, callback=callback)
    final = out[: len(labels)].float()
    if not torch.isfinite(final).all():  # one check, after the chain: an extreme option blows it up silently
        bad = int((~torch.isfinite(final)).flatten(1).any(1).sum())
        cause = (
            "the model's weights are the likely cause (check --ckpt)"
            if plain
            else "the caching method's options are the likely cause (an extreme value such as tcc:alpha=1e308 or "
            "goc:w=1e300): use values in their usual range"
        )
        raise InvalidArgumentError(f"sampling gave NaN or infinite values in {bad} of {len(labels)} samples; {cause}")
    if vae is not None:
        pixels = decode_latents(vae, final.to(next(vae.parameters()).device, next(vae.parameters()).dtype))
    else:
        pixels = final
    return SampleResult(final=final.cpu(), images=to_uint8(pixels.float()), labels=np.asarray(labels, dtype=np.int64))


def parse_classes(text: str) -> list[int]:
    """``"207,360"`` or ``"0-9"`` -> class ids (one-line error when malformed, an item or a range is empty).

    A class may repeat (``207,207``: two samples of class 207 with their own noise), see :mod:`goc_utils.lists`.
    """
    classes: list[int] = []
    for part in split_items(text, "class list", CLASS_LIST_EXAMPLE):
        try:
            lo, hi = (plain_int(n) for n in part.split("-", 1)) if "-" in part[1:] else (plain_int(part),) * 2
        except ValueError:
            raise InvalidArgumentError(
                f"malformed class list {shorten(text)!r}; use e.g. {CLASS_LIST_EXAMPLE}"
            ) from None
        if hi < lo:
            raise InvalidArgumentError(
                f"class range {part!r} in {shorten(text)!r} is empty; write it low-high, e.g. 0-9"
            )
        if lo < 0 or hi >= MAX_CLASSES:
            raise InvalidArgumentError(
                f"class id {shorten(lo if lo < 0 else hi)} in {shorten(text)!r} is outside every model's classes "
                f"(0..{MAX_CLASSES - 1} for DiT-XL/2, 0..9 for the tiny tiers)"
            )
        classes.extend(range(lo, hi + 1))
    return classes


CLASS_LIST_EXAMPLE = "3,5,7 or 0-9"


def class_labels(classes: Sequence[int], per_class: int = 1) -> list[int]:
    """``[c0]*K + [c1]*K + ...``: K samples per class, grouped by class."""
    if per_class < 1:
        raise InvalidArgumentError(f"--per-class must be >= 1 (got {per_class})")
    return [int(c) for c in classes for _ in range(per_class)]


def sample_seed(seed: int, index: int) -> int:
    """The generator seed of sample ``index`` of a run with ``seed`` (63-bit, from numpy's SeedSequence)."""
    high, low = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, np.uint32)
    return (int(high) << 31) | (int(low) >> 1)


def per_sample_inputs(model: DiT, indices: Sequence[int], seed: int) -> tuple[list[int], torch.Tensor]:
    """Class label and noise of each sample index, each from its own generator.

    Sample ``i`` draws its label uniformly over the classes (as DiT's ``sample_ddp.py`` does)
    and then its noise ``(C, H, W)`` from ``torch.Generator().manual_seed(sample_seed(seed, i))``,
    so a sample does not depend on the batch it lands in or on the number of processes.
    """
    labels, noise = [], []
    for index in indices:
        g = torch.Generator().manual_seed(sample_seed(seed, index))
        labels.append(int(torch.randint(model.num_classes, (1,), generator=g)))
        noise.append(torch.randn(model.in_channels, model.input_size, model.input_size, generator=g))
    return labels, torch.stack(noise)
