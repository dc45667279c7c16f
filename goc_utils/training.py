"""Training of the embedded models: the ``tiny-digits`` DiT and the digits classifier.

``train_tiny_dit`` uses DiT's objective (eps MSE + VLB for the learned variance, 1,000
training timesteps, class dropout 0.1, EMA weights). It checkpoints atomically every
``checkpoint_every`` steps to ``run_dir`` and resumes from there, so a stopped run loses at
most one interval; progress goes to a tqdm bar and a JSON-lines log.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from goc_utils import paths
from goc_utils.data import load_digits_tensors, train_test_split_indices
from goc_utils.diffusion import create_diffusion
from goc_utils.files import atomic_save_safetensors, atomic_torch_save
from goc_utils.models import create_model


@dataclass
class TinyTrainConfig:
    """Hyper-parameters of the tiny-digits DiT run.

    Attributes:
        steps: total optimiser steps (default 20,000).
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


def _update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.mul_(decay).add_(p.detach(), alpha=1 - decay)


@torch.enable_grad()
def train_tiny_dit(
    config: TinyTrainConfig,
    run_dir: Path | None = None,
    out: Path | None = None,
    progress: bool = True,
) -> Path:
    """Train (or resume) the tiny-digits DiT; write its EMA weights to ``out`` when done.

    Returns the path of the exported EMA safetensors file.
    """
    run_dir = Path(run_dir or paths.RUNS_DIR / "train_tiny")
    out = Path(out or paths.TINY_DIGITS_WEIGHTS)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = run_dir / "checkpoint.pt", run_dir / "log.jsonl"
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    images, labels = load_digits_tensors()
    model = create_model("tiny-digits")
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    diffusion = create_diffusion("")
    generator = torch.Generator().manual_seed(config.seed)
    step = 0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])

    def save_checkpoint() -> None:
        atomic_torch_save(
            {
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "opt": opt.state_dict(),
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "step": step,
                "config": json.dumps(asdict(config)),
            },
            ckpt_path,
        )
        atomic_save_safetensors(ema.state_dict(), run_dir / "ema_latest.safetensors", {"step": str(step)})

    model.train()
    ema.eval()
    bar = tqdm(total=config.steps, initial=step, desc="train tiny-digits", disable=not progress)
    running, started = [], time.time()
    with open(log_path, "a") as log:
        while step < config.steps:
            idx = torch.randint(0, len(images), (config.batch_size,), generator=generator)
            t = torch.randint(0, diffusion.num_timesteps, (config.batch_size,), generator=generator)
            noise = torch.randn(images[idx].shape, generator=generator)
            lr = config.lr * min(1.0, (step + 1) / config.warmup)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = diffusion.training_losses(model, images[idx], t, labels[idx], noise=noise)["loss"].mean()
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
    meta = {"preset": "tiny-digits", "steps": str(step), "config": json.dumps(asdict(config))}
    atomic_save_safetensors(ema.state_dict(), out, meta)
    return out


# --------------------------------------------------------------------------------------
# Digits classifier (feature extractor of the tiny study)
# --------------------------------------------------------------------------------------


class DigitsClassifier(nn.Module):
    """Small CNN on 8x8 digits in [-1, 1]: ``(N, 1, 8, 8)`` -> logits ``(N, 10)``.

    ``features(x)`` returns the 128-d penultimate activations used for FID-style metrics.
    """

    feature_dim = 128

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(64 * 4 * 4, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def load_digits_classifier(path: Path | None = None) -> DigitsClassifier:
    """The committed classifier (eval mode)."""
    model = DigitsClassifier()
    model.load_state_dict(load_file(str(path or paths.DIGITS_CLASSIFIER_WEIGHTS)))
    return model.eval()


@torch.enable_grad()
def train_digits_classifier(
    epochs: int = 60, seed: int = 0, out: Path | None = None, progress: bool = True
) -> tuple[Path, float]:
    """Train the classifier on 80% of the digits (1-pixel shifts + small noise as augmentation).

    Returns ``(weights path, accuracy on the held-out 20%)``.
    """
    torch.manual_seed(seed)
    images, labels = load_digits_tensors()
    train_idx, test_idx = train_test_split_indices(len(images), 0.2, seed)
    x_train, y_train = images[train_idx], labels[train_idx]
    model = DigitsClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="train digits classifier", disable=not progress):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            x = x_train[batch]
            shift = torch.randint(-1, 2, (2,), generator=generator).tolist()
            x = torch.roll(x, shifts=shift, dims=(2, 3))
            x = x + 0.1 * torch.randn(x.shape, generator=generator)
            loss = F.cross_entropy(model(x), y_train[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(images[test_idx]).argmax(1) == labels[test_idx]).float().mean().item()
    out = Path(out or paths.DIGITS_CLASSIFIER_WEIGHTS)
    atomic_save_safetensors(model.state_dict(), out, {"test_accuracy": f"{accuracy:.4f}", "epochs": str(epochs)})
    return out, accuracy
