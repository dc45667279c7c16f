"""pyproject.toml and environment.yml must list the same packages with the same ranges."""

from __future__ import annotations

import re
import tomllib

from goc_utils import paths


def _requirements_from_environment() -> dict[str, str]:
    lines = (paths.PROJECT_ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    reqs = {}
    for line in lines[start + 1 :]:
        item = line.strip()
        if not item.startswith("- "):
            break
        spec = item[2:].strip()
        if spec.startswith("-e"):
            continue
        name = re.split(r"[<>=!~ ]", spec, maxsplit=1)[0].lower()
        reqs[name] = spec.replace(" ", "")
    return reqs


def _requirements_from_pyproject() -> dict[str, str]:
    project = tomllib.loads((paths.PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    specs = project["dependencies"] + extras["dev"] + extras["peers"]
    return {re.split(r"[<>=!~ ]", s, maxsplit=1)[0].lower(): s.replace(" ", "") for s in specs}


def test_environment_yml_matches_pyproject():
    assert _requirements_from_environment() == _requirements_from_pyproject()


def test_environment_yml_installs_the_project_and_uses_conda_forge():
    text = (paths.PROJECT_ROOT / "environment.yml").read_text()
    assert "conda-forge" in text
    assert "- -e ." in text


def test_torch_pins_admit_the_machine_builds():
    reqs = _requirements_from_pyproject()
    assert reqs["torch"].endswith("<=2.14.1") and reqs["torchvision"].endswith("<=0.29.1")


def test_required_packages_are_listed():
    needed = {
        "torch",
        "torchvision",
        "timm",
        "diffusers",
        "matplotlib",
        "seaborn",
        "ipywidgets",
        "papermill",
        "jupyterlab",
        "scikit-learn",
        "safetensors",
        "scipy",
        "tqdm",
        "pytest",
        "ruff",
    }
    assert needed <= set(_requirements_from_pyproject())
