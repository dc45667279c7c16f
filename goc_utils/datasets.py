"""The embedded data sets: scikit-learn's digits and Fashion-MNIST from Debian.

- ``tiny-digits``: scikit-learn's handwritten digits (8x8 grey, 1,797 images, 10 classes). They
  ship inside scikit-learn. Pixel values 0..16 map to the model space [-1, 1] by ``x / 8 - 1``.
- ``tiny-fashion``: Fashion-MNIST (Zalando Research, MIT licence; 60,000 training and 10,000
  test images, 28x28 grey, 10 classes) from Debian's package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist/``, or the folder in ``$GOC_FASHION_MNIST_DIR``). Images
  are zero-padded by 2 pixels on every side to 32x32 (black border, the garment unscaled) so that
  the tier's VAE (factor 4) gives an 8x8 latent grid, and mapped to [-1, 1] by ``x / 127.5 - 1``.

Nothing is ever downloaded. Images leave the model space as uint8 with DiT's conversion
``clamp(127.5 * x + 128, 0, 255)``.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from goc_utils.errors import GocError
from goc_utils.files import state_dict_sha256

DIGITS_LEVELS = 16.0

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` installs the four original ``*-ubyte.gz`` files."""

FASHION_MNIST_ENV = "GOC_FASHION_MNIST_DIR"
"""Environment variable naming another folder that holds the same four files."""

FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
"""Fashion-MNIST's class names, by label."""

FASHION_PAD = 2
"""Zero pixels added on each side: 28x28 -> 32x32."""


class DatasetMissingError(GocError, FileNotFoundError):
    """An embedded data set's files are not on this machine."""


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


def fashion_mnist_dir() -> Path:
    """The Fashion-MNIST folder: ``$GOC_FASHION_MNIST_DIR`` if set, else Debian's location."""
    return Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR).expanduser()


def fashion_mnist_available() -> bool:
    """Whether the four Fashion-MNIST files are present (tests skip on False)."""
    folder = fashion_mnist_dir()
    return all((folder / f"{split}-{kind}-ubyte.gz").is_file() for split in ("train", "t10k") for kind in _KINDS)


_KINDS = ("images-idx3", "labels-idx1")


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """One gzipped IDX file (the MNIST format): check its magic number and size, return its uint8 payload."""
    fix = f"reinstall the Debian package dataset-fashion-mnist or point ${FASHION_MNIST_ENV} at the four files"
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise DatasetMissingError(f"cannot read {path} ({exc}); {fix}") from None
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else -1
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)) if len(raw) >= header else ()
    if found != magic or len(raw) != header + int(np.prod(shape)):
        raise DatasetMissingError(f"{path} is not a Fashion-MNIST IDX file (magic {found}, {len(raw)} bytes); {fix}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST as stored: uint8 images ``(N, 28, 28)`` and uint8 labels ``(N,)``.

    ``split`` is ``"train"`` (60,000) or ``"test"`` (10,000). Missing files raise one line naming
    the Debian package and :data:`FASHION_MNIST_ENV`.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test' (got {split!r})")
    folder, prefix = fashion_mnist_dir(), "train" if split == "train" else "t10k"
    images_path, labels_path = (folder / f"{prefix}-{kind}-ubyte.gz" for kind in _KINDS)
    for path in (images_path, labels_path):
        if not path.is_file():
            raise DatasetMissingError(
                f"Fashion-MNIST file {path} is missing; install it with `apt-get install dataset-fashion-mnist` "
                f"(Debian, as root) or set ${FASHION_MNIST_ENV} to a folder holding the four *-ubyte.gz files"
            )
    images = _read_idx(images_path, 2051)
    labels = _read_idx(labels_path, 2049)
    if len(images) == 0:  # a judge trained on nothing would report accuracy NaN
        raise DatasetMissingError(
            f"{images_path} holds no images (an empty {split} split); point ${FASHION_MNIST_ENV} at the original files"
        )
    if images.shape[1:] != (28, 28) or len(images) != len(labels) or labels.max(initial=0) > 9:
        raise DatasetMissingError(
            f"{folder} does not hold Fashion-MNIST's {split} split (images {images.shape}, labels {labels.shape}); "
            f"point ${FASHION_MNIST_ENV} at the original files"
        )
    return images, labels


def dataset_sha256(name: str) -> str:
    """Hex sha256 of an embedded data set's images and labels as read: ``digits``, ``fashion-train`` or
    ``fashion-test``. Training runs record it, so that a resume on other data (another ``$GOC_FASHION_MNIST_DIR``)
    is refused."""
    if name == "digits":
        images, labels = load_digits_tensors()
    else:
        images, labels = (torch.from_numpy(a) for a in load_fashion_mnist(name.removeprefix("fashion-")))
    return state_dict_sha256({"images": images, "labels": labels})


def pad_fashion(images: np.ndarray) -> np.ndarray:
    """uint8 ``(N, 28, 28)`` -> uint8 ``(N, 32, 32, 1)`` (NHWC), zero-padded by :data:`FASHION_PAD`."""
    p = FASHION_PAD
    return np.pad(images, ((0, 0), (p, p), (p, p)))[..., None]


def load_fashion_tensors(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST in the model space: ``(N, 1, 32, 32)`` float32 in [-1, 1] (padded) and int64 labels."""
    images, labels = load_fashion_mnist(split)
    return from_uint8(pad_fashion(images)), torch.from_numpy(labels.astype(np.int64))
