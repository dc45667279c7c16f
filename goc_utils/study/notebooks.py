"""Headless execution of the study notebooks with papermill: ``goc notebooks``.

Notebooks ``notebooks/NN_name.ipynb`` run in order; executed copies go to
``runs/notebooks/`` (git-ignored) and figures to ``figures/`` (a smoke run: to
``runs/smoke/figures/``, so that it never overwrites the committed figures). Parameters come from a
preset (``tiny`` = the embedded model, the default; ``xl`` = DiT-XL/2, which needs
checkpoint paths from ``--params``), ``--smoke`` (fast CI runs) and an optional YAML file.
A failing notebook is reported as one line naming the notebook and the cell.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import yaml

from goc_utils import paths
from goc_utils.errors import GocError, InvalidArgumentError, first_line

PRESETS: dict[str, dict] = {
    "tiny": {"model": "tiny-digits"},
    "xl": {"model": "DiT-XL/2", "image_size": 256, "device": "cuda"},
}
"""Parameter overrides per study preset."""


class NotebookError(GocError):
    """A notebook failed; the message names the notebook, the cell and the error."""


LONG_NOTEBOOKS = ("08",)
"""Notebooks left out of a full run unless named (``--only 08``, ``make ablations``): 08 samples about 100,000
images (30 minutes on a 2-core CPU). Smoke runs include them."""


def study_notebooks(only: list[str] | None = None, include_long: bool = True) -> list[Path]:
    """The ordered study notebooks, optionally filtered by number prefix (``["01", "03"]``); without ``only`` and
    with ``include_long`` False, :data:`LONG_NOTEBOOKS` are left out."""
    notebooks = sorted(p for p in paths.NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    if not only and not include_long:
        notebooks = [p for p in notebooks if p.name[:2] not in LONG_NOTEBOOKS]
    if only:
        wanted = {o.zfill(2) for o in only}
        unknown = wanted - {p.name[:2] for p in notebooks}
        if unknown:
            raise InvalidArgumentError(
                f"no notebook numbered {', '.join(sorted(unknown))}; have {', '.join(p.name[:2] for p in notebooks)}"
            )
        notebooks = [p for p in notebooks if p.name[:2] in wanted]
    return notebooks


def load_params_file(path: str | Path | None) -> dict:
    """Parameters from a YAML file (a mapping of parameter name -> value)."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise InvalidArgumentError(f"params file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise InvalidArgumentError(f"params file {str(path)!r} is not valid YAML{line}; fix it") from None
    if not isinstance(data, dict):
        raise InvalidArgumentError(f"params file {str(path)!r} must hold a mapping of parameter: value")
    return data


def run_notebooks(
    preset: str = "tiny",
    smoke: bool = False,
    params: dict | None = None,
    only: list[str] | None = None,
    output_dir: Path | None = None,
    progress: bool = True,
    figures_dir: Path | None = None,
) -> list[tuple[Path, float]]:
    """Execute the notebooks in order; return ``(executed copy, seconds)`` per notebook.

    Figures go to ``figures_dir``, else to ``$GOC_FIGURES_DIR`` when set, else to ``figures/``
    (:func:`figures_dir_for` with ``smoke``: ``runs/smoke/figures/``).
    """
    if preset not in PRESETS:
        raise InvalidArgumentError(f"unknown study preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    parameters = dict(PRESETS[preset]) | {"smoke": smoke, "interactive": False} | (params or {})
    output_dir = Path(output_dir or paths.EXECUTED_NOTEBOOKS_DIR)
    output_dir.mkdir(parents=True, exist_ok=True)
    figures = figures_dir_for(smoke, figures_dir)
    previous = os.environ.get(FIGURES_VARIABLE)
    os.environ[FIGURES_VARIABLE] = str(figures)  # the kernels inherit it (goc_utils.paths.FIGURES_DIR)
    try:
        return _execute(study_notebooks(only, include_long=smoke), parameters, output_dir, progress)
    finally:
        if previous is None:
            os.environ.pop(FIGURES_VARIABLE, None)
        else:
            os.environ[FIGURES_VARIABLE] = previous


FIGURES_VARIABLE = "GOC_FIGURES_DIR"

QUIET_KERNEL = ["--IPKernelApp.log_level=ERROR"]
"""Kernel arguments: no start-up warnings (ipykernel warns about its loopback-only TCP transport)."""


def figures_dir_for(smoke: bool, figures_dir: str | Path | None = None) -> Path:
    """Where a run's figures go: the given folder, ``$GOC_FIGURES_DIR``, or ``figures/``.

    A smoke run (few samples, CI quality) defaults to ``runs/smoke/figures/`` instead, so that it never
    overwrites the committed figures.
    """
    if figures_dir is not None:
        return Path(figures_dir).resolve()
    if os.environ.get(FIGURES_VARIABLE):
        return Path(os.environ[FIGURES_VARIABLE]).resolve()
    return paths.RUNS_DIR / "smoke" / "figures" if smoke else paths.PROJECT_ROOT / "figures"


def _execute(notebooks: list[Path], parameters: dict, output_dir: Path, progress: bool) -> list[tuple[Path, float]]:
    import papermill  # lazy: papermill and its kernels are needed only to execute notebooks
    from papermill.exceptions import PapermillExecutionError

    done = []
    for notebook in notebooks:
        started = time.perf_counter()
        target = output_dir / notebook.name
        try:
            papermill.execute_notebook(
                str(notebook),
                str(target),
                parameters=parameters,
                kernel_name="python3",
                cwd=str(paths.NOTEBOOKS_DIR),
                progress_bar=progress,
                log_output=False,
                extra_arguments=QUIET_KERNEL,
            )
        except PapermillExecutionError as exc:
            raise NotebookError(
                f"{notebook.name} failed in cell {exc.exec_count}: {exc.ename}: {first_line(exc.evalue)} "
                f"(executed copy: {target})"
            ) from None
        done.append((target, time.perf_counter() - started))
    return done
