"""Study notebooks: committed without outputs, thin, and runnable headless in smoke mode."""

from __future__ import annotations

import json

import pytest

from goc_utils import paths
from goc_utils.errors import InvalidArgumentError
from goc_utils.study.notebooks import NotebookError, run_notebooks, study_notebooks

NOTEBOOKS = study_notebooks()


def test_there_are_study_notebooks():
    assert NOTEBOOKS and all(p.name[:2].isdigit() for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_is_clean_and_thin(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    assert cells[0]["cell_type"] == "markdown" and "".join(cells[0]["source"]).startswith("# ")
    assert all(c.get("id") for c in cells), "every cell needs an id (nbformat 4.5)"
    code = [c for c in cells if c["cell_type"] == "code"]
    for cell in code:
        assert cell.get("outputs", []) == [] and cell.get("execution_count") is None, "strip outputs before commit"
        source = "".join(cell["source"])
        assert not any(line.lstrip().startswith(("def ", "class ")) for line in source.splitlines()), "keep it thin"
    assert "widgets" not in nb.get("metadata", {}), "strip widget state"
    assert "import" in "".join(code[0]["source"])
    assert code[1].get("metadata", {}).get("tags") == ["parameters"]
    assert "smoke: bool" in "".join(code[1]["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_imports_its_own_study_module(path):
    """Notebook NN takes its helpers from ``goc_utils.study.nbNN_<its name>`` (plus ``viz`` and ``paths``) only."""
    cells = json.loads(path.read_text())["cells"]
    sources = "".join("".join(c["source"]) + "\n" for c in cells if c["cell_type"] == "code")
    imports = sorted({line.strip() for line in sources.splitlines() if "goc_utils" in line})
    own = f"nb{path.stem}"
    assert (paths.PROJECT_ROOT / "goc_utils" / "study" / f"{own}.py").is_file(), f"no study module {own}.py"
    allowed = {"from goc_utils import paths", f"from goc_utils.study import {own} as study, viz"}
    assert set(imports) <= allowed and f"from goc_utils.study import {own} as study, viz" in imports, imports


@pytest.mark.slow
def test_notebooks_run_in_smoke_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("GOC_FIGURES_DIR", str(tmp_path / "figures"))
    done = run_notebooks("tiny", smoke=True, output_dir=tmp_path / "executed", progress=False)
    assert [p.name for p, _ in done] == [p.name for p in NOTEBOOKS]
    for figure in (
        "01_samples",
        "01_pipeline",
        "02_adjacent_similarity",
        "02_step_similarity",
        "03_gradient_consistency",
        "04_same_noise_grid",
        "04_per_step_error",
        "05_fid_vs_speedup",
        "06_explorer_snapshot",
        "07_diffusers_same_noise",
        "07_diffusers_peers",
        "08_weight_sweep",
        "08_inflections",
        "08_cache_ratio",
        "08_replay_vs_measured",
    ):
        assert (tmp_path / "figures" / f"{figure}.png").is_file() and (tmp_path / "figures" / f"{figure}.pdf").is_file()
    assert (tmp_path / "figures" / "03_inflections.md").read_text().startswith("| schedule |")
    assert "fora-50+goc" in (tmp_path / "figures" / "04_methods.md").read_text()
    fid_table = (tmp_path / "figures" / "05_fid_table.md").read_text()
    assert fid_table.startswith("| method | cfg | samples | IS | FID |") and "| fora-50+goc | 1.5 | 40 |" in fid_table


def test_pipeline_figure_has_one_panel_per_stage_and_refuses_steps_outside_the_run():
    import matplotlib.pyplot as plt
    import numpy as np

    from goc_utils.study import viz

    noise = np.random.default_rng(0).standard_normal((6, 4, 8, 8))
    trajectory = [noise * 0.9**s for s in range(1, 11)]
    images = np.zeros((6, 32, 32, 1), dtype=np.uint8)
    fig = viz.pipeline_figure(noise, trajectory, images, rows=[0, 3], shown_steps=[1, 5, 10])
    assert len(fig.axes) == 2 * (1 + 3 + 1)  # noise, three steps, the decode
    assert [ax.get_title() for ax in fig.axes[:5]] == ["x_T (noise)", "after step 1", "after step 5", "after step 10",
                                                        "VAE decode"]  # fmt: skip
    plt.close(fig)
    with pytest.raises(ValueError, match=r"shown_steps \[11\] are outside 1..10"):
        viz.pipeline_figure(noise, trajectory, images, rows=[0], shown_steps=[10, 11])


@pytest.mark.slow
def test_the_latent_tier_runs_the_notebooks_that_load_a_vae(tmp_path, monkeypatch):
    # 07 once looked for sd-vae-ft-ema instead of the preset's own VAE; 01 decodes and shows the stages
    monkeypatch.setenv("GOC_FIGURES_DIR", str(tmp_path / "figures"))
    done = run_notebooks("fashion", smoke=True, only=["01", "07"], output_dir=tmp_path / "executed", progress=False)
    assert [p.name[:2] for p, _ in done] == ["01", "07"]
    for figure in ("01_samples", "01_pipeline", "07_diffusers_same_noise"):
        assert (tmp_path / "figures" / f"{figure}.png").is_file()


def test_the_long_ablations_notebook_runs_only_when_named_or_in_smoke_mode():
    full = [p.name[:2] for p in study_notebooks(include_long=False)]
    assert "08" not in full and "07" in full  # make study leaves it to make ablations
    assert [p.name[:2] for p in study_notebooks(["08"], include_long=False)] == ["08"]
    assert "08" in [p.name[:2] for p in study_notebooks()]


def test_smoke_runs_never_write_the_committed_figures(tmp_path, monkeypatch, capfd):
    from goc_utils import paths
    from goc_utils.cli import main
    from goc_utils.study.notebooks import figures_dir_for

    monkeypatch.delenv("GOC_FIGURES_DIR", raising=False)
    assert figures_dir_for(smoke=True) == paths.RUNS_DIR / "smoke" / "figures"
    assert figures_dir_for(smoke=False) == paths.PROJECT_ROOT / "figures"  # the study's model: tiny-fashion
    assert figures_dir_for(smoke=False, model="tiny-digits") == paths.PROJECT_ROOT / "figures" / "tiny-digits"
    assert figures_dir_for(smoke=False, model="DiT-XL/2") == paths.PROJECT_ROOT / "figures" / "DiT-XL-2"
    assert figures_dir_for(smoke=True, model="tiny-digits") == paths.RUNS_DIR / "smoke" / "figures"
    assert figures_dir_for(smoke=True, figures_dir=tmp_path) == tmp_path.resolve()
    committed = {p.name: p.stat().st_mtime_ns for p in (paths.PROJECT_ROOT / "figures").glob("01_*")}
    smoke_figure = paths.RUNS_DIR / "smoke" / "figures" / "01_samples.png"
    smoke_figure.unlink(missing_ok=True)
    assert main(["notebooks", "--smoke", "--only", "01"]) == 0
    assert smoke_figure.is_file()
    assert {p.name: p.stat().st_mtime_ns for p in (paths.PROJECT_ROOT / "figures").glob("01_*")} == committed
    out, err = capfd.readouterr()  # the kernels' own output too
    assert "runs/smoke/figures" in out and "without encryption" not in out + err


def test_wrong_parameter_type_is_refused_before_running_and_a_failing_cell_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("GOC_FIGURES_DIR", str(tmp_path / "figures"))
    with pytest.raises(
        InvalidArgumentError, match=r"parameter 'steps' is 'many' \(str\), but notebook.s. 01 expect int"
    ):
        run_notebooks("tiny", smoke=True, params={"steps": "many"}, only=["01"], output_dir=tmp_path, progress=False)
    assert not (tmp_path / "01_load_dit.ipynb").exists()  # nothing ran
    with pytest.raises(NotebookError, match="unknown model preset 'DiT-XXL/2'"):
        run_notebooks(
            "tiny", smoke=True, params={"model": "DiT-XXL/2"}, only=["01"], output_dir=tmp_path, progress=False
        )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_defaults_to_the_studys_model_as_make_study_does(path):
    import ast

    from goc_utils.cli import build_parser
    from goc_utils.study.notebooks import DEFAULT_PRESET, PRESETS

    cell = next(c for c in json.loads(path.read_text())["cells"] if "parameters" in c["metadata"].get("tags", []))
    values = {n.target.id: ast.literal_eval(n.value) for n in ast.parse("".join(cell["source"])).body
              if isinstance(n, ast.AnnAssign)}  # fmt: skip
    assert values["model"] == paths.STUDY_MODEL == "tiny-fashion"  # opened in JupyterLab: the latent tier
    assert PRESETS[DEFAULT_PRESET]["model"] == paths.STUDY_MODEL
    assert build_parser().parse_args(["notebooks"]).preset == DEFAULT_PRESET
