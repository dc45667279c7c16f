"""Method-string options: ``key=value`` text onto a builder's keyword arguments or a config's fields.

A schedule builder (``fora(steps, depth, interval=2, ...)``) and a compensator's config dataclass
(``GOCConfig(weight=1.2, ...)``) declare their options once, in their signature / fields; this module
turns the text of a method string into those keyword arguments, converting each value by its type hint
(``int``, ``float``, ``str`` / ``Path``, optional variants). Where the text form differs from the Python
value, the declaration says how:

* a dataclass field's ``metadata``: ``{"option": "w", "parse": parse_weight}`` (short name, converter);
* a schedule's registration: ``register_schedule("fora", options={"range": parse_range})`` (a text
  option that sets several keyword arguments);
* a config's ``FLAGS`` class attribute: options without a value (``goc:auto``).
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

from goc_utils.errors import InvalidArgumentError, shorten
from goc_utils.lists import number_list, plain_float, plain_int

Converter = Callable[[str], object]


def parse_int_list(text: str) -> list[int]:
    """``"3,5,7"`` (or ``3/5/7``) -> ``[3, 5, 7]``: a number list (:mod:`goc_utils.lists`: no empty item, no
    step twice)."""
    return number_list(text.replace("/", ","), int, "step list", "3,5,7,9")


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _boolean(text: str) -> bool:
    """``true`` / ``false`` (or 1/0, yes/no, on/off): anything else is refused, not read as false."""
    if text.lower() in _TRUE + _FALSE:
        return text.lower() in _TRUE
    raise InvalidArgumentError(f"not a yes/no value; use {' or '.join((_TRUE[1], _FALSE[1]))}")


def _converter(hint) -> Converter | None:
    """A text -> value converter for a type hint, or None when the hint has no text form."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    args = tuple(a for a in args if a is not type(None))
    if bool in args:
        return _boolean
    if int in args:
        return plain_int
    if float in args:
        return plain_float
    if str in args or Path in args:
        return str
    if any(typing.get_origin(a) in (list, tuple, Sequence, typing.Sequence) for a in args):
        return parse_int_list
    return None


def path_parameters(declared: Callable | type) -> set[str]:
    """The keyword parameters of a schedule builder, or fields of a config dataclass, declared as a file to read
    (``Path`` among the types of the hint: ``router: str | Path | None``): a method string naming one names a file,
    which ``goc`` checks before anything loads (:meth:`~goc_utils.cache.method.CacheMethod.files`)."""
    hints = typing.get_type_hints(declared)

    def is_path(hint) -> bool:
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        return Path in (typing.get_args(hint) if union else (hint,))

    return {name for name, hint in hints.items() if is_path(hint)}


def _convert(convert: Converter, key: str, value: str, text: str):
    shown = f"option {key}={shorten(value)!r} in method {shorten(text)!r}"
    if not value.strip():
        raise InvalidArgumentError(f"option {key}= in method {shorten(text)!r} has no value; give one, e.g. {key}=...")
    try:
        return convert(value)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{shown}: {exc}") from None
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{shown} is not a valid value") from None


def builder_options(builder: Callable, extra: dict[str, Converter] | None = None) -> dict[str, Converter]:
    """Text options of a schedule builder: its keyword parameters after ``(steps, depth)``, plus ``extra``."""
    hints = typing.get_type_hints(builder)
    options: dict[str, Converter] = {}
    for name in list(inspect.signature(builder).parameters)[2:]:
        convert = _converter(hints.get(name))
        if convert is not None:
            options[name] = (lambda c, n: lambda value: {n: c(value)})(convert, name)
    return options | dict(extra or {})


def config_options(config_cls: type) -> dict[str, Converter]:
    """Text options of a config dataclass: field name (or ``metadata["option"]``) -> ``{field: value}``."""
    hints = typing.get_type_hints(config_cls)
    options: dict[str, Converter] = {}
    for f in dataclasses.fields(config_cls):
        convert = f.metadata.get("parse") or _converter(hints.get(f.name))
        if convert is not None:
            options[f.metadata.get("option", f.name)] = (lambda c, n: lambda value: {n: c(value)})(convert, f.name)
    return options


def parse_options(
    parts: Sequence[str], options: dict[str, Converter], flags: dict[str, dict], what: str, text: str
) -> dict:
    """``["interval=3", "auto"]`` -> keyword arguments, with one-line errors naming the known options.

    Each keyword argument is set once: an option given twice (``interval=2:interval=3``), or two options setting
    the same argument (``auto:w=0.8``: ``auto`` sets w already), is refused rather than the last one winning.
    """
    out: dict = {}
    set_by: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep and key in flags:
            found = dict(flags[key])
        elif sep and key in options:
            found = _convert(options[key], key, value, text)
        else:
            known = [f"{k}=..." for k in options] + list(flags)
            raise InvalidArgumentError(
                f"unknown option {shorten(part)!r} for {what} in method {shorten(text)!r}; "
                + (f"it takes {', '.join(known)}" if known else "it takes no options")
            )
        for name in found:
            if name in set_by:
                again = "is given twice" if set_by[name] == key else f"sets {name}, which {set_by[name]!r} set already"
                raise InvalidArgumentError(
                    f"option {key!r} {again} in method {shorten(text)!r}; give each option once"
                )
            set_by[name] = key
        out.update(found)
    return out
