"""Schedules and compensators from other installed packages, through Python entry points.

A package that defines a method registers it in a module of its own (``@register_schedule`` /
``@register_compensator``, as the built-in files do; see docs/adding-a-method.md) and names that module under the
entry-point group :data:`ENTRY_POINT_GROUP` in its ``pyproject.toml``::

    [project.entry-points."goc_study.methods"]
    my-cache = "my_package.my_cache"

Once the package is installed, its method names work in every method string: ``goc sample``, ``goc bench``,
``goc eval-sample``, ``goc eval``, ``goc compare``, the diffusers hooks, the notebooks and the explorer, without
editing ``goc_utils``. :func:`load_plugins` imports each such module once, when a name is not among the built-in
ones (so a run that uses only built-in methods imports no plugin). A plugin that cannot be imported is reported in
one line on stderr naming it, and skipped: the built-in methods keep working.
"""

from __future__ import annotations

import importlib.metadata
import sys

from goc_utils.errors import first_line

ENTRY_POINT_GROUP = "goc_study.methods"
"""The entry-point group of method plugins: each entry point names a module whose import registers methods."""

_seen: dict[str, str | None] = {}
"""Entry point name -> None (loaded) or the one-line reason it was skipped."""


def load_plugins() -> dict[str, str | None]:
    """Import every method plugin not imported yet; return ``{name: None | reason skipped}`` for all seen so far."""
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in _seen:
            continue
        try:
            entry.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the built-in methods
            reason = first_line(exc, 160)
            print(
                f"goc: warning: method plugin {entry.name!r} ({entry.value}) was skipped: {type(exc).__name__}: "
                f"{reason}",
                file=sys.stderr,
            )
            _seen[entry.name] = reason
        else:
            _seen[entry.name] = None
    return dict(_seen)
