"""Headless execution of the study notebooks with papermill: ``goc notebooks``.

Notebooks ``notebooks/NN_name.ipynb`` run in order; executed copies go to
``runs/notebooks/`` (git-ignored) and figures to ``figures/`` (a smoke run: to
``runs/smoke/figures/``, so that it never overwrites the committed figures). Parameters come from a preset
(``fashion`` = the embedded latent tiny-fashion model and its VAE, the default, whose figures are ``figures/``;
``tiny`` = the embedded pixel-space tiny-digits model, figures in ``figures/tiny-digits/``; ``xl`` = DiT-XL/2, which
needs checkpoint paths from ``--params``, figures in ``figures/DiT-XL-2/``), ``--smoke`` (fast CI runs) and an
optional YAML file.
A failing notebook is reported as one line naming the notebook and the cell.
"""

from __future__ import annotations

import ast
import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from goc_utils import paths
from goc_utils.errors import GocError, InvalidArgumentError, first_line, shorten
from goc_utils.files import input_file

PRESETS: dict[str, dict] = {
    "fashion": {"model": "tiny-fashion"},
    "tiny": {"model": "tiny-digits"},
    "xl": {"model": "DiT-XL/2", "image_size": 256, "device": "cuda"},
}
"""Parameter overrides per study preset."""

DEFAULT_PRESET = "fashion"
"""The study's default preset (``make study``, ``goc notebooks``): :data:`goc_utils.paths.STUDY_MODEL`."""


class NotebookError(GocError):
    """A notebook failed; the message names the notebook, the cell and the error."""


LONG_NOTEBOOKS = ("08",)
"""Notebooks left out of a full run unless named (``--only 08``, ``make ablations``): 08 samples about 100,000
images (30 minutes on a 2-core CPU). Smoke runs include them."""


def study_notebooks(only: list[str] | None = None, include_long: bool = True) -> list[Path]:
    """The ordered study notebooks, optionally filtered by number prefix (``["01", "03"]``; an empty selection is
    refused); without ``only`` and with ``include_long`` False, :data:`LONG_NOTEBOOKS` are left out."""
    notebooks = sorted(p for p in paths.NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    have = ", ".join(p.name[:2] for p in notebooks)
    if only is None:
        return notebooks if include_long else [p for p in notebooks if p.name[:2] not in LONG_NOTEBOOKS]
    wanted = {str(o).strip().zfill(2) for o in only}
    unknown = wanted - {p.name[:2] for p in notebooks}
    if not wanted or unknown:
        numbers = ", ".join(repr(shorten(u, 20)) for u in sorted(unknown)) or "nothing"
        raise InvalidArgumentError(f"no notebook numbered {shorten(numbers)}; choose from {have}")
    return [p for p in notebooks if p.name[:2] in wanted]


PARAMETER_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}
"""The types a ``parameters`` cell declares, and the YAML values each accepts (an int is a fine float)."""


def notebook_parameters(notebook: Path) -> dict[str, str]:
    """Name -> declared type (``"int"``, ``"str"``...) of the ``name: type = value  # comment`` lines of the
    notebook's cell tagged ``parameters``."""
    cells = json.loads(notebook.read_text())["cells"]
    source = "".join(next(c["source"] for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])))
    return {
        node.target.id: ast.unparse(node.annotation)
        for node in ast.parse(source).body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }


def check_parameters(params: dict, notebooks: list[Path]) -> None:
    """One line for a parameter that none of ``notebooks`` declares (naming the known ones) or whose value has
    another type than a notebook's ``parameters`` cell declares (naming the notebooks and the type); papermill
    would only warn, or the notebook would fail later."""
    declared = {notebook.name[:2]: notebook_parameters(notebook) for notebook in notebooks}
    numbers = ", ".join(declared)
    for name, value in params.items():
        expecting: dict[str, list[str]] = {}
        for number, types in declared.items():
            if name in types:
                expecting.setdefault(types[name], []).append(number)
        if not expecting:
            known = sorted({n for types in declared.values() for n in types})
            raise InvalidArgumentError(
                f"unknown parameter {shorten(name, 40)!r} for notebook(s) {numbers}; known: {', '.join(known)}"
            )
        for type_name, owners in expecting.items():
            accepted = PARAMETER_TYPES.get(type_name, (object,))
            if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in accepted):
                raise InvalidArgumentError(
                    f"parameter {name!r} is {shorten(value, 40)!r} ({type(value).__name__}), but notebook(s) "
                    f"{', '.join(owners)} expect {type_name}; give a {type_name} value (quote text)"
                )
            if type_name in ("int", "float") and not (value >= 0 and (isinstance(value, int) or math.isfinite(value))):
                raise InvalidArgumentError(
                    f"parameter {name!r} is {shorten(value, 40)}, but every number of notebook(s) "
                    f"{', '.join(owners)} is a count, size, seed or scale: give a finite number >= 0"
                )


def for_selection(params: dict, notebooks: list[Path]) -> dict:
    """``params`` without the names that only notebooks outside ``notebooks`` declare: one params file serves every
    notebook of a preset (``notebooks/params/xl.yaml`` names notebook 05's ``ref_batch``), and ``--only 01`` runs 01
    with it. A name that no study notebook declares stays, for :func:`check_parameters` to refuse."""
    selected = {name for notebook in notebooks for name in notebook_parameters(notebook)}
    elsewhere = {name for notebook in study_notebooks() for name in notebook_parameters(notebook)} - selected
    return {name: value for name, value in params.items() if name not in elsewhere}


