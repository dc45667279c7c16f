"""The tiny tiers' judges: small CNN classifiers whose features and logits score samples the way Inception
scores DiT-XL/2's (FID / sFID / IS / precision / recall), and their committed weights. Training them:
:mod:`goc_utils.training.judges`."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from goc_utils import paths
from goc_utils.errors import InvalidArgumentError, shorten
from goc_utils.files import load_safetensors


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

    def spatial(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 64, 8, 8)`` activations of the second conv (after its GELU), before the max pool."""
        return self.conv[:4](x)

    def features_from_spatial(self, spatial: torch.Tensor) -> torch.Tensor:
        """The 128-d penultimate features from :meth:`spatial`'s map."""
        return F.gelu(self.fc(self.conv[4](spatial).flatten(1)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_from_spatial(self.spatial(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class FashionClassifier(nn.Module):
    """The tiny-fashion judge: a CNN on padded 32x32 Fashion-MNIST in [-1, 1], ``(N, 1, 32, 32)`` -> logits ``(N, 10)``.

    Three conv stages (32, 64, 128 channels, each followed by GELU and a 2x2 max pool), a 256-d
    penultimate layer and a linear head. Its roles (:class:`goc_utils.evaluation.metrics.features.JudgeExtractor`):
    ``features(x)`` (256-d) for FID / precision / recall, ``spatial(x)`` (the third stage's map before
    its pool, ``(N, 128, 8, 8)``) for sFID, the logits for the Inception Score.
    """

    feature_dim = 256

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.GELU(), nn.MaxPool2d(2))
        self.stage2 = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.GELU())
        self.stage3 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(64, 128, 3, padding=1), nn.GELU(), nn.MaxPool2d(2))
        self.dropout = nn.Dropout(0.3)
        self.fc = nn.Linear(128 * 4 * 4, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, 10)

    def spatial(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 128, 8, 8)`` activations of the third stage, before its pool."""
        return self.stage3[:3](self.stage2(self.stage1(x)))

    def features_from_spatial(self, spatial: torch.Tensor) -> torch.Tensor:
        """The 256-d penultimate features from :meth:`spatial`'s map."""
        return F.gelu(self.fc(self.dropout(self.stage3[3](spatial).flatten(1))))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_from_spatial(self.spatial(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def load_digits_classifier(path: Path | None = None) -> DigitsClassifier:
    """The committed digits judge (eval mode)."""
    model = DigitsClassifier()
    model.load_state_dict(_judge_weights(path or paths.DIGITS_CLASSIFIER_WEIGHTS, "the digits judge", model))
    return model.eval()


def load_fashion_classifier(path: Path | None = None) -> FashionClassifier:
    """The committed tiny-fashion judge (eval mode); a one-line error when it is not trained yet."""
    path = Path(path or paths.FASHION_CLASSIFIER_WEIGHTS)
    if not path.is_file():
        raise InvalidArgumentError(f"the Fashion-MNIST judge {path} is missing; train it with `make train-fashion`")
    model = FashionClassifier()
    model.load_state_dict(_judge_weights(path, "the Fashion-MNIST judge", model))
    return model.eval()


def _judge_weights(path: str | Path, what: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """A judge's weights, checked against ``model``'s: the same names and shapes, floating point and finite."""
    fix = "restore it with `git checkout -- data/` or retrain it with `goc train-classifier`"
    state = load_safetensors(path, what, fix)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    if found != expected:
        raise InvalidArgumentError(f"{what} {shorten(path)!r} holds weights of another model; {fix}")
    if not all(t.is_floating_point() and torch.isfinite(t).all() for t in state.values()):
        raise InvalidArgumentError(f"{what} {shorten(path)!r} holds integer, NaN or infinite weights; {fix}")
    return state
