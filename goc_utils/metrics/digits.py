"""Digits classifier as the tiny study's judge and feature extractor.

Samples arrive in the ADM batch format (uint8 ``(N, 8, 8, 1)``); the committed
:class:`~goc_utils.training.DigitsClassifier` maps them to logits and 128-d features.
"""

from __future__ import annotations

import numpy as np
import torch

from goc_utils import paths
from goc_utils.data import from_uint8, load_digits_tensors, to_uint8
from goc_utils.errors import InvalidArgumentError
from goc_utils.metrics.evaluate import make_reference_batch
from goc_utils.metrics.features import build_extractor
from goc_utils.training import load_digits_classifier


def _check_digit_batch(images: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (8, 8, 1):
        raise InvalidArgumentError(f"digits batches are uint8 (N, 8, 8, 1); got {images.dtype} {tuple(images.shape)}")


@torch.no_grad()
def digits_logits(images: np.ndarray, classifier=None, batch_size: int = 1024) -> np.ndarray:
    """Classifier logits ``(N, 10)`` float32 for uint8 digit images ``(N, 8, 8, 1)``."""
    _check_digit_batch(images)
    classifier = classifier or load_digits_classifier()
    x = from_uint8(images)
    return torch.cat([classifier(chunk) for chunk in torch.split(x, batch_size)]).numpy()


def class_agreement(images: np.ndarray, labels: np.ndarray, classifier=None) -> float:
    """Fraction of samples whose predicted digit equals the conditioning label."""
    predicted = digits_logits(images, classifier).argmax(1)
    return float(np.mean(predicted == np.asarray(labels)))


def predicted_digits(images: np.ndarray, classifier=None) -> np.ndarray:
    """Predicted class per image ``(N,)`` int64."""
    return digits_logits(images, classifier).argmax(1).astype(np.int64)


def digits_reference_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 real digits as an ADM batch: uint8 ``(1797, 8, 8, 1)`` (the samples' conversion) and labels."""
    images, labels = load_digits_tensors()
    return to_uint8(images), labels.numpy()


def write_digits_reference(out=None):
    """Write ``data/reference/digits_ref.npz``: the real digits with their digits-feature statistics."""
    images, labels = digits_reference_images()
    return make_reference_batch(images, out or paths.DIGITS_REFERENCE_BATCH, build_extractor("digits"), labels)


__all__ = ["class_agreement", "digits_logits", "digits_reference_images", "predicted_digits", "write_digits_reference"]
