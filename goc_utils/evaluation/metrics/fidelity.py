"""Fidelity of cached samples to the un-cached run with the same noise: PSNR and SSIM.

Caching libraries report these next to FID because they isolate the cache's error from
the model's quality: both images come from the same noise and label, so a perfect cache
gives PSNR = inf and SSIM = 1.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from goc_utils.errors import InvalidArgumentError, shorten
from goc_utils.evaluation.metrics.batches import batch_info, iter_images
from goc_utils.evaluation.metrics.paired import PairedDifference, paired_bootstrap


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


def _gaussian_1d(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _ssim_map(a: np.ndarray, b: np.ndarray, data_range: float, window: int, sigma: float, device) -> torch.Tensor:
    """Per-position SSIM values of every image and channel (valid region), float64."""
    size = min(window, min(a.shape[1:3]) - (1 - min(a.shape[1:3]) % 2))
    if size < 1:
        raise InvalidArgumentError(f"images of size {a.shape[1:3]} are too small for SSIM")
    g = _gaussian_1d(size, sigma).to(device)
    rows, cols = g.view(1, 1, size, 1), g.view(1, 1, 1, size)
    x = torch.from_numpy(np.ascontiguousarray(a)).to(device).permute(0, 3, 1, 2).double().flatten(0, 1)[:, None]
    y = torch.from_numpy(np.ascontiguousarray(b)).to(device).permute(0, 3, 1, 2).double().flatten(0, 1)[:, None]

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable Gaussian, valid region
        return F.conv2d(F.conv2d(t, rows), cols)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


def ssim(
    a: np.ndarray, b: np.ndarray, data_range: float = 255.0, window: int = 11, sigma: float = 1.5, device="cpu"
) -> float:
    """Mean SSIM (Wang et al. 2004) over images and channels.

    Gaussian window (11 x 11, sigma 1.5; shrunk to the largest odd size that fits images smaller
    than 11 px), statistics over the valid region only, K1 = 0.01, K2 = 0.03, population
    (co)variances: the definition of the paper and of ``skimage`` with ``gaussian_weights=True``.
    """
    _check_pair(a, b)
    return float(_ssim_map(a, b, data_range, window, sigma, device).mean())


def file_fidelity(path_a, path_b, batch_size: int = 256, device="cpu") -> tuple[float, float]:
    """``(PSNR, SSIM)`` of two ADM batch files, streamed in chunks (50,000 images never sit in memory)."""
    info_a, info_b = batch_info(path_a), batch_info(path_b)
    if (info_a.count, info_a.image_shape) != (info_b.count, info_b.image_shape):
        raise InvalidArgumentError(
            f"fidelity needs batches of one shape: {info_a.count} x {info_a.image_shape} vs "
            f"{info_b.count} x {info_b.image_shape} (sample both methods with the same --num-samples)"
        )
    squared, ssim_sum, positions = 0.0, 0.0, 0
    for x, y in zip(iter_images(path_a, batch_size), iter_images(path_b, batch_size), strict=True):
        squared += float(np.sum((x.astype(np.float64) - y.astype(np.float64)) ** 2))
        values = _ssim_map(x, y, 255.0, 11, 1.5, device)
        ssim_sum += float(values.sum())
        positions += values.numel()
    mse = squared / (info_a.count * np.prod(info_a.image_shape))
    return (float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))), ssim_sum / positions


def squared_errors(path, reference, batch_size: int = 256) -> np.ndarray:
    """Per-image sum of squared pixel errors ``(N,)`` float64 of a batch file against a reference batch of the same
    noise (the un-cached run), streamed in chunks."""
    info, ref = batch_info(path), batch_info(reference)
    if (info.count, info.image_shape) != (ref.count, ref.image_shape):
        raise InvalidArgumentError(
            f"{shorten(info.path.name)} holds {info.count} x {info.image_shape}, the reference {ref.count} x "
            f"{ref.image_shape}; sample both with the same --num-samples and seed"
        )
    chunks = [
        np.sum((x.astype(np.float64) - y.astype(np.float64)) ** 2, axis=(1, 2, 3))
        for x, y in zip(iter_images(path, batch_size), iter_images(reference, batch_size), strict=True)
    ]
    return np.concatenate(chunks)


def paired_psnr_difference(
    path_a, path_b, reference, resamples: int = 200, seed: int = 0, batch_size: int = 256
) -> PairedDifference:
    """PSNR of two sample files against the reference of the same noise and the paired bootstrap spread of the
    difference (:class:`PairedDifference`). A method that reproduces the reference exactly has no finite PSNR to
    compare and is refused in one line."""
    errors = {}
    for name, path in (("A", path_a), ("B", path_b)):
        errors[name] = squared_errors(path, reference, batch_size)
        if not errors[name].any():
            raise InvalidArgumentError(
                f"{shorten(str(path))} reproduces the reference exactly (PSNR inf); there is no difference to spread"
            )
    a, b = errors["A"], errors["B"]
    if len(a) != len(b):
        raise InvalidArgumentError(f"the two files hold {len(a)} and {len(b)} images; sample both with one count")
    pixels = int(np.prod(batch_info(reference).image_shape))

    def pooled(sse: np.ndarray) -> float:
        return float(10 * np.log10(255.0**2 * pixels / max(float(sse.mean()), np.finfo(np.float64).tiny)))

    psnr_a, psnr_b, std = paired_bootstrap(lambda index: (pooled(a[index]), pooled(b[index])), len(a), resamples, seed)
    return PairedDifference("PSNR vs reference", "dB", psnr_a, psnr_b, psnr_a - psnr_b, std, len(a), resamples)


__all__ = ["file_fidelity", "paired_psnr_difference", "psnr", "squared_errors", "ssim"]
