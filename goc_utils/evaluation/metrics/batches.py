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

from goc_utils.errors import GocError, shorten
from goc_utils.files import input_file


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


STATISTICS = ("mu", "sigma", "mu_s", "sigma_s")
"""A reference's precomputed Gaussians: pool ``mu`` ``(D,)``, ``sigma`` ``(D, D)``; spatial ``mu_s``, ``sigma_s``."""

LABEL_KEYS = ("arr_1", "labels")
"""Where a batch keeps its class labels (guided-diffusion's ``arr_1``, ``goc sample --save-npz``'s ``labels``)."""

_FIX = "make samples with `goc eval-sample` or pass a reference batch (.npz)"


@contextmanager
def _archive(path: Path) -> Iterator[zipfile.ZipFile]:
    input_file(path, "batch file", _FIX, error=BatchFileError)
    try:
        with zipfile.ZipFile(path) as archive:
            yield archive
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise BatchFileError(f"{_name(path)} is not a readable .npz ({exc}); re-create or re-download it") from None


def _name(path: Path) -> str:
    return repr(shorten(path))


@contextmanager
def _member(path: Path, name: str):
    """An open array member of a file :func:`batch_info` has checked."""
    with _archive(path) as archive, archive.open(f"{name}.npy") as member:
        yield member


def _header(member) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(member)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(member)
    raise ValueError(f"unsupported .npy format version {version}")


