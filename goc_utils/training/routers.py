"""Training Learning-to-Cache routers with L2C's objective (frozen DiT).

One router per respaced step: a vector of ``2 * depth`` logits, score = sigmoid(logit).
A training step, as in the reference ``router_training_losses``:

1. pick a pair of steps: respaced index ``i = 2k + 1`` (computed) and ``i - 1`` (the step
   that may reuse); draw a batch of clean images, noise them to ``i`` (q_sample);
2. without gradients, run the model at ``i`` (recording every unit's output) and take one
   DDIM step to ``x_{i-1}``; compute the full model output at ``i - 1``;
3. run the model at ``i - 1`` with every unit replaced by
   ``score * fresh + (1 - score) * cached`` (router ``i - 1``);
4. loss = mean squared difference to the full output + ``l1 * sum(scores)``; AdamW on the
   logits only, clamped to [-5, 5] after each step. Labels are dropped to the null class
   with probability 0.1, as in DiT training.

The result is saved in the official format ``{'routers': {'k.prob': ...}, 'opt', 'args'}``.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from tqdm.auto import tqdm

from goc_utils.errors import InvalidArgumentError, first_line, shorten
from goc_utils.files import RESTART, atomic_torch_save, read_torch_file, state_dict_sha256
from goc_utils.model.diffusion import create_diffusion
from goc_utils.model.dit import DiT
from goc_utils.model.vae import latent_scale


@dataclass
class RouterTrainConfig:
    """Options of router training.

    Attributes:
        steps: sampling steps N the routers are for (DDIM-N; even, default 20).
        train_steps: optimiser steps (default 2,000).
        batch_size: images per step (default 64, L2C's global batch for DDIM-20).
        lr: AdamW learning rate on the logits (default 1e-3, L2C's DDIM-20 value).
        l1: weight of ``sum(scores)`` (default 5e-6, L2C's DDIM-20 value for DiT-XL/2).
        label_dropout: probability of the null label (default 0.1).
        seed: seed of router init, batches, timesteps and noise (default 0).
    """

    steps: int = 20
    train_steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    l1: float = 5e-6
    label_dropout: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 2 or self.steps % 2:
            raise InvalidArgumentError(
                f"router training needs an even number of sampling steps >= 2 (got {self.steps})"
            )
        if self.train_steps < 1 or self.batch_size < 1 or not self.lr > 0 or self.l1 < 0:
            raise InvalidArgumentError("--train-steps and --batch-size must be >= 1, --lr > 0 and --l1 >= 0")


BatchFn = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
"""``sample_batch(batch_size, generator) -> (x0 model-space (B, C, H, W), labels (B,))``."""


def tensor_batches(images: torch.Tensor, labels: torch.Tensor) -> BatchFn:
    """Random batches (with replacement) from in-memory model-space images, e.g. the digits."""

    def sample(batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(images), (batch_size,), generator=generator)
        return images[idx], labels[idx]

    return sample


def posterior_batches(mean: torch.Tensor, std: torch.Tensor, scale: float, labels: torch.Tensor) -> BatchFn:
    """Random batches of VAE latents as DiT's ``train.py`` draws them: a fresh posterior sample times ``scale``.

    ``mean``, ``std``: the posterior of every training image ``(N, 4, h, w)`` (e.g. the tiny-fashion VAE's).
    """

    def sample(batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(mean), (batch_size,), generator=generator)
        return (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=generator)) * scale, labels[idx]

    return sample


def image_folder(folder: str | Path) -> ImageFolder:
    """An ImageNet-style folder (``class_x/*.JPEG``) as a dataset; one line when ``folder`` is not a folder of
    class folders with images (checked before a model is loaded)."""
    fix = "pass --data DIR, an ImageNet-style folder (class_x/*.JPEG)"
    name = repr(shorten(folder))
    try:
        info = os.stat(folder)
    except OSError as exc:
        reason = "does not exist" if exc.errno in (errno.ENOENT, errno.ENOTDIR) else f"cannot be read ({exc.strerror})"
        raise InvalidArgumentError(f"image folder {name} {reason}; {fix}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise InvalidArgumentError(f"image folder {name} is a file, not a folder; {fix}")
    try:
        return ImageFolder(str(folder))
    except (OSError, ValueError) as exc:  # no class folders, no images in them, unreadable
        raise InvalidArgumentError(f"image folder {name}: {first_line(exc, 100)}; {fix}") from None


def image_folder_batches(dataset: ImageFolder, image_size: int, vae, device: str | torch.device) -> BatchFn:
    """Random batches from an :func:`image_folder` dataset, VAE-encoded as DiT does.

    Images are center-cropped to ``image_size`` (ADM's crop), randomly flipped, scaled to
    [-1, 1] and encoded to ``0.18215 * vae.encode(x).latent_dist.sample()``.
    """

    def center_crop(image: Image.Image) -> np.ndarray:
        while min(*image.size) >= 2 * image_size:
            image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
        scale = image_size / min(*image.size)
        image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
        arr = np.asarray(image.convert("RGB"))
        top, left = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
        return arr[top : top + image_size, left : left + image_size]

    def sample(batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(dataset), (batch_size,), generator=generator).tolist()
        flips = torch.rand(batch_size, generator=generator) < 0.5
        arrays, ys = [], []
        for j, flip in zip(idx, flips.tolist(), strict=True):
            path, y = dataset.samples[j]
            arr = center_crop(Image.open(path))
            arrays.append(arr[:, ::-1] if flip else arr)
            ys.append(y)
        x = torch.from_numpy(np.stack(arrays).copy()).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.sample(generator=None) * latent_scale(vae)
        return latents, torch.tensor(ys, dtype=torch.long)

    return sample


@torch.enable_grad()
def train_router(
    model: DiT,
    sample_batch: BatchFn,
    config: RouterTrainConfig,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_seconds: float = 300.0,
) -> tuple[torch.Tensor, dict]:
    """Train router logits ``(steps, 2 * depth)`` for ``model`` on batches from ``sample_batch``.

    Returns ``(logits, optimizer state dict)``. The model's weights are not modified. ``checkpoint``: a
    file where the training state (logits, optimiser, random generators) is saved at most every
    ``checkpoint_seconds``; a rerun with the same config continues from it and ends with the same bytes
    as an uninterrupted run. The caller removes it once the routers are saved.
    """
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(config.seed)
    diffusion = create_diffusion(config.steps, learn_sigma=model.learn_sigma)
    logits = torch.randn(config.steps, 2 * model.depth, generator=generator).to(device).requires_grad_(True)
    opt = torch.optim.AdamW([logits], lr=config.lr, weight_decay=0.0)
    start = 0
    weights = state_dict_sha256(model.state_dict()) if checkpoint is not None else None  # resume with the same ones
    if checkpoint is not None and (Path(checkpoint).exists() or Path(checkpoint).is_symlink()):
        start = _resume_router(Path(checkpoint), config, weights, logits, opt, generator)
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    model.eval()
    bar = tqdm(range(start, config.train_steps), desc="train router", disable=not progress, initial=start,
               total=config.train_steps)  # fmt: skip
    saved = time.monotonic()
    try:
        for step in bar:
            if checkpoint is not None and time.monotonic() - saved >= checkpoint_seconds and step > start:
                state = {"config": asdict(config), "weights": weights, "step": step, "logits": logits.detach().cpu(),
                         "opt": opt.state_dict(), "generator": generator.get_state(), "rng": torch.get_rng_state()}
                atomic_torch_save(state, checkpoint)  # fmt: skip
                saved = time.monotonic()
            x0, y = sample_batch(config.batch_size, generator)
            x0, y = x0.to(device), y.to(device)
            drop = torch.rand(config.batch_size, generator=generator) < config.label_dropout
            y = torch.where(drop.to(device), model.null_class, y)
            pair = int(torch.randint(0, config.steps // 2, (1,), generator=generator))
            i = 2 * pair + 1
            t = torch.full((config.batch_size,), i, device=device, dtype=torch.long)
            t_next = t - 1
            noise = torch.randn(x0.shape, generator=generator).to(device)
            cached: dict[tuple[int, int], torch.Tensor] = {}

            def record(block: int, unit: int, compute) -> torch.Tensor:
                cached[(block, unit)] = value = compute()
                return value

            with torch.no_grad():
                x_t = diffusion.q_sample(x0, t, noise)
                out = model(x_t, diffusion.model_timesteps(t), y, unit_fn=record)
                x_next = diffusion.ddim_step(out, x_t, t)
                full = model(x_next, diffusion.model_timesteps(t_next), y)
            scores = torch.sigmoid(logits[i - 1])

            def interpolate(block: int, unit: int, compute) -> torch.Tensor:
                s = scores[2 * block + unit]
                return s * compute() + (1 - s) * cached[(block, unit)]

            pred = model(x_next, diffusion.model_timesteps(t_next), y, unit_fn=interpolate)
            mse = ((full - pred) ** 2).mean()
            loss = mse + config.l1 * scores.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                logits.clamp_(-5, 5)
            bar.set_postfix(mse=f"{mse.item():.2e}", score_sum=f"{scores.sum().item():.1f}")
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
    return logits.detach().cpu(), opt.state_dict()


def _resume_router(path: Path, config: RouterTrainConfig, weights: str, logits, opt, generator) -> int:
    """Restore a training checkpoint into ``logits`` / ``opt`` / ``generator``; returns the next step.

    One line (how to restart) when it is not a regular file, not a checkpoint of router training (read with
    ``weights_only=True``: a pickle never runs code), or from other settings or other model weights.
    """
    restart = RESTART
    name = repr(shorten(path))
    kinds = {"config": dict, "weights": str, "step": int, "logits": torch.Tensor, "opt": dict,
             "generator": torch.Tensor, "rng": torch.Tensor}  # fmt: skip
    state = read_torch_file(path, "router checkpoint", restart, kinds, "a checkpoint of `goc train-router`")
    if state["config"] != asdict(config):
        raise InvalidArgumentError(
            f"router checkpoint {name} is from a run with other settings; rerun with the same ones to resume, "
            f"or {restart}"
        )
    if state["weights"] != weights:
        raise InvalidArgumentError(
            f"router checkpoint {name} is from a run with other model weights (--ckpt); rerun with the same "
            f"weights to resume, or {restart}"
        )
    entries = state["opt"].get("state")
    entries = [entry for entry in entries.values() if isinstance(entry, dict)] if isinstance(entries, dict) else []
    moments = [value for entry in entries for value in entry.values() if isinstance(value, torch.Tensor) and value.ndim]
    shapes = {tuple(t.shape) for t in [state["logits"], *moments]}
    floats = state["logits"].is_floating_point()
    if shapes != {tuple(logits.shape)} or not floats or not 0 < state["step"] < config.train_steps:
        raise InvalidArgumentError(f"router checkpoint {name} is damaged (its logits or step do not fit); {restart}")
    try:
        opt.load_state_dict(state["opt"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["rng"])
    except Exception as exc:  # noqa: BLE001 - optimiser or random state of another shape
        raise InvalidArgumentError(f"router checkpoint {name} is damaged ({first_line(exc, 100)}); {restart}") from None
    with torch.no_grad():
        logits.copy_(state["logits"].to(logits.device))
    return state["step"]


def save_router(
    path: str | Path, logits: torch.Tensor, opt_state: dict, config: RouterTrainConfig, model_name: str
) -> Path:
    """Write routers in Learning-to-Cache's checkpoint format (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    routers = {f"{k}.prob": logits[k].clone() for k in range(logits.shape[0])}
    args = argparse.Namespace(
        model=model_name, num_sampling_steps=config.steps, **{k: v for k, v in asdict(config).items() if k != "steps"}
    )
    return atomic_torch_save({"routers": routers, "opt": _interned(opt_state), "args": args}, path)


def _interned(obj):
    """``obj`` with every string dict key interned, so that pickling gives the same bytes for equal values
    whether the optimiser state was built in this process or loaded from a checkpoint (pickle memoizes by
    object identity)."""
    if isinstance(obj, dict):
        return {sys.intern(k) if isinstance(k, str) else k: _interned(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_interned(v) for v in obj]
    return obj
