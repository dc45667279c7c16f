"""TCC's alpha chosen on held-out noise: one trajectory-consistent pack per alpha, scored by its samples.

The published scripts tune alpha per setting (1.75 for DiT FORA / L2C, 0.5 for DiT-ToCa, 0.5 / 0.25 for PixArt).
:func:`choose_tcc_alpha` fits one pack per alpha of a grid (each replaying the earlier targets' maps at its own
alpha, so a pack is used at the alpha it was fitted with), samples held-out noise with each (noise seed
``holdout_seed``, which neither the fit, seed 1, nor the evaluation runs, seed 0, use), and keeps the pack whose
final images are closest to the un-cached images of the same noise (PSNR over the set, as ``goc eval``'s
``psnr_vs_none``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from goc_utils.cache import CacheEngine, Resources, TCCPack, build_compensator
from goc_utils.errors import InvalidArgumentError
from goc_utils.evaluation.metrics.fidelity import psnr
from goc_utils.model.dit import DiT
from goc_utils.model.sampler import generate, sample_seed
from goc_utils.priors.tcc_fit import TCCFit, fit_tcc_pack, host_method

HOLDOUT_SEED = 2
"""Noise seed of the held-out samples: the fit uses 1 and the evaluation runs 0."""


@dataclass
class AlphaChoice:
    """The chosen pack and every alpha's held-out PSNR (dB, against the un-cached images of the same noise)."""

    pack: TCCPack
    psnr: dict[float, float]
    host_psnr: float

    @property
    def alpha(self) -> float:
        return float(self.pack.fit_alpha)


def holdout_noise(model: DiT, count: int, seed: int = HOLDOUT_SEED) -> torch.Tensor:
    """``(count, C, H, W)``: sample ``i``'s noise from its own generator of (seed, i), as the evaluation runs draw."""
    return torch.stack([
        torch.randn(model.in_channels, model.input_size, model.input_size,
                    generator=torch.Generator().manual_seed(sample_seed(seed, i)))
        for i in range(count)
    ])  # fmt: skip


@dataclass(frozen=True)
class Holdout:
    """The held-out set alpha is chosen on: ``per_class`` samples of each fitted class, noise seed ``seed``."""

    per_class: int = 10
    seed: int = HOLDOUT_SEED


def choose_tcc_alpha(
    model: DiT,
    host: str,
    alphas: Sequence[float],
    fit: TCCFit,
    resources: Resources | None = None,
    vae=None,
    holdout: Holdout = Holdout(),
) -> AlphaChoice:
    """Fit ``host``'s pack at every alpha of ``alphas`` (``fit`` otherwise) and keep the one best on held-out noise.

    A tie keeps the smaller alpha. Same arguments, same bytes on the CPU.
    """
    grid = sorted({float(a) for a in alphas})
    if not grid or grid[0] <= 0:
        raise InvalidArgumentError(f"TCC alphas to choose from must be > 0 (got {list(alphas)}); e.g. 0.25,0.5,1,1.75")
    if holdout.per_class < 1:
        raise InvalidArgumentError(f"held-out samples per class must be >= 1 (got {holdout.per_class})")
    steps, cfg_scale, batch_size = fit.steps, fit.cfg_scale, fit.batch_size
    labels = [int(c) for c in fit.classes for _ in range(holdout.per_class)]
    noise = holdout_noise(model, len(labels), holdout.seed).to(next(model.parameters()).device)

    def images(forward=None) -> np.ndarray:
        parts = [
            generate(model, labels[i : i + batch_size], steps=steps, cfg_scale=cfg_scale, vae=vae, forward=forward,
                     noise=noise[i : i + batch_size]).images
            for i in range(0, len(labels), batch_size)
        ]  # fmt: skip
        return np.concatenate(parts)

    method = host_method(model, host, fit, resources)

    def engine(compensator: str, **options) -> CacheEngine:
        return CacheEngine(method.schedule, build_compensator(compensator, **options), model=model)

    reference = images()
    host_psnr = psnr(images(engine("none").forward), reference)
    scores: dict[float, float] = {}
    best: TCCPack | None = None
    for alpha in grid:
        pack = fit_tcc_pack(model, method, replace(fit, alpha=alpha), resources)
        scores[alpha] = psnr(images(engine("tcc", pack=pack).forward), reference)
        if best is None or scores[alpha] > scores[float(best.fit_alpha)]:
            best = pack
    return AlphaChoice(best, scores, host_psnr)
