"""Plots and image grids of the study (matplotlib); every figure goes to ``figures/``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def image_grid(images: np.ndarray, nrow: int, padding: int = 2, pad_value: int = 255) -> np.ndarray:
    """uint8 ``(N, H, W, C)`` -> one uint8 ``(rows*(H+p)+p, nrow*(W+p)+p, C)`` grid, row-major."""
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (N, H, W, C), got {images.dtype} {images.shape}")
    n, h, w, c = images.shape
    nrow = max(1, min(nrow, n))
    rows = -(-n // nrow)
    grid = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top : top + h, left : left + w] = images[i]
    return grid


def save_image_grid(images: np.ndarray, path: str | Path, nrow: int, upscale: int = 1, padding: int = 2) -> Path:
    """Save a uint8 image grid as PNG; ``upscale`` enlarges small images (nearest neighbour) first."""
    if upscale > 1:
        images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)
    grid = image_grid(images, nrow, padding=padding)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode_image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    mode_image.save(path)
    return path


def sample_grid_figure(
    images: np.ndarray,
    labels: Sequence[int],
    nrow: int,
    title: str | None = None,
    predicted: Sequence[int] | None = None,
):
    """A matplotlib figure of uint8 samples ``(N, H, W, C)``, read row by row.

    With ``predicted`` (a classifier's verdicts), a red ``label→prediction`` marks each
    sample whose predicted class differs from its label.
    """
    import matplotlib.pyplot as plt

    n = len(images)
    rows = -(-n // nrow)
    size = 0.6 if images.shape[1] <= 32 else 1.6
    fig, axes = plt.subplots(rows, nrow, figsize=(size * nrow + 0.4, (size + 0.06) * rows + (0.5 if title else 0.2)))
    axes = np.atleast_2d(axes)
    cmap = "gray" if images.shape[-1] == 1 else None
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        image = images[i, ..., 0] if images.shape[-1] == 1 else images[i]
        ax.imshow(image, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
        if predicted is not None and int(predicted[i]) != int(labels[i]):
            ax.set_title(f"{labels[i]}→{predicted[i]}", fontsize=6, color="crimson", pad=1)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.3, h_pad=0.6)
    return fig


def save_figure(fig, name_or_path: str | Path, dpi: int = 150) -> Path:
    """Save ``fig`` as PNG and PDF: a bare name goes to ``figures/<name>.png|.pdf``."""
    from goc_utils import paths

    path = Path(name_or_path)
    if path.suffix != ".png":
        path = paths.figure_path(str(name_or_path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    fig.savefig(path.with_suffix(".pdf"))
    return path


def save_labelled_grid(
    images: np.ndarray,
    labels: Sequence[int],
    path: str | Path,
    nrow: int,
    title: str | None = None,
    predicted: Sequence[int] | None = None,
) -> Path:
    """:func:`sample_grid_figure` saved as PNG + PDF and closed (for scripts)."""
    import matplotlib.pyplot as plt

    fig = sample_grid_figure(images, labels, nrow, title, predicted)
    out = save_figure(fig, path)
    plt.close(fig)
    return out
