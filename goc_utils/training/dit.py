"""Training of the tiny DiTs (``tiny-digits``, ``tiny-fashion``); their judges: :mod:`goc_utils.training.judges`.

:func:`train_dit` is one loop for both tiny presets, with DiT's objective (eps MSE + VLB for the
learned variance, 1,000 training timesteps, class dropout 0.1, EMA weights). ``tiny-digits`` trains
on the digits' pixels; ``tiny-fashion`` on latents of the tier's VAE, drawn as DiT's ``train.py``
draws them (a fresh sample of the posterior for every batch, times the VAE's ``scaling_factor``).
It checkpoints atomically every ``checkpoint_every`` steps to ``run_dir`` and resumes from there
with identical bytes, so a stopped run loses at most one interval; progress goes to a tqdm bar
and a JSON-lines log.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from goc_utils import paths
from goc_utils.datasets import dataset_sha256, load_digits_tensors, load_fashion_tensors
from goc_utils.errors import InvalidArgumentError
from goc_utils.files import (
    apply_training_state,
    atomic_save_safetensors,
    atomic_torch_save,
    file_sha256,
    input_file,
    read_torch_file,
    read_training_state,
    save_training_state,
)
from goc_utils.model.diffusion import create_diffusion
from goc_utils.model.presets import create_model, preset_info
from goc_utils.model.vae import latent_scale, load_vae
from goc_utils.training.vae import encode_posterior

TRAINABLE_PRESETS = ("tiny-digits", "tiny-fashion")


@dataclass
class DiTTrainConfig:
    """Hyper-parameters of a tiny DiT run (defaults: tiny-digits; :func:`default_train_config` per preset).

    Attributes:
        steps: total optimiser steps (tiny-digits 20,000; tiny-fashion 8,000: about 0.45 s a step on two CPU cores).
        batch_size: images per step (128).
        lr: AdamW learning rate after warm-up (4e-4; weight decay 0 as in DiT).
        warmup: linear warm-up steps (500).
        ema_decay: EMA decay of the exported weights (0.999).
        grad_clip: gradient-norm clip (1.0).
        seed: seed of initialisation, batches, timesteps and noise (0).
        checkpoint_every: steps between resumable checkpoints (500).
        threads: torch CPU threads (2).
    """

    steps: int = 20_000
    batch_size: int = 128
    lr: float = 4e-4
    warmup: int = 500
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 500
    threads: int = 2


def default_train_config(preset: str, **overrides) -> DiTTrainConfig:
    """The committed weights' recipe for ``preset`` (``tiny-digits`` or ``tiny-fashion``), with ``overrides``."""
    if preset not in TRAINABLE_PRESETS:
        raise InvalidArgumentError(f"only {', '.join(TRAINABLE_PRESETS)} are trained here (got {preset!r})")
    config = DiTTrainConfig(steps=8_000) if preset == "tiny-fashion" else DiTTrainConfig()
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


def _update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.mul_(decay).add_(p.detach(), alpha=1 - decay)


BatchFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""``draw(indices, generator) -> x0`` model-space training inputs for the given example indices."""


def vae_sha256(vae_dir: Path | None = None) -> str:
    """Hex sha256 of the tier VAE's weights file (one line when it is missing: train it first)."""
    weights = Path(vae_dir or paths.TINY_FASHION_VAE) / "diffusion_pytorch_model.safetensors"
    return file_sha256(input_file(weights, "tiny-fashion VAE weights", "train it with goc train-fashion --stages vae"))


def fashion_latents(vae_dir: Path | None = None, cache_dir: Path | None = None, progress: bool = True):
    """Posterior ``(mean, std)`` of the 60,000 padded training images under the tier's VAE, and its scale.

    Encoded once and cached in ``cache_dir/latents.pt`` keyed by the VAE weights' sha256 and the data set's
    (:func:`~goc_utils.datasets.dataset_sha256`; a cache from before the data were recorded is taken as theirs); a
    cache of another VAE or data set is encoded again, one that is not a latents cache is one line.
    Returns ``(mean (N, 4, 8, 8), std (N, 4, 8, 8), scaling_factor)``.
    """
    vae_dir = Path(vae_dir or paths.TINY_FASHION_VAE)
    key, data = vae_sha256(vae_dir), dataset_sha256("fashion-train")
    cache = Path(cache_dir) / "latents.pt" if cache_dir else None
    if cache is not None and (cache.exists() or cache.is_symlink()):
        kinds = {"vae_sha256": str, "mean": torch.Tensor, "std": torch.Tensor, "scale": (int, float)}
        fix = "delete it to encode the latents again"
        state = read_torch_file(cache, "latents cache", fix, kinds, "a latents cache of `goc train-tiny`")
        mean, std, scale = state["mean"], state["std"], state["scale"]
        floats = mean.is_floating_point() and std.is_floating_point()
        if mean.ndim != 4 or std.shape != mean.shape or not floats or not 0 < scale < float("inf"):
            raise InvalidArgumentError(f"latents cache {str(cache)!r} is damaged (its shapes, types or scale); {fix}")
        if state["vae_sha256"] == key and state.get("data", data) == data:
            return mean, std, float(scale)
    vae = load_vae(str(vae_dir))
    images, _ = load_fashion_tensors("train")
    mean, std = encode_posterior(vae, images, progress=progress)
    scale = latent_scale(vae)
    if cache is not None:
        atomic_torch_save({"vae_sha256": key, "data": data, "mean": mean, "std": std, "scale": scale}, cache)
    return mean, std, scale


