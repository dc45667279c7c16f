"""Result tables: one markdown writer and one CSV + markdown file writer for every table of the study (here, not
in the study room, because `goc eval` and `goc bench` write tables too)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from goc_utils import paths
from goc_utils.files import atomic_write_text


def markdown_table(rows: Sequence[dict]) -> str:
    """A GitHub markdown table of dict rows (keys of the first row are the header); cells as ``str()``."""
    keys = list(rows[0]) if rows else []
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[dict]) -> str:
    """CSV of dict rows (LF line endings; ``None`` as an empty cell)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def write_table(
    rows: Sequence[dict], name: str, out_dir: str | Path | None = None, csv_rows: Sequence[dict] | None = None
) -> Path:
    """Write ``<out_dir>/<name>.md`` from ``rows`` and ``<name>.csv`` from ``csv_rows`` (default ``rows``).

    ``out_dir`` defaults to ``figures/`` (``GOC_FIGURES_DIR``); both files are written atomically.
    Returns the ``.md`` path.
    """
    out_dir = Path(out_dir) if out_dir is not None else paths.FIGURES_DIR
    atomic_write_text(out_dir / f"{name}.csv", csv_text(rows if csv_rows is None else csv_rows))
    return atomic_write_text(out_dir / f"{name}.md", markdown_table(rows))


def show_table(rows: Sequence[dict]):
    """A pandas DataFrame of dict rows (rendered by Jupyter)."""
    import pandas as pd  # lazy: pandas is only needed to display tables in notebooks

    return pd.DataFrame(list(rows))
