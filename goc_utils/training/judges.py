"""Training of the tiny tiers' judges (:mod:`goc_utils.model.judges`): augmented cross-entropy with epoch
checkpoints that resume to identical bytes, and test accuracy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from goc_utils import paths
from goc_utils.datasets import load_digits_tensors, load_fashion_tensors, train_test_split_indices
from goc_utils.files import atomic_save_safetensors, restore_training_state, save_training_state, state_dict_sha256
from goc_utils.model.judges import DigitsClassifier, FashionClassifier

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _augment_digits(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """1-pixel shifts of the whole batch and Gaussian noise of std 0.1."""
    shift = torch.randint(-1, 2, (2,), generator=generator).tolist()
    x = torch.roll(x, shifts=shift, dims=(2, 3))
    return x + 0.1 * torch.randn(x.shape, generator=generator)


def _augment_fashion(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-image horizontal flips and a shift of up to 2 pixels of the whole batch (inside the black border)."""
    flip = torch.rand(len(x), generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
    return torch.roll(x, shifts=shift, dims=(2, 3))


@torch.enable_grad()
def fit_classifier(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    augment: Augment,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    name: str,
    progress: bool = True,
    checkpoint: Path | None = None,
) -> nn.Module:
    """One training loop for both judges: AdamW (weight decay 1e-4), cross-entropy, shuffled epochs.

    With ``checkpoint``, the state is saved there after every epoch and a rerun resumes from it with
    identical results (the caller removes it once the weights are saved). The checkpoint records what shapes the
    weights (``name``, the data by their sha256, ``batch_size``, ``lr``, ``seed``, the augmentation); a rerun with
    another value, or fewer ``epochs`` than it has done, is refused (more epochs continue it: the learning rate does
    not depend on their number).
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    done, settings = 0, None
    if checkpoint:
        data = state_dict_sha256({"images": x_train, "labels": y_train})
        settings = {"name": name, "data": data, "batch_size": batch_size, "lr": lr, "seed": seed,
                    "augment": augment.__name__}  # fmt: skip
        done = restore_training_state(checkpoint, "epoch", generator, settings, epochs, model=model, opt=opt)
    for epoch in tqdm(range(done, epochs), desc=f"train {name}", disable=not progress, initial=done, total=epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            loss = F.cross_entropy(model(augment(x_train[batch], generator)), y_train[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if checkpoint is not None:
            save_training_state(checkpoint, "epoch", epoch + 1, generator, settings, model=model, opt=opt)
    return model.eval()


@torch.no_grad()
def classifier_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on model-space ``images``."""
    predicted = torch.cat([model(chunk).argmax(1) for chunk in torch.split(images, 1000)])
    return (predicted == labels).float().mean().item()


def train_digits_classifier(
    epochs: int = 60, seed: int = 0, out: Path | None = None, progress: bool = True
) -> tuple[Path, float]:
    """Train the digits judge on 80% of the digits (1-pixel shifts + small noise as augmentation).

    Returns ``(weights path, accuracy on the held-out 20%)``.
    """
    torch.manual_seed(seed)
    images, labels = load_digits_tensors()
    train_idx, test_idx = train_test_split_indices(len(images), 0.2, seed)
    model = fit_classifier(
        DigitsClassifier(), images[train_idx], labels[train_idx], _augment_digits, epochs, 64, 2e-3, seed,
        "digits classifier", progress,
    )  # fmt: skip
    accuracy = classifier_accuracy(model, images[test_idx], labels[test_idx])
    out = Path(out or paths.DIGITS_CLASSIFIER_WEIGHTS)
    atomic_save_safetensors(model.state_dict(), out, {"test_accuracy": f"{accuracy:.4f}", "epochs": str(epochs)})
    return out, accuracy


def train_fashion_classifier(
    epochs: int = 8, seed: int = 0, out: Path | None = None, threads: int = 2, progress: bool = True
) -> tuple[Path, float]:
    """Train the tiny-fashion judge on the 60,000 training images (flips and shifts as augmentation).

    Returns ``(weights path, accuracy on the 10,000 held-out test images)``.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    x_train, y_train = load_fashion_tensors("train")
    checkpoint = paths.RUNS_DIR / "train_fashion_judge" / "checkpoint.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    model = fit_classifier(
        FashionClassifier(), x_train, y_train, _augment_fashion, epochs, 128, 2e-3, seed, "fashion judge", progress,
        checkpoint,
    )  # fmt: skip
    x_test, y_test = load_fashion_tensors("test")
    accuracy = classifier_accuracy(model, x_test, y_test)
    out = Path(out or paths.FASHION_CLASSIFIER_WEIGHTS)
    atomic_save_safetensors(model.state_dict(), out, {"test_accuracy": f"{accuracy:.4f}", "epochs": str(epochs)})
    checkpoint.unlink(missing_ok=True)
    torch.set_num_threads(previous_threads)
    return out, accuracy
