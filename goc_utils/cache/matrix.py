"""Schedules from a file: one row per step, one column per block (or per unit).

Formats: ``.json`` (a list of rows), ``.csv`` (comma-separated 0/1, ``#`` comments), ``.npy``.
Values: 1 / true = recompute, 0 / false = reuse. With ``depth`` columns a value applies to
both units of the block; with ``2 * depth`` columns, column ``2i`` is the attention branch
of block i and ``2i + 1`` its MLP branch (the Learning-to-Cache unit order).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from goc_utils.cache.schedule import MAX_STEPS, CacheSchedule, ScheduleError, register_schedule
from goc_utils.errors import first_line, shorten
from goc_utils.files import input_file

BYTES_PER_VALUE = 32
"""Room per 0/1 value in a matrix file (a pretty-printed JSON ``false,`` with its indent; a float64 in a .npy)."""


def max_matrix_bytes(depth: int) -> int:
    """The largest schedule matrix file a ``depth``-block model could need: :data:`MAX_STEPS` rows of ``2 * depth``
    units, plus 64 KiB of headers and comments. Larger files are refused before they are read."""
    return MAX_STEPS * 2 * depth * BYTES_PER_VALUE + 64 * 1024


def read_matrix(path: str | Path, max_bytes: int | None = None) -> np.ndarray:
    """Read a 2-D 0/1 matrix from JSON, CSV or NPY (a regular file of at most ``max_bytes``)."""
    fix = "pass --matrix PATH (.json/.csv/.npy, one row per step)"
    path = input_file(path, "schedule matrix", fix, error=ScheduleError, max_bytes=max_bytes)
    name = shorten(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy warns about an empty file; the line below says it
            if path.suffix == ".npy":
                matrix = np.load(path, allow_pickle=False)
            elif path.suffix == ".json":
                matrix = np.asarray(json.loads(path.read_text()))
            elif path.suffix == ".csv":
                matrix = np.loadtxt(path, delimiter=",", comments="#", ndmin=2)
            else:
                raise ScheduleError(f"schedule matrix {name!r}: unknown format; use .json, .csv or .npy")
    except ScheduleError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure is a malformed file
        raise ScheduleError(f"cannot parse schedule matrix {name!r}: {first_line(exc, 120)}") from None
    if matrix.size == 0:
        raise ScheduleError(f"schedule matrix {name!r} holds no values; {fix}")
    if matrix.ndim != 2:
        raise ScheduleError(f"schedule matrix {name!r} must be a 2-D table (rows = steps), not {matrix.shape}")
    bad = matrix[~np.isin(matrix, (0, 1))] if matrix.dtype != object else matrix.ravel()
    if bad.size:
        value = bad.flat[0]
        shown = f"{value:g}" if isinstance(value, (int, float, np.number)) else shorten(repr(value))
        raise ScheduleError(f"schedule matrix {name!r} holds {shown}; every value must be 0 or 1")
    return matrix.astype(bool)


@register_schedule("matrix")
def matrix(steps: int, depth: int, path: str | Path | None = None, table: np.ndarray | None = None) -> CacheSchedule:
    """Schedule from a file (``path``) or an in-memory 0/1 table (``table``), rows = steps."""
    if (path is None) == (table is None):
        raise ScheduleError("the matrix schedule needs exactly one of --matrix PATH or a table")
    values = read_matrix(path, max_matrix_bytes(depth)) if path is not None else np.asarray(table).astype(bool)
    name = f"matrix:{shorten(Path(path).name)}" if path is not None else "matrix"
    if values.shape[1] == depth:
        mask = np.repeat(values[:, :, None], 2, axis=2)
    elif values.shape[1] == 2 * depth:
        mask = values.reshape(values.shape[0], depth, 2)
    else:
        raise ScheduleError(
            f"schedule {name!r} has {values.shape[1]} columns; a {depth}-block model needs {depth} (blocks) "
            f"or {2 * depth} (units)"
        )
    schedule = CacheSchedule(mask, name=name)
    schedule.check_fits(steps, depth)
    return schedule
