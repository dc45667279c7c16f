"""The embedded dataset: scikit-learn's handwritten digits (8x8 grey, 1,797 images, 10 classes).

It ships inside scikit-learn, so the tiny study never downloads anything. Pixel values
0..16 are mapped to the model space [-1, 1] by ``x / 8 - 1``; images leave the model
space as uint8 with DiT's conversion ``clamp(127.5 * x + 128, 0, 255)``.
"""

from __future__ import annotations

import numpy as np
import torch

DIGITS_LEVELS = 16.0


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All digits as model-space images ``(1797, 1, 8, 8)`` float32 in [-1, 1] and labels ``(1797,)`` int64."""
    from sklearn.datasets import load_digits  # lazy: scikit-learn's import is slow and only the digits need it

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / (DIGITS_LEVELS / 2) - 1.0).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    return images, labels


def train_test_split_indices(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic held-out split of ``range(n)``: ``(train_indices, test_indices)``."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def to_uint8(samples: torch.Tensor) -> np.ndarray:
    """Model-space images ``(N, C, H, W)`` in ~[-1, 1] -> uint8 ``(N, H, W, C)`` (DiT's sample_ddp conversion)."""
    return torch.clamp(127.5 * samples + 128.0, 0, 255).permute(0, 2, 3, 1).to("cpu", dtype=torch.uint8).numpy()


def from_uint8(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W, C)`` -> float32 ``(N, C, H, W)`` in [-1, 1] (inverse of :func:`to_uint8` up to rounding)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
