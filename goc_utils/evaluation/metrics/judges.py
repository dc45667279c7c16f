"""The tiny tiers' judges: small classifiers that play Inception's part for their data sets.

``tiny-digits`` is judged by the digits classifier (uint8 ``(N, 8, 8, 1)`` samples), ``tiny-fashion``
by the Fashion-MNIST classifier (uint8 ``(N, 32, 32, 1)``, the padded images). A judge gives the
class of a sample (class agreement with the conditioning label) and, through
:mod:`goc_utils.evaluation.metrics.features`, the features of FID / sFID / IS / precision / recall. Each tier's
reference batch (ADM format, with the judge's statistics) is written here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from goc_utils.datasets import from_uint8, load_digits_tensors, load_fashion_mnist, pad_fashion, to_uint8
from goc_utils.errors import InvalidArgumentError
from goc_utils.evaluation.metrics.evaluate import make_reference_batch
from goc_utils.evaluation.metrics.features import build_extractor, default_features, default_reference
from goc_utils.model.judges import load_digits_classifier, load_fashion_classifier
from goc_utils.model.presets import DiT_models, preset_info

JUDGED_PRESETS = tuple(name for name in DiT_models if preset_info(name).judge)
"""The presets with a judge of their own: the tiny tiers."""


def load_judge(preset: str) -> torch.nn.Module:
    """The committed classifier judging ``preset`` (eval mode)."""
    if preset not in JUDGED_PRESETS:
        raise InvalidArgumentError(f"no judge for {preset!r}; judges exist for {', '.join(JUDGED_PRESETS)}")
    return load_digits_classifier() if preset_info(preset).judge == "digits" else load_fashion_classifier()


@torch.no_grad()
def judge_logits(
    images: np.ndarray, preset: str = "tiny-digits", classifier=None, batch_size: int = 1024
) -> np.ndarray:
    """Classifier logits ``(N, 10)`` float32 for uint8 samples ``(N, H, W, 1)`` of ``preset``."""
    classifier = classifier or load_judge(preset)
    side = preset_info(preset).default_image_size
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (side, side, 1):
        raise InvalidArgumentError(
            f"{preset} samples are uint8 (N, {side}, {side}, 1); got {images.dtype} {tuple(images.shape)}"
        )
    x = from_uint8(images)
    return torch.cat([classifier(chunk) for chunk in torch.split(x, batch_size)]).numpy()


def predicted_classes(images: np.ndarray, preset: str = "tiny-digits", classifier=None) -> np.ndarray:
    """The judge's class per image ``(N,)`` int64."""
    return judge_logits(images, preset, classifier).argmax(1).astype(np.int64)


def class_agreement(images: np.ndarray, labels: np.ndarray, preset: str = "tiny-digits", classifier=None) -> float:
    """Fraction of samples whose judged class equals the conditioning label."""
    return float(np.mean(predicted_classes(images, preset, classifier) == np.asarray(labels)))


def reference_images(preset: str) -> tuple[np.ndarray, np.ndarray]:
    """A tier's reference set as an ADM batch (uint8 NHWC, the samples' conversion) and its labels.

    ``tiny-digits``: all 1,797 digits. ``tiny-fashion``: the 10,000 Fashion-MNIST test images, padded to 32x32.
    """
    if preset == "tiny-digits":
        images, labels = load_digits_tensors()
        return to_uint8(images), labels.numpy()
    if preset == "tiny-fashion":
        images, labels = load_fashion_mnist("test")
        return pad_fashion(images), labels.astype(np.int64)
    raise InvalidArgumentError(f"no embedded reference set for {preset!r}")


def write_reference(preset: str, out: str | Path | None = None) -> Path:
    """Write a tier's reference batch (``data/reference/``) with its judge's feature statistics."""
    images, labels = reference_images(preset)
    features = default_features(preset)
    return make_reference_batch(images, out or default_reference(features), build_extractor(features), labels)


__all__ = [
    "JUDGED_PRESETS",
    "class_agreement",
    "judge_logits",
    "load_judge",
    "predicted_classes",
    "reference_images",
    "write_reference",
]
