"""Feature extractors for the ADM metrics: Inception (ImageNet) and the tiny tiers' judges.

An extractor maps uint8 ``(n, H, W, C)`` images to three float arrays: ``pool`` (FID,
precision / recall), ``spatial`` (sFID) and ``logits`` (Inception Score). :func:`extract`
streams an ADM ``.npz`` through one with a progress bar.

| name | pool | spatial | logits |
|---|---|---|---|
| ``inception`` | ``pool_3`` 2048-d | ``mixed_6/conv``[..., :7] 17x17x7 | 1008 (no bias) |
| ``digits`` | penultimate 128-d | 2nd conv (pre-pool) [..., :7] 8x8x7 | 10 digits |
| ``fashion`` | penultimate 256-d | 3rd stage (pre-pool) [..., :7] 8x8x7 | 10 garments |

A judge's features (``digits``, ``fashion``) also give class agreement with the samples' labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from goc_utils import paths
from goc_utils.errors import InvalidArgumentError
from goc_utils.evaluation.metrics.batches import batch_info, iter_images
from goc_utils.evaluation.metrics.inception import load_inception
from goc_utils.files import write_npz
from goc_utils.model.judges import load_digits_classifier, load_fashion_classifier
from goc_utils.model.presets import DiT_models, preset_info

FEATURE_EXTRACTORS = ("inception", "digits", "fashion")

REFERENCE_BATCHES = {"digits": paths.DIGITS_REFERENCE_BATCH, "fashion": paths.FASHION_REFERENCE_BATCH}
"""Committed reference batches of the judges' features (Inception's comes from the user)."""


def default_features(preset: str) -> str:
    """The preset's judge (``digits`` / ``fashion`` for the tiny tiers), ``inception`` otherwise."""
    return (preset_info(preset).judge if preset in DiT_models else None) or "inception"


def default_reference(features: str) -> Path | None:
    """The committed reference batch for ``features``, or None (Inception: ``VIRTUAL_imagenet256_labeled.npz``)."""
    return REFERENCE_BATCHES.get(features)


@dataclass
class Features:
    """Features of a batch file: ``pool`` ``(N, D)``, ``spatial`` ``(N, S)``, ``logits`` ``(N, K)`` float32."""

    pool: np.ndarray
    spatial: np.ndarray
    logits: np.ndarray


class FeatureExtractor:
    """A network that turns uint8 NHWC images into :class:`Features` (see the module table)."""

    name: str = ""
    image_shape: tuple[int, int, int] | None = None  # (H, W, C) it accepts; None = any RGB / grey size
    judges_classes: bool = False  # True: its logits are the samples' classes (class agreement is scored)

    def __init__(self, network: torch.nn.Module, device: str | torch.device = "cpu") -> None:
        self.network = network.eval().to(device)
        self.device = torch.device(device)

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> Features:
        if self.image_shape is not None and tuple(images.shape[1:]) != self.image_shape:
            raise InvalidArgumentError(
                f"the {self.name} extractor takes {self.image_shape} (H, W, C) images; got {tuple(images.shape[1:])}: "
                "score these images with the features of their model (--model / --features)"
            )
        pool, spatial, logits = self.run(torch.from_numpy(np.ascontiguousarray(images)).to(self.device))
        return Features(*(t.float().cpu().numpy() for t in (pool, spatial, logits)))


class InceptionExtractor(FeatureExtractor):
    """The ADM evaluator's Inception features (:mod:`goc_utils.evaluation.metrics.inception`)."""

    name = "inception"

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.network(x)


class JudgeExtractor(FeatureExtractor):
    """A tiny tier's judge as its Inception: ``spatial`` from the judge's :meth:`spatial` map (first 7
    channels, as the ADM evaluator keeps 7 of ``mixed_6/conv``), ``pool`` its penultimate features, its logits."""

    judges_classes = True

    def __init__(self, name: str, network: torch.nn.Module, image_shape: tuple[int, int, int], device="cpu") -> None:
        super().__init__(network, device)
        self.name, self.image_shape = name, image_shape

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        net = self.network
        feature_map = net.spatial(x.permute(0, 3, 1, 2).float() / 127.5 - 1.0)
        spatial = feature_map[:, :7].permute(0, 2, 3, 1).flatten(1)
        pool = net.features_from_spatial(feature_map)
        return pool, spatial, net.head(pool)


def build_extractor(
    name: str, device: str | torch.device = "cpu", inception_weights: str | Path | None = None
) -> FeatureExtractor:
    """``inception`` (needs local weights), ``digits`` or ``fashion`` (the committed judges)."""
    if name == "inception":
        return InceptionExtractor(load_inception(inception_weights), device)
    if name == "digits":
        return JudgeExtractor("digits", load_digits_classifier(), (8, 8, 1), device)
    if name == "fashion":
        return JudgeExtractor("fashion", load_fashion_classifier(), (32, 32, 1), device)
    raise InvalidArgumentError(f"unknown feature extractor {name!r}; choose one of {', '.join(FEATURE_EXTRACTORS)}")


def extract(path: str | Path, extractor: FeatureExtractor, batch_size: int = 256, progress: bool = True) -> Features:
    """Stream ``arr_0`` of an ADM batch through ``extractor``."""
    info = batch_info(path)
    parts = []
    with tqdm(
        total=info.count, desc=f"{extractor.name} features {info.path.name}", unit="img", disable=not progress
    ) as bar:
        for chunk in iter_images(info.path, batch_size):
            parts.append(extractor(chunk))
            bar.update(len(chunk))
    return Features(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("pool", "spatial", "logits")))


def _fingerprint(extractor: FeatureExtractor) -> float:
    """A number that changes when the extractor's weights change (sum of all parameters, float64)."""
    return float(sum(p.detach().double().sum().item() for p in extractor.network.parameters()))


def extract_cached(path: str | Path, extractor: FeatureExtractor, progress: bool = True) -> Features:
    """:func:`extract`, kept next to the batch as ``<stem>.<extractor>-features.npz`` for reruns.

    The cache is used only while the batch file (size, modification time) and the extractor's
    weights are the ones it was made from; otherwise the features are recomputed and rewritten.
    """
    path = Path(path)
    stat = path.stat()
    key = np.array([stat.st_size, stat.st_mtime_ns, _fingerprint(extractor)], dtype=np.float64)
    cache = path.with_name(f"{path.stem}.{extractor.name}-features.npz")
    if cache.is_file():
        try:
            with np.load(cache) as data:
                if np.array_equal(data["key"], key):
                    return Features(data["pool"], data["spatial"], data["logits"])
        except Exception:  # noqa: BLE001 - a torn cache is recomputed
            pass
    feats = extract(path, extractor, progress=progress)
    write_npz(cache, key=key, pool=feats.pool, spatial=feats.spatial, logits=feats.logits)
    return feats


__all__ = [
    "FEATURE_EXTRACTORS",
    "JudgeExtractor",
    "FeatureExtractor",
    "Features",
    "InceptionExtractor",
    "build_extractor",
    "default_features",
    "default_reference",
    "extract",
    "extract_cached",
]
