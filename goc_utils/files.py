"""Files: writing results atomically (a temporary sibling, then a rename), npz files byte-reproducibly; file hashes;
the checks made before reading an input file or starting a job that needs memory or disk.

A crash, a ``kill -9`` or a full disk never leaves a half-written file under the final name (a full disk is one
line naming the folder, not a traceback), and two processes writing the same file never share a temporary name.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import glob
import hashlib
import io
import json
import os
import re
import shutil
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from goc_utils.errors import GocError, InvalidArgumentError, first_line, shorten
from goc_utils.paths import link_problem


class DiskFullError(GocError):
    """The disk (or the user's quota) filled up while a result was written; nothing is left under its name."""


@contextmanager
def disk_full_is_one_line(path: str | Path) -> Iterator[None]:
    """Turn a full disk or exceeded quota (``ENOSPC``, ``EDQUOT``) while writing ``path`` into one line naming the
    folder, so that ``goc`` prints it instead of a traceback; every other error passes unchanged."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        folder = Path(path).absolute().parent
        what = "the disk quota is exceeded" if exc.errno == errno.EDQUOT else "the disk is full"
        raise DiskFullError(
            f"{what} at {shorten(folder)!r} while writing {shorten(Path(path).name, 60)!r}; free space there and "
            "rerun the same command: what was finished is kept and sampling runs resume where they stopped"
        ) from None


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` to write; on success it replaces ``path``, on error it is removed
    (a full disk or quota is then one :class:`DiskFullError` line).

    Example:
        >>> with atomic_write("runs/x.json") as tmp:
        ...     _ = tmp.write_text("{}")
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with disk_full_is_one_line(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def _locked(folder: Path) -> bool:
    """Whether a live process holds the lock of ``folder`` (an :func:`atomic_write_dir` folder being written)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(handle)  # also releases the lock just taken
    return False


@contextmanager
def atomic_write_dir(path: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary folder next to ``path`` to fill; on success it replaces ``path``.

    On error the temporary folder is removed. Its writer holds a lock on it (the kernel drops it when the
    process ends, also on ``kill -9``), so a kill leaves it hidden, never under the final name, and the next
    :func:`atomic_write_dir` of ``path`` removes every temporary folder of ``path`` that no live process holds
    (a recycled process id does not keep one alive). An existing ``path`` is swapped out only once the new
    folder is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pattern = glob.escape(f".{path.name}.")
    for stale in [p for kind in ("new", "partial", "old") for p in path.parent.glob(f"{pattern}*.{kind}")]:
        if not _locked(stale):
            shutil.rmtree(stale, ignore_errors=True)
    new = path.with_name(f".{path.name}.{os.getpid()}.new")  # locked before it is visible as a .partial
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    shutil.rmtree(new, ignore_errors=True)
    with disk_full_is_one_line(path):
        new.mkdir()
        lock = os.open(new, os.O_RDONLY)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            new.rename(tmp)
            yield tmp
            if path.exists():
                path.rename(old)
            tmp.rename(path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
            os.close(lock)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_torch_save(obj: object, path: str | Path) -> Path:
    """``torch.save`` atomically (through a file handle, so the bytes do not depend on the file's name)."""
    with atomic_write(path) as tmp, open(tmp, "wb") as handle:
        torch.save(obj, handle)
    return Path(path)


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """A ``safetensors`` file (contiguous CPU copies of ``tensors``) written atomically (a full disk is one
    :class:`DiskFullError` line, as for every writer here)."""
    with atomic_write(path) as tmp:
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        except SafetensorError as exc:  # its I/O errors name the OS error only in their text: "(os error 28)"
            code = _OS_ERROR.search(str(exc))
            if code is None:
                raise
            raise OSError(int(code.group(1)), first_line(exc)) from None
    return Path(path)


_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def read_torch_file(
    path: str | Path, what: str, fix: str, kinds: Mapping[str, type | tuple[type, ...]], kind: str
) -> dict:
    """The dict that ``torch.save`` wrote to ``path``, read with ``weights_only=True`` (a pickle never runs code), else
    one line (:class:`InvalidArgumentError`) naming ``what``, the path and ``fix``: the path is not a regular file
    (:func:`input_file`), cannot be read (garbage, a truncated file, a safetensors file), or is not a dict holding
    every key of ``kinds`` with a value of that type (``kind`` says what it should be: ``"a checkpoint of `goc
    train-router`"``), or a float tensor in it holds NaN or infinite values. The one check of the resume files and
    caches that training reads.

    Example:
        >>> read_torch_file("/nonexistent.pt", "training checkpoint", "delete it", {"step": int}, "a checkpoint")
        Traceback (most recent call last):
        ...
        goc_utils.errors.InvalidArgumentError: training checkpoint '/nonexistent.pt' does not exist; delete it
    """
    state = load_torch(path, what, fix)
    name = repr(shorten(path))
    if not isinstance(state, dict) or any(
        not isinstance(state.get(key), wanted) or (wanted is int and isinstance(state.get(key), bool))
        for key, wanted in kinds.items()
    ):
        raise InvalidArgumentError(f"{what} {name} is not {kind}; {fix}")
    where = _not_finite(state)
    if where is not None:
        raise InvalidArgumentError(f"{what} {name} holds NaN or infinite values in {shorten(where, 60)}; {fix}")
    return state


def _not_finite(value: object, where: str = "") -> str | None:
    """Where in ``value`` (nested dicts, lists and tuples) a floating-point tensor holds NaN or infinite values
    (``"model.x_embedder.proj.weight"``), or None: weights, moments and latents are finite."""
    if isinstance(value, torch.Tensor):
        return where if value.is_floating_point() and not torch.isfinite(value).all() else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list | tuple) else ()
    for key, item in items:
        found = _not_finite(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def _zip(head: bytes) -> bool:
    return head.startswith((b"PK\x03\x04", b"PK\x05\x06"))  # a member first, or an empty archive


def _pickle(head: bytes) -> bool:
    return head[:1] == b"\x80"  # protocol 2+: torch.save's files before its zip format


def _safetensors(head: bytes) -> bool:
    return len(head) > 8 and head[8:9] == b"{"  # an 8-byte header length, then the JSON header


FORMATS: dict[str, tuple[str, Callable[[bytes], bool]]] = {
    "npz": ("an npz archive (a zip file)", _zip),
    "torch": ("a PyTorch file (a zip archive or a pickle)", lambda head: _zip(head) or _pickle(head)),
    "safetensors": ("a safetensors file", _safetensors),
    "weights": ("a PyTorch or safetensors file", lambda head: _zip(head) or _pickle(head) or _safetensors(head)),
}
"""Binary formats by how their files start: name -> (what a file of it is, test on its first 16 bytes). A file is
checked here, once, before any reader opens it; the readers check the rest (headers, keys, shapes)."""


def load_torch(
    path: str | Path,
    what: str,
    fix: str,
    error: type[Exception] = InvalidArgumentError,
    allowed: Iterable[type] = (),
) -> object:
    """What ``torch.save`` wrote to ``path``, read on the CPU with ``weights_only=True`` (a pickle never runs code;
    ``allowed`` classes may be rebuilt too, e.g. the ``argparse.Namespace`` in L2C's routers), else one line
    (``error``) naming ``what``, the path, why, and ``fix``: the path is not a regular file (:func:`input_file`),
    is empty, is not a PyTorch file at all (text, safetensors, npz ...), is cut short, or holds objects other than
    tensors and plain values. The one reader of every ``.pt`` file the project loads; what the object must hold is
    the caller's check.

    Example:
        >>> load_torch("/etc/hostname", "router file", "pass --router PATH")
        Traceback (most recent call last):
        ...
        goc_utils.errors.InvalidArgumentError: cannot read router file '/etc/hostname' (not a PyTorch file: ...
    """
    path = input_file(path, what, fix, error=error)
    try:
        with torch.serialization.safe_globals(list(allowed)), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch adds multi-line advice to refused pickles; our line says it
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a torn or foreign file
        raise error(f"cannot read {what} {shorten(path)!r} ({_load_failure(exc, path)}); {fix}") from None


def read_csv_rows(path: str | Path, what: str, fix: str) -> list[dict[str, str]]:
    """The rows of the CSV file ``path`` as text cells under its header, else one line naming ``what``, the path,
    the problem and ``fix``: not UTF-8 text, no header, a header naming a column twice or none, or a row with
    more or fewer cells than the header (a file cut short, or edited by hand). The one reader of the project's
    CSV tables."""
    path = input_file(path, what, fix)
    name = repr(shorten(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(f"{what} {name} is not UTF-8 text (byte {exc.start:,}); {fix}") from None
    try:
        table = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise InvalidArgumentError(f"{what} {name} is not a CSV table ({first_line(exc, 60)}); {fix}") from None
    if not table or not any(cell.strip() for cell in table[0]):
        raise InvalidArgumentError(f"{what} {name} has no header row; {fix}")
    header, rows = table[0], table[1:]
    if len(set(header)) != len(header) or not all(cell.strip() for cell in header):
        raise InvalidArgumentError(f"{what} {name} has an empty or repeated column name in its header; {fix}")
    for line, row in enumerate(rows, 2):
        if len(row) != len(header):
            raise InvalidArgumentError(
                f"{what} {name} line {line} has {len(row)} cells, its header {len(header)} (cut short?); {fix}"
            )
    return [dict(zip(header, row, strict=True)) for row in rows]


def load_safetensors(
    path: str | Path, what: str, fix: str, error: type[Exception] = InvalidArgumentError
) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file ``path`` on the CPU, else one line (``error``) naming ``what``, the path,
    why (not a regular file, empty, not a safetensors file, a header or data cut short) and ``fix``."""
    path = input_file(path, what, fix, error=error)
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - a torn or foreign file
        with open(path, "rb") as file:
            head = file.read(16)
        why = "empty" if not head else "not a safetensors file" if not FORMATS["safetensors"][1](head) else None
        raise error(f"cannot read {what} {shorten(path)!r} ({why or first_line(exc, 90)}); {fix}") from None


def _load_failure(exc: Exception, path: Path) -> str:
    """Why ``torch.load`` refused ``path``, in a few words (torch puts pages of advice before the reason): its
    first bytes tell a file of another kind from a PyTorch file (a zip archive, or a legacy pickle) gone bad."""
    with open(path, "rb") as file:
        head = file.read(16)
    if not head:
        return "empty"
    if not FORMATS["torch"][1](head):
        return f"not a PyTorch file: it starts with {head[:4]!r}"
    text = str(exc)
    if "WeightsUnpickler error:" in text and not isinstance(exc, EOFError):
        return f"not plain tensors and numbers: {first_line(text.split('WeightsUnpickler error:', 1)[1], 60)}"
    if isinstance(exc, EOFError) or (_zip(head) and not _sound_zip(path)):
        return "cut short or damaged"
    return first_line(exc, 90)


def _sound_zip(path: Path) -> bool:
    """Whether the zip archive ``path`` opens and every member's checksum holds."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        return False


def save_training_state(
    path: str | Path, counter: str, value: int, generator: torch.Generator, settings: Mapping | None = None, **parts
) -> Path:
    """A resumable checkpoint, atomically: each part's ``state_dict()`` (modules, optimisers), the random
    generator of the batches, torch's global RNG, ``{counter: value}`` (steps or epochs done) and the run's
    ``settings`` (what shapes its result: seed, data, learning rate ...; JSON values) that a resume must repeat."""
    state = {name: part.state_dict() for name, part in parts.items()}
    state.update({counter: value, "generator": generator.get_state(), "torch_rng": torch.get_rng_state()})
    if settings is not None:
        state["settings"] = _plain(settings)
    return atomic_torch_save(state, path)


def _plain(settings: Mapping) -> dict:
    """``settings`` as JSON gives them back (tuples become lists), so that stored and new values compare equal."""
    return json.loads(json.dumps(dict(settings)))


RESTART = "delete it to start over"


def read_training_state(
    path: str | Path,
    counter: str,
    parts: Iterable[str],
    settings: Mapping | None = None,
    total: int | None = None,
    fix: str = RESTART,
) -> dict | None:
    """The checked state of a :func:`save_training_state` checkpoint, or None when there is none; read before any
    work, so that a refusal comes first. One line naming ``fix`` when it is not such a checkpoint (garbage, truncated,
    another file), when a recorded setting differs from ``settings`` (the first one is named; a checkpoint that
    recorded none, or not this one, is from an earlier version: unknown, accepted) or when it has done more than
    ``total`` (steps or epochs)."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return None
    kinds = {counter: int, "generator": torch.Tensor, "torch_rng": torch.Tensor} | {name: dict for name in parts}
    state = read_torch_file(path, "training checkpoint", fix, kinds, "a checkpoint of this training")
    where = f"training checkpoint {shorten(path)!r}"
    stored = state.get("settings", {})
    if state[counter] < 0 or not isinstance(stored, dict):
        raise InvalidArgumentError(f"{where} is damaged (its {counter} count or settings); {fix}")
    for key, value in _plain(settings or {}).items():
        if key in stored and stored[key] != value:
            raise InvalidArgumentError(
                f"{where} is from a run with {key}={shorten(stored[key], 60)} (this one: {shorten(value, 60)}); "
                f"rerun with the same settings to resume, or {fix}"
            )
    if total is not None and state[counter] > total:
        raise InvalidArgumentError(
            f"{where} has done {state[counter]} {counter}s, more than this run's {total}; rerun with {state[counter]} "
            f"or more to resume, or {fix}"
        )
    return state


def apply_training_state(
    path: str | Path, state: dict, counter: str, generator: torch.Generator, fix: str = RESTART, **parts
) -> int:
    """Load a :func:`read_training_state` state into ``parts`` and the RNGs; returns ``counter``'s value. One line
    when a part does not take it (another model's weights, a damaged optimiser or random state)."""
    try:
        for name, part in parts.items():
            part.load_state_dict(state[name])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
    except Exception as exc:  # noqa: BLE001 - multi-line errors of load_state_dict, set_state
        reason = shorten(" ".join(str(exc).split()), 120)
        where = f"training checkpoint {shorten(path)!r}"
        raise InvalidArgumentError(f"{where} does not fit this run ({reason}); {fix}") from None
    return state[counter]


def restore_training_state(
    path: str | Path,
    counter: str,
    generator: torch.Generator,
    settings: Mapping | None = None,
    total: int | None = None,
    fix: str = RESTART,
    **parts,
) -> int:
    """:func:`read_training_state` then :func:`apply_training_state`: load a :func:`save_training_state` checkpoint
    into ``parts`` and the RNGs; returns ``counter``'s value (0 when there is no checkpoint, and then nothing is
    touched)."""
    state = read_training_state(path, counter, parts, settings, total, fix)
    return 0 if state is None else apply_training_state(path, state, counter, generator, fix, **parts)


def write_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    """Write an ``.npz`` deterministically (fixed zip timestamps) and atomically (temp + rename).

    ``np.savez`` stamps the current time into the archive, so the same arrays would give
    different bytes a minute later; here the same arrays always give the same file.
    """
    path = Path(path)
    with atomic_write(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue())
    return path


def write_npz_stream(
    path: str | Path, arrays: dict[str, tuple[tuple[int, ...], np.dtype, Iterable[np.ndarray]]]
) -> Path:
    """Like :func:`write_npz` for arrays too big to hold: each is ``(shape, dtype, chunks along axis 0)``.

    Same bytes as :func:`write_npz` on the concatenated arrays (fixed timestamps, stored, atomic).
    """
    path = Path(path)
    with (
        atomic_write(path) as tmp,
        zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive,
    ):
        for name, (shape, dtype, chunks) in arrays.items():
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                header,
                {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)},
            )
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            size = len(header.getvalue()) + int(np.prod(shape)) * np.dtype(dtype).itemsize
            info.file_size = size
            with archive.open(info, "w", force_zip64=size > 0x7FFFFFFF) as member:
                member.write(header.getvalue())
                for chunk in chunks:
                    member.write(np.ascontiguousarray(chunk, dtype=dtype).tobytes())
    return path


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 16 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Hex sha256 of weights: every tensor's name, dtype, shape and bytes, in name order. The same weights give the
    same hash whatever file format or device they came from; any other weights give another."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def input_file(
    path: str | Path, what: str, fix: str, error: type[Exception] = InvalidArgumentError, max_bytes: int | None = None
) -> Path:
    """``path`` if it is an existing regular file, else one line saying what it is instead.

    The message names ``what`` (``"router file"``), the path (shortened when very long) and what is wrong: it
    does not exist, is a dangling symbolic link or a link loop, is a folder, is not a regular file (a device,
    FIFO or socket), has a name longer than the system allows, or is larger than ``max_bytes``; ``fix`` says
    what to pass instead. ``error`` is the exception class raised (the caller's domain error).

    Example:
        >>> input_file("/nonexistent.pt", "router file", "pass --router PATH")
        Traceback (most recent call last):
        ...
        goc_utils.errors.InvalidArgumentError: router file '/nonexistent.pt' does not exist; pass --router PATH
    """
    path = Path(path)
    name = repr(shorten(path))
    try:
        info = path.stat()
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            reason = f"has a name of {len(str(path)):,} characters, longer than the system allows"
        elif (link := link_problem(path)) is not None:
            reason = link
        elif exc.errno in (errno.ENOENT, errno.ENOTDIR):
            reason = "does not exist"
        else:
            reason = f"cannot be read ({exc.strerror})"
        raise error(f"{what} {name} {reason}; {fix}") from None
    if path.is_dir():
        raise error(f"{what} {name} is a folder, not a file; {fix}")
    if not path.is_file():
        raise error(f"{what} {name} is not a regular file (a device, FIFO or socket); {fix}")
    if max_bytes is not None and info.st_size > max_bytes:
        size, limit = format_bytes(info.st_size), format_bytes(max_bytes)
        raise error(f"{what} {name} is {size}, more than a {what} can be ({limit}); {fix}")
    return path


def format_bytes(n: int | float) -> str:
    """``1536`` -> ``"1.5 KiB"`` (binary units, three significant digits)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.3g} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.3g} EiB"


def memory_bytes() -> int:
    """This machine's physical memory in bytes (a fixed number, so checks against it are reproducible)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(nbytes: int | float, what: str, fix: str) -> None:
    """One line (:class:`InvalidArgumentError`) when ``what`` would need more memory than this machine has, before
    anything is allocated: ``check_memory(n * 3 * 256 * 256, "--per-class 100000000", "sample fewer images")``."""
    if nbytes > memory_bytes():
        raise InvalidArgumentError(
            f"{what} would need {format_bytes(nbytes)} of memory, more than this machine's "
            f"{format_bytes(memory_bytes())}; {fix}"
        )


def check_disk(folder: str | Path, nbytes: int | float, what: str, fix: str) -> None:
    """One line when ``what`` would write more than the free space of the disk holding ``folder`` (its nearest
    existing parent), before anything is written."""
    existing = Path(folder).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if nbytes > free:
        raise InvalidArgumentError(
            f"{what} would write {format_bytes(nbytes)} to {shorten(existing)!r}, more than its "
            f"{format_bytes(free)} free; {fix}"
        )


@contextmanager
def exclusive_lock(lock_path: str | Path, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created if needed) for the block; when another process holds it,
    raise :class:`InvalidArgumentError` with the one-line message ``busy`` at once. The kernel drops the lock
    when its process ends, also on ``kill -9``, so a stopped job never leaves a stale lock. The file is removed when
    the block ends (nothing is left beside an output); a process that opened it just before holds a removed file,
    sees that the path is no longer its file, and takes the lock anew. Folders made for the lock go with it when
    nothing else was written into them (a command refused inside the block leaves no folder behind)."""
    lock_path = Path(lock_path)
    made = [folder for folder in (lock_path.parent, *lock_path.parent.parents) if not folder.exists()]
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(lock_path, "a+")  # noqa: SIM115 - closed below, after the lock is released
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise InvalidArgumentError(busy) from None
        try:
            current = os.stat(lock_path)
        except FileNotFoundError:
            current = None
        mine = os.fstat(handle.fileno())
        if current is not None and (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
            break
        handle.close()  # the holder before removed it: lock the file now at that path
    try:
        yield
    finally:
        try:
            os.unlink(lock_path)
        except FileNotFoundError:
            pass
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
        for folder in made:  # innermost first; one that holds something stays, and so do those above it
            try:
                folder.rmdir()
            except OSError:
                break


def output_lock(path: str | Path, flag: str = "--out") -> AbstractContextManager[None]:
    """:func:`exclusive_lock` on ``.NAME.lock`` beside ``path``: one process at a time writes ``path`` (and its
    ``.partial`` checkpoint); a second one stops at once with one line naming ``flag``."""
    path = Path(path)
    busy = f"another process is writing {shorten(path)!r}; wait for it to finish or choose another {flag}"
    return exclusive_lock(path.with_name(f".{path.name}.lock"), busy)
