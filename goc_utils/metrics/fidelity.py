"""Fidelity of cached samples to the un-cached run with the same noise: PSNR and SSIM.

Caching libraries report these next to FID because they isolate the cache's error from
the model's quality: both images come from the same noise and label, so a perfect cache
gives PSNR = inf and SSIM = 1.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from goc_utils.errors import InvalidArgumentError


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape or a.ndim != 4:
        raise InvalidArgumentError(
            f"fidelity needs two uint8 (N, H, W, C) batches of one shape; got {a.shape} and {b.shape} "
            "(sample both methods with the same --num-samples and seed)"
        )


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """PSNR in dB of the whole set: ``10 log10(range^2 / MSE)`` with the MSE over every pixel.

    Pooling the MSE over the set (rather than averaging per-image PSNR) keeps the number finite
    when some images are reproduced exactly; identical sets give ``inf``.
    """
    _check_pair(a, b)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004) over images and channels.

    Gaussian window (11 x 11, sigma 1.5; shrunk to the largest odd size that fits images smaller
    than 11 px), statistics over the valid region only, K1 = 0.01, K2 = 0.03, population
    (co)variances: the definition of the paper and of ``skimage`` with ``gaussian_weights=True``.
    """
    _check_pair(a, b)
    size = min(window, min(a.shape[1:3]) - (1 - min(a.shape[1:3]) % 2))
    if size < 1:
        raise InvalidArgumentError(f"images of size {a.shape[1:3]} are too small for SSIM")
    kernel = _gaussian_window(size, sigma)[None, None]
    x = torch.from_numpy(a).permute(0, 3, 1, 2).double().flatten(0, 1)[:, None]
    y = torch.from_numpy(b).permute(0, 3, 1, 2).double().flatten(0, 1)[:, None]

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


__all__ = ["psnr", "ssim"]
