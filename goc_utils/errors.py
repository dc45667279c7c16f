"""Exceptions with one-line, actionable messages.

Every error a user can cause (bad preset, wrong checkpoint, malformed argument, missing
file) is raised as a :class:`GocError` subclass whose message names the bad value and
the fix. The ``goc`` command prints the message on one line and exits with status 2.
"""

from __future__ import annotations


class GocError(Exception):
    """Base class for user-facing errors of goc-study."""


class UnknownPresetError(GocError, KeyError):
    """A model preset name that is not registered in :data:`goc_utils.model.presets.DiT_models`."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(GocError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


class VAEError(GocError):
    """A VAE that cannot be loaded (no local copy and no network, wrong folder)."""


class InvalidArgumentError(GocError, ValueError):
    """A numeric or structural argument outside its valid range."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message (its type name when the message is empty)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]


def shorten(value: object, limit: int = 80) -> str:
    """``repr``-free text of ``value`` cut to ``limit`` characters around an ellipsis (a 100,000-digit number or a
    5,000-character path stays readable in a one-line message)."""
    text = str(value)
    if len(text) <= limit:
        return text
    head = (limit - 5) * 2 // 3
    return f"{text[:head]} ... {text[-(limit - 5 - head):]}"
