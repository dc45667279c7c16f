"""Every example in a docstring of goc_utils runs and prints what it says (none skipped): the documented API stays
true."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil

import pytest

import goc_utils
from goc_utils.cache import COMPENSATORS, SCHEDULES


def modules_with_examples() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(goc_utils.__path__, "goc_utils.") if not m.name.endswith("__main__")]
    return [name for name in names if ">>>" in (importlib.util.find_spec(name).loader.get_source(name) or "")]


MODULES = modules_with_examples()


def test_the_package_has_examples():
    assert len(MODULES) >= 10


@pytest.fixture
def registries():
    """The method registries as they were: an example that registers a toy method leaves no trace."""
    saved = dict(COMPENSATORS), dict(SCHEDULES)
    yield
    for registry, before in zip((COMPENSATORS, SCHEDULES), saved, strict=True):
        registry.clear()
        registry.update(before)


@pytest.mark.parametrize("name", MODULES)
def test_every_docstring_example_runs(name, tmp_path, monkeypatch, registries):
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder()
    examples = [t for t in finder.find(module) if t.examples]
    assert examples, f"{name} mentions >>> but has no example doctest can find"
    skipped = [t.name for t in examples for e in t.examples if e.options.get(doctest.SKIP)]
    assert skipped == [], f"skipped examples: {skipped}"
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (run pytest -s)"