def _headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in the file, read from the headers (no data)."""
    headers = {}
    with _archive(path) as archive:
        for member_name in archive.namelist():
            name = member_name.removesuffix(".npy")
            with archive.open(member_name) as member:
                try:
                    shape, _, dtype = _header(member)
                except ValueError as exc:
                    raise BatchFileError(f"{_name(path)}: {shorten(name)} is not a valid .npy array ({exc})") from None
            headers[name] = (tuple(shape), dtype)
    return headers


def _check_arrays(path: Path, headers: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    """Every array a batch file may hold, by its header: no object arrays; ``arr_0`` uint8 NHWC with 1 or 3
    channels and at least one image; labels one integer per image; the four statistics all present, float,
    ``mu`` ``(D,)`` with ``sigma`` ``(D, D)``; ``features`` one string."""
    where = _name(path)
    for name, (_, dtype) in headers.items():
        if dtype.hasobject:
            raise BatchFileError(
                f"{where}: {shorten(name)} is an array of Python objects (pickles are never loaded); "
                "store numbers (images uint8, labels integers, statistics floats)"
            )
    if "arr_0" not in headers:
        found = ", ".join(headers) or "nothing"
        raise BatchFileError(
            f"{where} has no arr_0 (it holds {shorten(found)}); ADM batches keep images in arr_0 (uint8 NHWC)"
        )
    shape, dtype = headers["arr_0"]
    if dtype != np.uint8:
        raise BatchFileError(f"{where}: arr_0 has dtype {dtype}; ADM batches are uint8 images in 0..255")
    if len(shape) != 4 or shape[3] not in (1, 3):
        raise BatchFileError(
            f"{where}: arr_0 has shape {shape}; expected (N, H, W, C) with C = 1 or 3 (NHWC, not NCHW)"
        )
    if shape[0] == 0:
        raise BatchFileError(f"{where}: arr_0 holds no images")
    count = shape[0]
    for key in LABEL_KEYS:
        if key in headers:
            label_shape, label_dtype = headers[key]
            if label_dtype.kind not in "iu":
                raise BatchFileError(
                    f"{where}: {key} holds {label_dtype} values; class labels are integers 0..K-1 (e.g. int64)"
                )
            if label_shape != (count,):
                raise BatchFileError(
                    f"{where}: {key} has shape {label_shape}; expected ({count},), one class label per image of arr_0"
                )
    present = [k for k in STATISTICS if k in headers]
    if present:
        missing = [k for k in STATISTICS if k not in headers]
        if missing:
            raise BatchFileError(
                f"{where} holds {', '.join(present)} but not {', '.join(missing)}; a reference's statistics are "
                "mu, sigma, mu_s and sigma_s together (re-create it with make_reference_batch, or drop them all)"
            )
        for mu, sigma in (("mu", "sigma"), ("mu_s", "sigma_s")):
            (mu_shape, mu_dtype), (sigma_shape, sigma_dtype) = headers[mu], headers[sigma]
            for key, kind in ((mu, mu_dtype), (sigma, sigma_dtype)):
                if kind.kind != "f":
                    raise BatchFileError(f"{where}: {key} holds {kind} values; statistics are floats")
            if len(mu_shape) != 1 or mu_shape[0] < 1:
                raise BatchFileError(f"{where}: {mu} has shape {mu_shape}; expected (D,), a mean feature vector")
            if sigma_shape != (mu_shape[0], mu_shape[0]):
                raise BatchFileError(
                    f"{where}: {sigma} has shape {sigma_shape}; expected {(mu_shape[0], mu_shape[0])} to match "
                    f"{mu} {mu_shape}"
                )
    if "features" in headers:
        shape, dtype = headers["features"]
        if dtype.kind != "U" or shape != ():
            raise BatchFileError(
                f"{where}: features holds {dtype} of shape {shape}; it names the extractor as one string, "
                "e.g. np.array('inception')"
            )


def _load(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``names`` that a batch file holds, read whole; one line when one does not read back (a torn or
    altered archive fails its checksum)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in names if name in data}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise BatchFileError(f"{_name(path)} is not a readable .npz ({exc}); re-create or re-download it") from None


def _check_labels(path: Path, headers: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    """Class labels (small: one integer per image) are read and checked here, wherever the file is used."""
    for key, labels in _load(path, tuple(k for k in LABEL_KEYS if k in headers)).items():
        if labels.size and labels.min() < 0:
            raise BatchFileError(f"{_name(path)}: {key} holds the label {labels.min()}; class labels are 0..K-1")


def batch_info(path: str | Path) -> BatchInfo:
    """Validate every array of a batch file by its header (:func:`_check_arrays`), and its labels' values, and
    describe ``arr_0``."""
    path = Path(path)
    headers = _headers(path)
    _check_arrays(path, headers)
    _check_labels(path, headers)
    count, height, width, channels = headers["arr_0"][0]
    return BatchInfo(path, count, height, width, channels, all(k in headers for k in STATISTICS))


def iter_images(path: str | Path, batch_size: int = 256) -> Iterator[np.ndarray]:
    """Yield uint8 ``(n, H, W, C)`` chunks of ``arr_0`` in order, reading the file as a stream."""
    info = batch_info(path)
    per_image = info.height * info.width * info.channels
    with _member(info.path, "arr_0") as member:
        shape, fortran, _ = _header(member)
        if fortran:
            yield from np.array_split(_load(info.path, ("arr_0",))["arr_0"], max(1, -(-info.count // batch_size)))
            return
        done = 0
        while done < info.count:
            n = min(batch_size, info.count - done)
            data = member.read(n * per_image)
            if len(data) != n * per_image:
                raise BatchFileError(f"{_name(info.path)}: arr_0 is truncated after {done} images; re-create the file")
            yield np.frombuffer(bytearray(data), dtype=np.uint8).reshape(n, info.height, info.width, info.channels)
            done += n


def read_statistics(path: str | Path) -> dict[str, np.ndarray] | None:
    """The precomputed ``mu``, ``sigma``, ``mu_s``, ``sigma_s`` of a reference batch, or None."""
    info = batch_info(path)
    if not info.has_statistics:
        return None
    stats = {k: np.asarray(v, dtype=np.float64) for k, v in _load(info.path, STATISTICS).items()}
    for key, value in stats.items():
        if not np.isfinite(value).all():
            bad = int((~np.isfinite(value)).sum())
            raise BatchFileError(
                f"{_name(info.path)}: {key} holds {bad} NaN or infinite value(s); re-create the reference statistics"
            )
    return stats


def read_labels(path: str | Path) -> np.ndarray | None:
    """Class labels of a batch (``arr_1`` as guided-diffusion writes them, or ``labels``): one integer >= 0 per
    image (checked by :func:`batch_info`), or None when it has none."""
    info = batch_info(path)
    found = _load(info.path, LABEL_KEYS)
    return next((np.asarray(found[key], dtype=np.int64) for key in LABEL_KEYS if key in found), None)


def batch_features(path: str | Path) -> str | None:
    """The feature extractor a reference batch was made with (its ``features`` entry), or None."""
    found = _load(batch_info(path).path, ("features",))
    return str(found["features"]) if "features" in found else None


def check_same_size(a: BatchInfo, b: BatchInfo) -> None:
    """Reference and sample images must have the same size and channels, and each batch enough images to be scored
    (:data:`~goc_utils.evaluation.metrics.adm.MIN_SAMPLES`): checked from the headers, before any feature."""
    from goc_utils.evaluation.metrics.adm import MIN_SAMPLES  # adm needs torch and scipy; batches only numpy

    if a.image_shape != b.image_shape:
        raise BatchFileError(
            f"image sizes differ: {a.path.name} holds {a.image_shape}, {b.path.name} holds {b.image_shape} (H, W, C); "
            "compare samples with a reference batch of the same resolution"
        )
    for info in (a, b):
        if info.count < MIN_SAMPLES:
            raise BatchFileError(
                f"{_name(info.path)} holds {info.count} image(s); scoring needs at least {MIN_SAMPLES} in each batch "
                "(precision / recall's nearest neighbours); sample more"
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
