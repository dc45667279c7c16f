"""ADM-format image batches: ``.npz`` files whose ``arr_0`` is uint8 ``(N, H, W, C)``.

The reference batches of guided-diffusion (``VIRTUAL_imagenet256_labeled.npz``) and every
sample file of DiT's ``sample_ddp.py`` have this layout; references may also carry the
precomputed statistics ``mu``, ``sigma`` (pool features) and ``mu_s``, ``sigma_s`` (spatial),
which are then used instead of recomputing. ``arr_0`` is read in batches straight from the
zip member, so a 50,000-image file never sits in memory twice.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from goc_utils.errors import GocError


class BatchFileError(GocError, ValueError):
    """An ``.npz`` batch that is missing, unreadable or not in the ADM layout."""


@dataclass(frozen=True)
class BatchInfo:
    """Shape of a batch file's ``arr_0`` and which statistics it carries."""

    path: Path
    count: int
    height: int
    width: int
    channels: int
    has_statistics: bool

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.height, self.width, self.channels


@contextmanager
def _member(path: Path, name: str):
    if not path.is_file():
        raise BatchFileError(
            f"batch file {str(path)!r} does not exist; make samples with `goc eval-sample` or pass a reference batch"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            if f"{name}.npy" not in archive.namelist():
                found = ", ".join(n.removesuffix(".npy") for n in archive.namelist()) or "nothing"
                raise BatchFileError(
                    f"{str(path)!r} has no {name} (it holds {found}); ADM batches keep images in arr_0 (uint8 NHWC)"
                )
            with archive.open(f"{name}.npy") as member:
                yield member
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise BatchFileError(f"{str(path)!r} is not a readable .npz ({exc}); re-create or re-download it") from None


def _header(member) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(member)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(member)
    raise ValueError(f"unsupported .npy format version {version}")


def batch_info(path: str | Path) -> BatchInfo:
    """Validate ``arr_0`` (uint8, 4-D NHWC with 1 or 3 channels, at least one image) and describe it."""
    path = Path(path)
    with _member(path, "arr_0") as member:
        try:
            shape, _, dtype = _header(member)
        except ValueError as exc:
            raise BatchFileError(f"{str(path)!r}: arr_0 is not a valid .npy array ({exc})") from None
    if dtype != np.uint8:
        raise BatchFileError(f"{str(path)!r}: arr_0 has dtype {dtype}; ADM batches are uint8 images in 0..255")
    if len(shape) != 4 or shape[3] not in (1, 3):
        raise BatchFileError(
            f"{str(path)!r}: arr_0 has shape {tuple(shape)}; expected (N, H, W, C) with C = 1 or 3 (NHWC, not NCHW)"
        )
    if shape[0] == 0:
        raise BatchFileError(f"{str(path)!r}: arr_0 holds no images")
    with zipfile.ZipFile(path) as archive:
        names = {n.removesuffix(".npy") for n in archive.namelist()}
    return BatchInfo(path, int(shape[0]), int(shape[1]), int(shape[2]), int(shape[3]), {"mu", "sigma"} <= names)


def iter_images(path: str | Path, batch_size: int = 256) -> Iterator[np.ndarray]:
    """Yield uint8 ``(n, H, W, C)`` chunks of ``arr_0`` in order, reading the file as a stream."""
    info = batch_info(path)
    per_image = info.height * info.width * info.channels
    with _member(info.path, "arr_0") as member:
        shape, fortran, _ = _header(member)
        if fortran:
            yield from np.array_split(np.load(info.path)["arr_0"], max(1, -(-info.count // batch_size)))
            return
        done = 0
        while done < info.count:
            n = min(batch_size, info.count - done)
            data = member.read(n * per_image)
            if len(data) != n * per_image:
                raise BatchFileError(f"{str(info.path)!r}: arr_0 is truncated after {done} images; re-create the file")
            yield np.frombuffer(bytearray(data), dtype=np.uint8).reshape(n, info.height, info.width, info.channels)
            done += n


def read_statistics(path: str | Path) -> dict[str, np.ndarray] | None:
    """The precomputed ``mu``, ``sigma``, ``mu_s``, ``sigma_s`` of a reference batch, or None."""
    info = batch_info(path)
    if not info.has_statistics:
        return None
    with np.load(info.path) as data:
        return {k: np.asarray(data[k], dtype=np.float64) for k in ("mu", "sigma", "mu_s", "sigma_s") if k in data}


def read_labels(path: str | Path) -> np.ndarray | None:
    """Class labels of a sample batch (``arr_1`` as guided-diffusion writes them, or ``labels``), or None."""
    with np.load(Path(path)) as data:
        for key in ("arr_1", "labels"):
            if key in data:
                return np.asarray(data[key], dtype=np.int64)
    return None


def batch_features(path: str | Path) -> str | None:
    """The feature extractor a reference batch was made with (its ``features`` entry), or None."""
    info = batch_info(path)
    with np.load(info.path) as data:
        if "features" in data and data["features"].dtype.kind == "U" and data["features"].ndim == 0:
            return str(data["features"])
    return None


def check_same_size(a: BatchInfo, b: BatchInfo) -> None:
    """Reference and sample images must have the same size and channels."""
    if a.image_shape != b.image_shape:
        raise BatchFileError(
            f"image sizes differ: {a.path.name} holds {a.image_shape}, {b.path.name} holds {b.image_shape} (H, W, C); "
            "compare samples with a reference batch of the same resolution"
        )


__all__ = [
    "BatchFileError",
    "BatchInfo",
    "batch_features",
    "batch_info",
    "check_same_size",
    "iter_images",
    "read_labels",
    "read_statistics",
]