MAX_PARAMS_BYTES = 1 << 20
"""The largest ``--params`` file read (a few dozen ``name: value`` lines are a few KiB)."""


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader (plain data only: no tag ever builds a Python object or runs code) that refuses
    anchors and aliases: a parameter file needs none, and they are how a recursive value (``a: &a [*a]``) or an
    alias bomb (billions of laughs) is written."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            kind = f"alias *{event.anchor}" if isinstance(event, yaml.AliasEvent) else f"anchor &{event.anchor}"
            raise yaml.MarkedYAMLError(
                problem=f"uses the YAML {shorten(kind, 40)}; params files refuse anchors and aliases, write each "
                "value out",
                problem_mark=event.start_mark,
            )
        return super().compose_node(parent, index)


def load_params_file(path: str | Path | None) -> dict:
    """Parameters from a YAML file (a mapping of parameter name -> value), read with :class:`ParamsLoader`."""
    if path is None:
        return {}
    path = input_file(path, "params file", "pass --params FILE.yaml", max_bytes=MAX_PARAMS_BYTES)
    name = repr(shorten(path))
    try:
        data = yaml.load(path.read_bytes(), Loader=ParamsLoader) or {}
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = f" ({shorten(getattr(exc, 'problem', None) or first_line(exc), 160)})"
        raise InvalidArgumentError(f"params file {name} is not valid YAML{line}{problem}; fix it") from None
    except RecursionError:
        raise InvalidArgumentError(f"params file {name} nests values too deeply; write name: value lines") from None
    if not isinstance(data, dict):
        raise InvalidArgumentError(f"params file {name} must hold a mapping of parameter: value")
    return data


@contextmanager
def naming_params_file(path: str | Path | None) -> Iterator[None]:
    """A refusal of a value read from the params file ``path`` (an unknown parameter, another type, an unknown
    model) names the file; without a file, refusals pass unchanged."""
    try:
        yield
    except GocError as exc:
        if path is None:
            raise
        raise InvalidArgumentError(f"params file {shorten(path)!r}: {exc}") from None


def run_notebooks(
    preset: str = DEFAULT_PRESET,
    smoke: bool = False,
    params: dict | None = None,
    only: list[str] | None = None,
    output_dir: Path | None = None,
    progress: bool = True,
    figures_dir: Path | None = None,
) -> list[tuple[Path, float]]:
    """Execute the notebooks in order; return ``(executed copy, seconds)`` per notebook.

    Figures go to ``figures_dir``, else to ``$GOC_FIGURES_DIR`` when set, else to the model's committed figures
    (:func:`figures_dir_for`: ``figures/`` for tiny-fashion, ``figures/tiny-digits/``...; in smoke mode, asked for by
    ``smoke`` or by ``smoke: true`` in ``params`` (:func:`smoke_mode`): ``runs/smoke/figures/``).
    """
    smoke = smoke_mode(smoke, params)
    model = preset_model(preset, params)
    notebooks = study_notebooks(only, include_long=smoke)
    params = for_selection(params or {}, notebooks)
    check_parameters(params, notebooks)
    parameters = dict(PRESETS[preset]) | {"smoke": smoke, "interactive": False} | params
    output_dir = Path(output_dir or paths.EXECUTED_NOTEBOOKS_DIR)
    output_dir.mkdir(parents=True, exist_ok=True)
    figures = figures_dir_for(smoke, figures_dir, model)
    previous = os.environ.get(FIGURES_VARIABLE)
    os.environ[FIGURES_VARIABLE] = str(figures)  # the kernels inherit it (goc_utils.paths.FIGURES_DIR)
    try:
        return _execute(notebooks, parameters, output_dir, progress)
    finally:
        if previous is None:
            os.environ.pop(FIGURES_VARIABLE, None)
        else:
            os.environ[FIGURES_VARIABLE] = previous


FIGURES_VARIABLE = "GOC_FIGURES_DIR"

QUIET_KERNEL = ["--IPKernelApp.log_level=ERROR"]
"""Kernel arguments: no start-up warnings (ipykernel warns about its loopback-only TCP transport)."""


def figures_dir_for(smoke: bool, figures_dir: str | Path | None = None, model: str = paths.STUDY_MODEL) -> Path:
    """Where a run's figures go: the given folder, else :func:`goc_utils.paths.default_figures_dir` (
    ``$GOC_FIGURES_DIR``; a smoke run's ``runs/smoke/figures/``, so that it never overwrites the committed figures;
    ``figures/`` for the study's model, ``figures/<model>/`` for the others)."""
    if figures_dir is not None:  # absolute (the kernels run in notebooks/), links kept for check_output_dir to judge
        return Path(figures_dir).absolute()
    return paths.default_figures_dir(model, smoke)


def smoke_mode(smoke: bool, params: dict | None = None) -> bool:
    """Whether a run is in smoke mode, however it was asked for: ``--smoke`` (``smoke``) or ``smoke: true`` in the
    params file (papermill hands the notebooks the file's value). Where figures go and which notebooks run follow
    it. One line for a ``smoke`` value that is not true or false, or ``smoke: false`` with ``--smoke``."""
    value = (params or {}).get("smoke", smoke)
    if not isinstance(value, bool):
        raise InvalidArgumentError(
            f"parameter 'smoke' is {shorten(value, 40)!r} ({type(value).__name__}); give true or false"
        )
    if smoke and not value:
        raise InvalidArgumentError("--smoke and smoke: false in the params file disagree; drop one of them")
    return value


def preset_model(preset: str, params: dict | None = None) -> str:
    """The model a run of ``preset`` with ``params`` overrides samples."""
    if preset not in PRESETS:
        raise InvalidArgumentError(f"unknown study preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    return str((params or {}).get("model", PRESETS[preset]["model"]))


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
