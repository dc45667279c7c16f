"""Comma-separated lists (flags and notebook parameters): one rule per kind of list; and the ``key=value`` options
of another library's method strings (:func:`key_values`).

Every kind refuses an empty list and an empty item (``1,,2``, a trailing comma) in one line. A repeated item is
refused where it makes no sense: method lists (``none,none`` would time or score the same method twice) and number
lists (cfg scales, GOC correction steps, sample counts, notebook numbers). Class lists may repeat a class:
``--classes 207,207,360`` samples two images of class 207 with different noise, a legitimate grid.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import TypeVar

from goc_utils.errors import InvalidArgumentError, shorten

T = TypeVar("T")

_INTEGER = re.compile(r"\s*[+-]?[0-9]+\s*")
_FLOAT = re.compile(r"\s*[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)\s*", re.IGNORECASE)


def plain_int(text: str) -> int:
    """``int(text)`` for ASCII decimal digits only: Python's ``int`` also reads ``1_000`` and other scripts' digits
    (``"٣"`` is 3), which a typo or a pasted value should not become. ``ValueError`` otherwise, as ``int``."""
    if not _INTEGER.fullmatch(str(text)):
        raise ValueError(f"not a plain decimal integer: {text!r}")
    return int(text)


def plain_float(text: str) -> float:
    """``float(text)`` for ASCII decimal notation (``1.5``, ``.5``, ``2e-3``; ``inf`` and ``nan`` too, for the finite
    checks to name): no ``1_0.5``, no other scripts' digits. ``ValueError`` otherwise, as ``float``."""
    if not _FLOAT.fullmatch(str(text)):
        raise ValueError(f"not a plain decimal number: {text!r}")
    return float(text)


PLAIN: dict[Callable, Callable] = {int: plain_int, float: plain_float}
"""``int`` / ``float`` -> the plain readers that every number of a flag, a list or a method string goes through."""


def split_items(text: str, what: str, example: str) -> list[str]:
    """The stripped items of the comma-separated ``text``; one line (naming ``what``, e.g. ``"class list"``, and
    ``example``) when the list or one of its items is empty."""
    items = [part.strip() for part in str(text).split(",")]
    if items == [""]:
        raise InvalidArgumentError(f"empty {what} {shorten(text)!r}; use e.g. {example}")
    if "" in items:
        raise InvalidArgumentError(f"malformed {what} {shorten(text)!r} (an empty item); use e.g. {example}")
    return items


def refuse_repeats(items: Sequence[T], what: str, text: str, example: str) -> list[T]:
    """``items`` as a list; one line naming the first item that appears twice."""
    seen: list[T] = []
    for item in items:
        if item in seen:
            raise InvalidArgumentError(
                f"{what} {shorten(text)!r} lists {shorten(item)} twice; give each once, e.g. {example}"
            )
        seen.append(item)
    return seen


def number_list(text: str, convert: Callable[[str], T], what: str, example: str) -> list[T]:
    """``"1.5,4.0"`` -> ``[1.5, 4.0]`` with ``convert`` (``int`` or ``float``): no empty item, no item that is not a
    finite number, no value twice (``1.5,1.50`` included)."""
    items = split_items(text, what, example)
    convert = PLAIN.get(convert, convert)
    try:
        values = [convert(item) for item in items]
    except ValueError:
        raise InvalidArgumentError(f"malformed {what} {shorten(text)!r}; use e.g. {example}") from None
    if not all(math.isfinite(v) for v in values):
        raise InvalidArgumentError(f"malformed {what} {shorten(text)!r} (not finite); use e.g. {example}")
    return refuse_repeats(values, what, text, example)


def key_values(parts: Sequence[str], known: Sequence[str], shown: str, owner: str) -> dict[str, str]:
    """``["threshold=0.08", "fn=1"]`` -> ``{"threshold": "0.08", "fn": "1"}``, in order, still as text.

    One line for a part that is not ``key=value`` with a key in ``known`` (naming ``owner``'s keys, e.g.
    ``cachedit:dbcache``) and for a key given twice; ``shown`` is the method string as the messages quote it."""
    options: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or key not in known:
            raise InvalidArgumentError(
                f"unknown option {shorten(part)!r} in {shown}; {owner} takes key=value with keys: " + ", ".join(known)
            )
        if key in options:
            raise InvalidArgumentError(f"option {key} is given twice in {shown}; give each option once")
        options[key] = value
    return options
