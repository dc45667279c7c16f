"""The tiny-fashion tier's VAE: a small diffusers ``AutoencoderKL`` trained by the project.

Structure as Stable Diffusion's VAE at 256 px, in miniature: 1 grey channel in and out, 4 latent
channels and a downsampling factor of 4 (three encoder stages, two downsamplings), so a padded
32x32 Fashion-MNIST image becomes an 8x8x4 latent, as a 256x256 image becomes 32x32x4 under
``sd-vae-ft-ema``. Objective as SD's first stage without its perceptual and adversarial terms:
the per-image sum of squared pixel errors plus ``kl_weight`` times the per-image KL divergence of
the diagonal Gaussian posterior from N(0, I) (SD: 1e-6). Its ``scaling_factor`` is measured as SD's
0.18215 was: one over the standard deviation of latents sampled from the posterior of the
training images, so that the scaled latents have unit variance; it is stored in the VAE's config,
where every loader reads it (:func:`goc_utils.model.vae.latent_scale`).

Training checkpoints atomically to ``run_dir`` every ``checkpoint_every`` steps and resumes from
there with identical results; progress goes to a tqdm bar and a JSON-lines log.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from goc_utils import paths
from goc_utils.datasets import dataset_sha256, load_fashion_tensors, to_uint8
from goc_utils.evaluation.metrics.fidelity import psnr
from goc_utils.files import atomic_write_dir, restore_training_state, save_training_state


@dataclass
class VAETrainConfig:
    """Hyper-parameters of the tiny-fashion VAE run.

    Attributes:
        steps: optimiser steps (default 3,000 at batch 64: about 3 epochs of the 60,000 images).
        batch_size: images per step (64).
        lr: Adam learning rate after warm-up (1e-3), cosine-decayed to 5% at the last step.
        warmup: linear warm-up steps (100).
        kl_weight: weight of the per-image KL term against the per-image squared error (1e-6, SD's).
        channels: output channels of the three encoder stages (16, 32, 64; sized so that a step of 64
            images takes about 0.3 s on two CPU cores).
        seed: seed of initialisation, batches and posterior noise (0).
        checkpoint_every: steps between resumable checkpoints (250).
        threads: torch CPU threads (2).
    """

    steps: int = 3_000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    kl_weight: float = 1e-6
    channels: tuple[int, ...] = (16, 32, 64)
    seed: int = 0
    checkpoint_every: int = 250
    threads: int = 2


def build_vae(channels: tuple[int, ...] = (16, 32, 64)):
    """A randomly initialised ``AutoencoderKL``: 1 channel, 4 latent channels, factor ``2 ** (len(channels) - 1)``."""
    from diffusers import AutoencoderKL  # lazy: diffusers' import is slow and only latent presets need it

    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=tuple(channels),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=32,
        scaling_factor=1.0,
    )


def _lr_at(config: VAETrainConfig, step: int) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * progress)))


@torch.no_grad()
def encode_posterior(vae, images: torch.Tensor, batch_size: int = 500, progress: bool = False):
    """Posterior ``(mean, std)`` of ``images (N, 1, 32, 32)``: two ``(N, 4, 8, 8)`` float32 tensors (unscaled)."""
    means, stds = [], []
    for chunk in tqdm(torch.split(images, batch_size), desc="encode", disable=not progress, leave=False):
        dist = vae.encode(chunk).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def measure_scaling_factor(vae, images: torch.Tensor, seed: int = 0) -> float:
    """SD's recipe: ``1 / std`` of latents sampled from the posterior of ``images``, to 5 significant digits."""
    mean, std = encode_posterior(vae, images)
    generator = torch.Generator().manual_seed(seed)
    z = mean + std * torch.randn(mean.shape, generator=generator)
    return float(f"{1.0 / z.double().std().item():.5g}")


@torch.no_grad()
def reconstruction_psnr(vae, images: torch.Tensor, batch_size: int = 500) -> dict[str, float]:
    """PSNR (dB, uint8 images, peak 255, MSE pooled over the set) of ``decode(posterior mean)`` vs ``images``.

    ``psnr_32`` is over the padded 32x32 images the model sees, ``psnr_28`` over the 28x28 garment
    area only (the black border is easy to reconstruct and would flatter the number).
    """
    recon = torch.cat([vae.decode(vae.encode(c).latent_dist.mean).sample for c in torch.split(images, batch_size)])
    ref, out = to_uint8(images), to_uint8(recon)
    crop = (slice(None), slice(2, 30), slice(2, 30))
    return {
        "psnr_32": psnr(out, ref),
        "psnr_28": psnr(out[crop], ref[crop]),
    }


@torch.enable_grad()
def train_fashion_vae(
    config: VAETrainConfig, run_dir: Path | None = None, out: Path | None = None, progress: bool = True
) -> tuple[Path, dict]:
    """Train (or resume) the tier's VAE; measure its scaling factor; ``save_pretrained`` it to ``out``.

    Returns ``(folder, report)`` where the report holds the scaling factor and the test PSNR. The checkpoint records
    the data (by their sha256) and every setting but ``threads`` and ``checkpoint_every``; a resume with another value
    is refused (also ``steps``: the learning rate's cosine depends on it).
    """
    run_dir = Path(run_dir or paths.RUNS_DIR / "train_fashion_vae")
    out = Path(out or paths.TINY_FASHION_VAE)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = run_dir / "checkpoint.pt", run_dir / "log.jsonl"
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    images, _ = load_fashion_tensors("train")
    vae = build_vae(config.channels)
    opt = torch.optim.Adam(vae.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    ignored = ("threads", "checkpoint_every")
    settings = {"data": dataset_sha256("fashion-train")} | {k: v for k, v in asdict(config).items() if k not in ignored}
    step = restore_training_state(ckpt_path, "step", generator, settings, config.steps, model=vae, opt=opt)

    vae.train()
    bar = tqdm(total=config.steps, initial=step, desc="train tiny-fashion VAE", disable=not progress)
    running, started = [], time.time()
    with open(log_path, "a") as log:
        while step < config.steps:
            x = images[torch.randint(0, len(images), (config.batch_size,), generator=generator)]
            lr = _lr_at(config, step)
            for group in opt.param_groups:
                group["lr"] = lr
            posterior = vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
            recon = vae.decode(z).sample
            rec = (recon - x).pow(2).flatten(1).sum(1).mean()
            kl = posterior.kl().mean()
            loss = rec + config.kl_weight * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            step += 1
            running.append((rec.item(), kl.item()))
            bar.update(1)
            if step % 50 == 0 or step == config.steps:
                rec_mean, kl_mean = np.mean(running, axis=0)
                # per-pixel MSE in [-1, 1] units -> PSNR on a 0..255 scale (peak-to-peak 2)
                train_psnr = 10 * np.log10(4.0 / max(rec_mean / x[0].numel(), 1e-12))
                record = {"step": step, "rec": float(rec_mean), "kl": float(kl_mean), "train_psnr": float(train_psnr),
                          "lr": lr, "elapsed_s": time.time() - started}
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.set_postfix(psnr=f"{train_psnr:.2f}", kl=f"{kl_mean:.0f}")
                running = []
            if step % config.checkpoint_every == 0 or step == config.steps:
                save_training_state(ckpt_path, "step", step, generator, settings, model=vae, opt=opt)
    bar.close()
    vae.eval()
    scale = measure_scaling_factor(vae, images, seed=config.seed)
    vae.register_to_config(scaling_factor=scale)
    test_images, _ = load_fashion_tensors("test")
    report = {"scaling_factor": scale, **reconstruction_psnr(vae, test_images), "steps": step,
              "config": asdict(config)}
    with atomic_write_dir(out) as tmp:
        vae.save_pretrained(tmp, safe_serialization=True)
        (tmp / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    torch.set_num_threads(previous_threads)
    return out, report
