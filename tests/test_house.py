"""The house by stage: rooms import only rooms below them, and no module imports itself back (no circle).

Imports are read statically from the sources (every ``import`` statement, also inside functions), so a
lazy import cannot hide a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from goc_utils import paths

PACKAGE = paths.PROJECT_ROOT / "goc_utils"

ROOMS = ("base", "model", "cache", "priors", "integrations", "evaluation", "training", "study", "cli")
"""Lowest first: a module may import its own room and the rooms before it, never one after it."""

BASE = {"errors", "files", "lists", "paths", "datasets"}


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    first = module.split(".")[1] if "." in module else ""
    return "base" if first in BASE or not first else first


def imports(path: Path, modules: set[str]) -> set[str]:
    """The goc_utils modules ``path`` imports (``from goc_utils.x import y`` counts ``goc_utils.x.y`` when that
    is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("goc_utils.")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("goc_utils"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return {m for m in found if m != "goc_utils"}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in files}
    return {module_name(p): imports(p, modules) & modules for p in files}


def test_every_module_is_in_a_room(graph):
    unknown = sorted(m for m in graph if room(m) not in ROOMS)
    assert unknown == [], f"modules outside the rooms {ROOMS}: {unknown}"


def test_rooms_import_only_rooms_below(graph):
    upward = sorted(
        f"{m} -> {d}" for m, deps in graph.items() for d in deps if ROOMS.index(room(d)) > ROOMS.index(room(m))
    )
    assert upward == [], "lower rooms import higher ones:\n" + "\n".join(upward)


def test_no_import_circle(graph):
    # a package's __init__ re-exporting its own modules is not a circle: drop edges from a package to its children
    edges = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    circle: list[str] = []

    def visit(node: str, trail: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                circle.extend(trail[trail.index(nxt) :] + [node, nxt] if nxt in trail else [node, nxt])
                return True
            if nxt not in state and visit(nxt, trail + [node]):
                return True
        state[node] = 2
        return False

    for start in sorted(edges):
        if start not in state and visit(start, []):
            break
    assert circle == [], "import circle: " + " -> ".join(circle)


def test_the_check_finds_a_circle(tmp_path):
    """The circle check is not vacuous: two modules importing each other are reported."""
    pkg = tmp_path / "goc_utils" / "model"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text("from goc_utils.model.b import x\n")
    (pkg / "b.py").write_text("def f():\n    from goc_utils.model import a\n")
    files = sorted((tmp_path / "goc_utils").rglob("*.py"))
    modules = {module_name(p, tmp_path / "goc_utils") for p in files}
    fake = {module_name(p, tmp_path / "goc_utils"): imports(p, modules) & modules for p in files}
    with pytest.raises(AssertionError, match="import circle"):
        test_no_import_circle(fake)