def training_data(preset: str, run_dir: Path, progress: bool = True) -> tuple[int, torch.Tensor, BatchFn]:
    """``(number of examples, labels (N,), draw)`` for a tiny preset's training set."""
    if preset == "tiny-digits":
        images, labels = load_digits_tensors()
        return len(images), labels, lambda idx, generator: images[idx]
    mean, std, scale = fashion_latents(cache_dir=run_dir, progress=progress)
    _, labels = load_fashion_tensors("train")
    if len(mean) != len(labels):
        raise InvalidArgumentError(
            f"latents cache in {str(run_dir)!r} holds {len(mean):,} latents, but the training set has {len(labels):,} "
            "images; delete it to encode the latents again"
        )

    def draw(idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=generator)) * scale

    return len(mean), labels, draw


def run_settings(preset: str, config: DiTTrainConfig) -> dict:
    """What shapes a run's weights, recorded in its checkpoint: a resume with another value is refused. The data
    (and tiny-fashion's VAE) by their sha256. Not recorded: ``steps`` (the learning rate does not depend on it, so a
    longer run continues a shorter one exactly; a checkpoint beyond it is refused), ``threads`` and
    ``checkpoint_every``."""
    settings = {"preset": preset, "data": dataset_sha256("digits" if preset == "tiny-digits" else "fashion-train")}
    if preset == "tiny-fashion":
        settings["vae"] = vae_sha256()
    ignored = ("steps", "threads", "checkpoint_every")
    return settings | {k: v for k, v in asdict(config).items() if k not in ignored}


RESUME_FIX = "choose another --run-dir, or delete it to start over"


@torch.enable_grad()
def train_dit(
    preset: str,
    config: DiTTrainConfig | None = None,
    run_dir: Path | None = None,
    out: Path | None = None,
    progress: bool = True,
) -> Path:
    """Train (or resume) a tiny DiT preset; write its EMA weights to ``out`` when done.

    Defaults: ``config`` :func:`default_train_config`, ``run_dir`` ``runs/train_<preset>``, ``out`` the
    preset's committed weights. Returns the path of the exported EMA safetensors file.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     folder = Path(tmp)
        ...     config = DiTTrainConfig(steps=2, batch_size=4)
        ...     train_dit("tiny-digits", config, folder / "run", folder / "dit.safetensors", progress=False).name
        'dit.safetensors'
    """
    config = config or default_train_config(preset)
    if preset not in TRAINABLE_PRESETS:
        raise InvalidArgumentError(f"only {', '.join(TRAINABLE_PRESETS)} are trained here (got {preset!r})")
    slug = preset.replace("-", "_")
    run_dir = Path(run_dir or paths.RUNS_DIR / f"train_{slug}")
    out = Path(out or preset_info(preset).checkpoint)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = run_dir / "checkpoint.pt", run_dir / "log.jsonl"
    settings = run_settings(preset, config)
    state = read_training_state(ckpt_path, "step", ("model", "ema", "opt"), settings, config.steps, RESUME_FIX)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    n_examples, labels, draw = training_data(preset, run_dir, progress)
    torch.manual_seed(config.seed)
    model = create_model(preset)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    diffusion = create_diffusion("")
    generator = torch.Generator().manual_seed(config.seed)
    parts = {"model": model, "ema": ema, "opt": opt}
    step = 0 if state is None else apply_training_state(ckpt_path, state, "step", generator, RESUME_FIX, **parts)

    def save_checkpoint() -> None:
        save_training_state(ckpt_path, "step", step, generator, settings, **parts)
        atomic_save_safetensors(ema.state_dict(), run_dir / "ema_latest.safetensors", {"step": str(step)})

    model.train()
    ema.eval()
    bar = tqdm(total=config.steps, initial=step, desc=f"train {preset}", disable=not progress)
    running, started = [], time.time()
    with open(log_path, "a") as log:
        while step < config.steps:
            idx = torch.randint(0, n_examples, (config.batch_size,), generator=generator)
            x0 = draw(idx, generator)
            t = torch.randint(0, diffusion.num_timesteps, (config.batch_size,), generator=generator)
            noise = torch.randn(x0.shape, generator=generator)
            lr = config.lr * min(1.0, (step + 1) / config.warmup)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = diffusion.training_losses(model, x0, t, labels[idx], noise=noise)["loss"].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            _update_ema(ema, model, config.ema_decay if step >= config.warmup else 0.0)
            step += 1
            running.append(loss.item())
            bar.update(1)
            if step % 100 == 0 or step == config.steps:
                record = {"step": step, "loss": float(np.mean(running)), "lr": lr, "elapsed_s": time.time() - started}
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                running = []
            if step % config.checkpoint_every == 0 or step == config.steps:
                save_checkpoint()
    bar.close()
    torch.set_num_threads(previous_threads)
    meta = {"preset": preset, "steps": str(step), "config": json.dumps(asdict(config))}
    atomic_save_safetensors(ema.state_dict(), out, meta)
    return out


# --------------------------------------------------------------------------------------
# The judges: small classifiers whose features play Inception's roles in the tiny tiers
# --------------------------------------------------------------------------------------
