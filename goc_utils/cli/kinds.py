"""The kinds of the ``goc`` options: every option of every command declares its kind once
(``add_option(p, "--steps", Integer(1, NUM_TRAIN_TIMESTEPS), default=20, help=...)``) and is checked by that
kind's one validator before any work.

A kind is

- an argparse ``type``: called on the option's text, it checks syntax and range and returns the value the command
  reads (an ``int`` for a count, the text itself for a path or a method string), or raises one line naming the
  problem and the fix (``argument --steps: must be an integer >= 1 (got 0)``);
- :meth:`Kind.check`: what a path is on disk (an input file exists, is a regular file and starts like its format;
  an output can be written there) and whether a method string parses, run by ``goc``'s ``main`` once every option
  is parsed and before the command runs. Nothing is created: writing is probed with an unnamed temporary file;
- :meth:`Kind.bad_values` and :meth:`Kind.example`: values it refuses (paths name the :data:`FIXTURES` of a
  folder) and one it accepts, from which the tests generate bad values for every option of every command
  (``tests/test_option_kinds.py``).

Flags (``store_true``, ``--x/--no-x``) and ``choices`` options are kinds too (:class:`Flag`, :class:`Choice`).
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import re
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

from goc_utils.cli import GIVEN
from goc_utils.errors import GocError, InvalidArgumentError, shorten
from goc_utils.files import FORMATS, input_file
from goc_utils.lists import number_list, plain_float, plain_int, refuse_repeats, split_items
from goc_utils.model.presets import check_preset
from goc_utils.model.sampler import parse_classes
from goc_utils.model.vae import VAE_HUB_IDS
from goc_utils.paths import link_problem
from goc_utils.priors.stats import MAX_SEED

MAX_COUNT = 2**63 - 1
"""The largest count any option takes (an int64, what numpy and torch count with); the commands refuse what does
not fit this machine (memory, disk) before any work."""
BadValues = list[tuple[str, str]]
"""``(label, text)`` pairs: a bad value and what makes it bad."""


class Kind:
    """Free text: not empty, no control character (an error quoting it stays one line). Subclasses refine
    :meth:`parse` (syntax and range) and :meth:`check` (a path on disk)."""

    name = "free text"

    def __call__(self, text: str):
        try:
            return self.parse(text)
        except (GocError, ValueError) as exc:  # argparse would hide the message behind "invalid value"
            raise argparse.ArgumentTypeError(str(exc)) from None

    def parse(self, text: str):
        if not text.strip():
            raise argparse.ArgumentTypeError(f"an empty value; {self.name} expected, e.g. {self.example_text()}")
        if any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise argparse.ArgumentTypeError(f"{shorten(repr(text))} holds a control character; give one line")
        return text

    def check(self, value, flag: str) -> None:
        """What the parsed value is on disk (paths) or to a parser (method strings), before the command runs; one
        :class:`InvalidArgumentError` line naming ``flag``."""

    def check_action(self, action: argparse.Action, value) -> None:
        """:meth:`check` the parsed value of ``action`` (each one of a ``nargs`` option, each pair of an ``append``
        one)."""
        flag = action.option_strings[0] if action.option_strings else action.dest
        for item in _values(value) if action.nargs is not None else [value]:
            self.check(item, flag)

    def argparse_kwargs(self) -> dict:
        """What ``add_argument`` needs to apply the kind."""
        return {"type": self}

    def example_text(self) -> str:
        return "some text"

    def example(self, folder: Path) -> str:
        """A value the kind accepts (files it needs are made in ``folder``)."""
        return self.example_text()

    def bad_values(self, folder: Path) -> BadValues:
        """Values the kind refuses, the most telling first (paths name the :data:`FIXTURES` in ``folder``)."""
        return [("empty", ""), ("a control character", "a\nb")]


def _values(value) -> list:
    """The values in ``value``, lists of lists flattened (``--pair A B --pair C D`` -> A, B, C, D)."""
    return [v for item in value for v in _values(item)] if isinstance(value, list) else [value]


# ----------------------------------------------------------------------------- numbers


class Integer(Kind):
    """An integer in ``minimum .. maximum`` (or 0 for "off" when ``off``: a bootstrap of one resample has no
    spread, ``Integer(2, off=True)``). ``what`` (``"--steps"``) heads the range messages: ``--steps must be in
    1..1000 (got 5000)``."""

    def __init__(
        self, minimum: int, maximum: int = MAX_COUNT, off: bool = False, name: str = "count", what: str | None = None
    ):
        self.minimum, self.maximum, self.off, self.name, self.what = minimum, maximum, off, name, what

    def parse(self, text: str) -> int:
        try:
            value = plain_int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(self.not_integer(text)) from None
        if self.minimum <= value <= self.maximum or (self.off and value == 0):
            return value
        if self.what is not None and self.maximum != MAX_COUNT:
            rule = f"in {self.minimum}..{self.maximum}"
        elif value > self.maximum:
            rule = f"at most {self.maximum:,}"
        else:
            rule = ">=" if self.what else "an integer >="
            rule = f"0 (off) or {rule} {self.minimum}" if self.off else f"{rule} {self.minimum}"
        raise argparse.ArgumentTypeError(self.outside(value, f"must be {rule}"))

    def not_integer(self, text: str) -> str:
        return f"{shorten(text)!r} is not an integer"

    def outside(self, value: int, rule: str) -> str:
        return f"{self.what + ' ' if self.what else ''}{rule} (got {shorten(value)})"

    def example_text(self) -> str:
        return str(max(self.minimum, 1))

    def bad_values(self, folder: Path) -> BadValues:
        below = sorted({v for v in (self.minimum - 1, 1, 0, -1) if v < self.minimum and not (self.off and v == 0)})
        return [
            *[(("zero" if v == 0 else "negative" if v < 0 else "too small"), str(v)) for v in reversed(below)],
            ("huge", str(self.maximum + 1)),
            ("huge (31 digits)", "1" + "0" * 30),
            ("NaN", "nan"),
            ("infinite", "inf"),
            ("a fraction", "1.5"),
            ("empty", ""),
            ("a word", "many"),
            ("digits with underscores", "1_0"),
            ("another script's digits", "\u0663"),
        ]


class Batch(Integer):
    """Images per model forward (``--batch``, ``--per-device-batch``, ``--batch-size``): a count that reaches the
    allocator, so beyond its range it is checked with the command's ``--model`` and ``--image-size``
    (:func:`check_together`): one guided forward of that many images must fit this machine's memory. ``capped_by``:
    the option whose count caps the batch (``--num-samples``: a batch is never larger than the run)."""

    def __init__(self, capped_by: str | None = None):
        super().__init__(1, name="batch size")
        self.capped_by = capped_by

    def bad_values(self, folder: Path) -> BadValues:
        huge = [] if self.capped_by else [("more than the memory holds", str(10**12))]  # capped: it may be fine
        return [*super().bad_values(folder), *huge]


class Seed(Integer):
    """A seed: an integer in 0 .. 2**63 - 1 (one rule for every command)."""

    def __init__(self):
        super().__init__(0, MAX_SEED, name="seed")

    def not_integer(self, text: str) -> str:
        return f"seed {shorten(text)!r} is not an integer"

    def outside(self, value: int, rule: str) -> str:
        return f"seed {shorten(value)} is outside 0..2**63-1"


class Number(Kind):
    """A finite float, optionally ``>= minimum`` (``> minimum`` when ``above``) and ``<= maximum``."""

    def __init__(
        self, minimum: float | None = None, maximum: float | None = None, above: bool = False, name="finite float"
    ):
        self.minimum, self.maximum, self.above, self.name = minimum, maximum, above, name

    def parse(self, text: str) -> float:
        try:
            value = plain_float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {shorten(text)!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{shorten(text)!r} is not a finite number")
        low, high = self.minimum, self.maximum
        if (low is not None and (value < low or (self.above and value == low))) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {self.rule()} (got {value:g})")
        return value

    def rule(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f"in [{self.minimum:g}, {self.maximum:g}]"
        if self.minimum is not None:
            return f"a number {'>' if self.above else '>='} {self.minimum:g}"
        return f"a number <= {self.maximum:g}"

    def example_text(self) -> str:
        low = 0.0 if self.minimum is None else self.minimum
        return f"{low + (0.5 if self.maximum is None or self.maximum - low > 0.5 else 0.0):g}"

    def bad_values(self, folder: Path) -> BadValues:
        bad = []
        if self.minimum is not None:
            bad += [("zero" if self.minimum == 0 else "at the bound", f"{self.minimum:g}")] if self.above else []
            bad += [("negative" if self.minimum >= 0 else "too small", f"{self.minimum - 1:g}")]
        if self.maximum is not None:
            bad += [("too large", f"{self.maximum + 1:g}")]
        return [*bad, ("NaN", "nan"), ("infinite", "inf"), ("minus infinity", "-inf"), ("huge (overflows)", "1e999"),
                ("empty", ""), ("a word", "much"), ("digits with underscores", "1_0.5"),
                ("another script's digits", "\u0663.5")]  # fmt: skip


class Weight(Number):
    """GOC's w: a finite number or ``auto`` (least squares on priors)."""

    name = "weight"

    def __init__(self):
        super().__init__(name="weight")

    def parse(self, text: str) -> float | str:
        return "auto" if text.strip() == "auto" else super().parse(text)


# ----------------------------------------------------------------------------- words and lists


class Choice(Kind):
    """One of ``choices`` (argparse's own check: ``invalid choice: 'x' (choose from ...)``)."""

    name = "choice"

    def __init__(self, choices: Sequence[str]):
        self.choices = list(choices)

    def argparse_kwargs(self) -> dict:
        return {"choices": self.choices}

    def example_text(self) -> str:
        return self.choices[0]

    def bad_values(self, folder: Path) -> BadValues:
        return [("not a choice", "no-such-choice"), ("empty", ""), ("too long", "x" * 300)]


class Flag(Kind):
    """A flag: ``--x`` (``store_true``) or, ``negatable``, ``--x`` / ``--no-x``; it takes no value."""

    name = "flag"

    def __init__(self, negatable: bool = False):
        self.negatable = negatable

    def argparse_kwargs(self) -> dict:
        return {"action": argparse.BooleanOptionalAction if self.negatable else "store_true"}

    def bad_values(self, folder: Path) -> BadValues:
        return [("a value", "yes"), ("an empty value", "")]


class Device(Kind):
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; a GPU must be visible (checked before anything loads)."""

    name = "device"

    def parse(self, text: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
            raise argparse.ArgumentTypeError(f"unknown device {shorten(text)!r}; use auto, cpu, cuda or cuda:N")
        return text

    def check(self, value: str, flag: str) -> None:
        from goc_utils.model.checkpoints import resolve_device  # torch's import only once a command runs

        resolve_device(value)  # "--device cuda:3: only 2 GPU(s) are visible"

    def example_text(self) -> str:
        return "cpu"

    def bad_values(self, folder: Path) -> BadValues:
        return [("unknown", "tpu"), ("a negative GPU", "cuda:-1"), ("empty", ""), ("too long", "c" * 300),
                ("a GPU that is not here", "cuda:4096")]  # fmt: skip


class Preset(Kind):
    """A model preset: ``tiny-digits``, ``tiny-fashion``, ``DiT-XL/2``, ..."""

    name = "model preset"

    def parse(self, text: str) -> str:
        check_preset(text)
        return text

    def example_text(self) -> str:
        return "tiny-digits"

    def bad_values(self, folder: Path) -> BadValues:
        return [("unknown", "DiT-XXL/2"), ("empty", ""), ("too long", "x" * 300)]


class Method(Kind):
    """A method string (``fora-50+goc:w=1.0``) or, ``several``, a comma-separated list of them; the value is the
    text. ``validate`` (``CacheMethod.parse``) checks what the text alone says (unknown names and options) in
    :meth:`check`, before the command runs: a method that another package adds (entry points) is known only
    then."""

    def __init__(self, validate: Callable[[str], object], several: bool = False, example: str = "fora-50"):
        self.validate, self.several, self.example_method = validate, several, example
        self.name = "method list" if several else "method"

    def parse(self, text: str) -> str:
        return text

    def check(self, value: str, flag: str) -> None:
        try:
            parsed = self.validate(value)  # its own message first: "empty method list ''"
            super().parse(value)
            for text in parsed if isinstance(parsed, list) else [value]:
                _check_method_files(text)
        except (GocError, ValueError, argparse.ArgumentTypeError) as exc:
            raise InvalidArgumentError(f"argument {flag}: {exc}") from None

    def example_text(self) -> str:
        return self.example_method

    def bad_values(self, folder: Path) -> BadValues:
        bad = [("unknown", "no-such-method"), ("empty", ""), ("a dangling +", "fora-50+"),
               ("a control character", "fora-50\n"), ("a missing file inside", f"l2c:router={folder / 'missing'}"),
               ("a folder inside", f"fora-50+tcc:pack={folder}"), ("an option without a value", "fora:interval="),
               ("an option given twice", "fora:interval=2:interval=3"), ("an unknown option", "fora-50+goc:nope=1"),
               ("a yes/no option of another word", "fora-50+tcc:any_alpha=maybe"),
               ("a non-finite option", "fora-50+goc:w=nan")]  # fmt: skip
        return bad + ([("repeated", "none,none"), ("an empty item", "none,,fora-50")] if self.several else [])


def _check_method_files(text: str) -> None:
    """The files a method string names (``l2c:router=PATH``, ``tcc:pack=FILE``: :meth:`CacheMethod.files`) exist
    and are regular files, before anything loads; their contents are read and checked by their loaders."""
    from goc_utils.cache.method import CacheMethod

    try:
        method = CacheMethod.parse(text)
    except GocError:  # another library's cache (diffusers:..., cachedit:...): no files of ours
        return
    for key, path in method.files():
        input_file(path, f"{key} file", f"give an existing file as {key}= in method {shorten(text)!r}")


class NumberList(Kind):
    """Comma-separated numbers (:func:`~goc_utils.lists.number_list`: no empty item, none twice, all finite), each
    ``>= minimum`` (``> minimum`` when ``above``); ``auto`` too when ``auto``. ``read`` turns the text into the list
    (default: ``number_list`` with ``convert``)."""

    name = "number list"

    def __init__(
        self,
        convert: Callable[[str], float],
        what: str,
        example: str,
        minimum: float | None = None,
        above: bool = False,
        auto: bool = False,
        read: Callable[[str], list] | None = None,
    ):
        self.convert, self.what, self.example_list, self.minimum, self.above, self.auto = (
            convert, what, example, minimum, above, auto
        )  # fmt: skip
        self.read = read or (lambda text: number_list(text, convert, what, example))

    def parse(self, text: str) -> list | str:
        if self.auto and text.strip() == "auto":
            return "auto"
        values = self.read(text)
        low = self.minimum
        bad = [v for v in values if low is not None and (v < low or (self.above and v == low))]
        if bad:
            raise argparse.ArgumentTypeError(
                f"{self.what} must be {'>' if self.above else '>='} {low:g} (got {bad[0]:g} in {shorten(text)!r}); "
                f"use e.g. {self.example_list}"
            )
        return values

    def example_text(self) -> str:
        return self.example_list.split(" ")[0]

    def bad_values(self, folder: Path) -> BadValues:
        bad = [("an empty item", "1,,2"), ("repeated", "2,2"), ("empty", ""), ("NaN", "nan"), ("infinite", "1,inf"),
               ("a word", "x")]  # fmt: skip
        if self.minimum is not None:
            below = self.minimum if self.above else self.minimum - 1
            bad.insert(0, ("zero" if below == 0 else "negative", f"2,{self.convert(str(below))}"))
        return bad


class ClassList(Kind):
    """Class ids: ``3,5,7`` or ``0-9`` (:func:`~goc_utils.model.sampler.parse_classes`; a class may repeat), or
    ``all`` when ``everything``. Returns the list of ids (or ``"all"``)."""

    name = "class list"

    def __init__(self, everything: bool = False):
        self.everything = everything

    def parse(self, text: str) -> list[int] | str:
        return "all" if self.everything and text.strip() == "all" else parse_classes(text)

    def example_text(self) -> str:
        return "0,1"

    def bad_values(self, folder: Path) -> BadValues:
        return [("negative", "-3"), ("huge", "0-999999999999"), ("an empty item", "1,,2"), ("empty", ""),
                ("an empty range", "9-0"), ("a word", "cats")]  # fmt: skip


class Items(Kind):
    """A ``what`` (``"stage list"``): comma-separated words (:func:`~goc_utils.lists.split_items`: no empty item;
    none twice), each an ``item`` that is one of ``choices`` or matches ``pattern``, after ``normalize``;
    ``everything`` (``all``) stands for every choice. Returns the list."""

    name = "item list"

    def __init__(
        self,
        what: str,
        item: str,
        example: str,
        choices: Sequence[str] | None = None,
        pattern: str | None = None,
        normalize: Callable[[str], str] = str,
        everything: str | None = None,
    ):
        self.what, self.item, self.example_list, self.choices, self.pattern = what, item, example, choices, pattern
        self.normalize, self.everything = normalize, everything

    def parse(self, text: str) -> list[str]:
        if self.everything is not None and text.strip() == self.everything:
            return list(self.choices or [])
        items = [self.normalize(item) for item in split_items(text, self.what, self.example_list)]
        unknown = [i for i in items if (self.choices is not None and i not in self.choices)
                   or (self.pattern is not None and not re.fullmatch(self.pattern, i))]  # fmt: skip
        if unknown:
            known = f"choose from {', '.join(self.choices)}" if self.choices else f"use e.g. {self.example_list}"
            raise argparse.ArgumentTypeError(f"unknown {self.item}(s) {shorten(', '.join(unknown))}; {known}")
        return refuse_repeats(items, self.what, text, self.example_list)

    def example_text(self) -> str:
        return self.example_list

    def bad_values(self, folder: Path) -> BadValues:
        first = self.example_list.split(",")[0]
        return [("unknown", "nope"), ("repeated", f"{first},{first}"), ("an empty item", f"{first},,{first}"),
                ("empty", "")]  # fmt: skip


class StepRange(Kind):
    """``a:b`` (steps a .. b-1) or ``a:`` (from a on), 0 <= a < b. Returns ``(a, b)``, b None for ``a:``."""

    name = "step range"

    def parse(self, text: str) -> tuple[int, int | None]:
        try:
            start, stop = text.split(":")
            start, stop = plain_int(start or "0"), (plain_int(stop) if stop else None)
        except ValueError:
            raise argparse.ArgumentTypeError(f"malformed step range {shorten(text)!r}; use a:b, e.g. 2:18") from None
        if start < 0 or (stop is not None and stop <= start):
            raise argparse.ArgumentTypeError(f"step range {shorten(text)!r} is empty; use a:b with 0 <= a < b")
        return start, stop

    def example_text(self) -> str:
        return "2:18"

    def bad_values(self, folder: Path) -> BadValues:
        return [("negative", "-1:3"), ("backwards", "5:2"), ("no colon", "3"), ("NaN", "nan:3"), ("empty", "")]


# ----------------------------------------------------------------------------- paths


def _write_example(path: Path, format: str | None) -> Path:
    """A smallest file of ``format`` (what :data:`FORMATS` accepts) at ``path``."""
    if format in ("npz", "torch"):
        zipfile.ZipFile(path, "w").close()
    elif format in ("safetensors", "weights"):
        path.write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    else:
        path.write_text("{}\n")
    return path


FIXTURES = ("FOLDER", "FILE", "FIFO", "DANGLING", "LOOP", "EMPTY", "GARBAGE")
"""What :meth:`Kind.bad_values` of the path kinds name in their folder (:func:`make_fixtures` makes them): a
folder, a file, a FIFO, a symbolic link to nothing, a link loop, an empty file and a file of no known format."""


def make_fixtures(folder: Path) -> None:
    """Make the :data:`FIXTURES` in ``folder`` (once)."""
    if (folder / "FOLDER").exists():
        return
    (folder / "FOLDER").mkdir()
    (folder / "FILE").write_text("a file\n")
    os.mkfifo(folder / "FIFO")
    (folder / "DANGLING").symlink_to(folder / "nowhere")
    (folder / "LOOP").symlink_to(folder / "LOOP")
    (folder / "EMPTY").write_bytes(b"")
    (folder / "GARBAGE").write_bytes(b"garbage, not a file of any format\n")


def _long_path(folder: Path) -> str:
    """A path of 4,500 characters in short names: longer than a path may be (PATH_MAX)."""
    return str(folder.joinpath(*["ab"] * 1500))


def _too_long(path: Path) -> int | None:
    """The length (bytes) of ``path``'s longest name when the file system of its nearest existing folder allows no
    name that long, or of the whole path when no path is that long; None when neither is."""
    folder = path.absolute()
    while not os.path.isdir(folder) and folder != folder.parent:
        folder = folder.parent
    try:
        name_max, path_max = os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    longest = max(len(os.fsencode(part)) for part in path.parts) if path.parts else 0
    whole = len(os.fsencode(path))
    return longest if longest > name_max else whole if whole >= path_max else None


class InputPath(Kind):
    """An existing input: a regular file (``folder=False``) of ``format`` (:data:`FORMATS`, when given), a folder
    (``folder=True``) or either (``folder=None``: a diffusers folder or a weights file). ``holds``: a folder stands
    for that file in it (``OUT/cfg1.5/none`` for its ``samples.npz``). Messages name ``what`` (``"router file"``)
    and end in ``fix``, where ``{flag}`` is the option."""

    def __init__(self, what: str, fix: str, format: str | None = None, folder: bool | None = False,
                 holds: str | None = None):  # fmt: skip
        self.what, self.fix, self.format, self.folder, self.holds = what, fix, format, folder, holds
        self.name = "input folder" if folder else "input file or folder" if folder is None else "input file"
        if format is not None:
            self.name += f" ({format})"

    def check(self, value: str, flag: str) -> None:
        path = Path(value).expanduser()
        fix = self.fix.format(flag=flag)
        if os.path.isdir(path) and self.holds is not None:
            path = path / self.holds
        elif os.path.isdir(path) and self.folder is not False:
            return
        input_file(path, self.what, fix)  # does not exist, a folder, a device or FIFO, a broken link, too long...
        if self.folder:
            raise InvalidArgumentError(f"{self.what} {shorten(path)!r} is a file, not a folder; {fix}")
        if self.format is not None:
            described, starts = FORMATS[self.format]
            with open(path, "rb") as f:
                head = f.read(16)
            if not head:
                raise InvalidArgumentError(f"{self.what} {shorten(path)!r} is empty; {fix}")
            if not starts(head):
                raise InvalidArgumentError(f"{self.what} {shorten(path)!r} is not {described}; {fix}")

    def example_text(self) -> str:
        return "PATH"

    def example(self, folder: Path) -> str:
        if self.folder:
            path = folder / f"example_{self.what.replace(' ', '_')}"
            path.mkdir(exist_ok=True)
            return str(path)
        return str(_write_example(folder / f"example_{self.format or 'file'}", self.format))

    def bad_values(self, folder: Path) -> BadValues:
        made = {name: folder / name for name in FIXTURES}
        bad = [("missing", str(folder / "missing")), ("a device", "/dev/null"), ("a FIFO", str(made["FIFO"])),
               ("under /proc", "/proc/x"), ("name too long", "x" * 300), ("path too long", _long_path(folder)),
               ("empty", ""), ("a link to nothing", str(made["DANGLING"])),
               ("a link loop", str(made["LOOP"]))]  # fmt: skip
        if self.folder is False or self.holds is not None:
            bad.insert(1, ("a folder" if self.holds is None else f"a folder without {self.holds}", str(made["FOLDER"])))
        if self.folder:
            bad.insert(1, ("a file", str(made["FILE"])))
        if self.format is not None:
            bad += [("an empty file", str(made["EMPTY"])), ("another format", str(made["GARBAGE"]))]
        return bad


class Vae(Kind):
    """A VAE: ``ema`` or ``mse`` (sd-vae-ft-*), a local folder, or a hub id ``org/name``."""

    name = "VAE"
    FIX = "pass {flag} ema|mse, a diffusers AutoencoderKL folder or a hub id (org/name)"

    def check(self, value: str, flag: str) -> None:
        hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", value) is not None and not value.startswith(".")
        if value in VAE_HUB_IDS or (hub_id and not os.path.lexists(value)):
            return
        if not os.path.lexists(value) and "/" not in value:
            raise InvalidArgumentError(
                f"VAE {shorten(value)!r} is neither {', '.join(VAE_HUB_IDS)}, a folder nor a hub id; "
                + self.FIX.format(flag=flag)
            )
        InputPath("VAE folder", self.FIX, folder=True).check(value, flag)

    def example_text(self) -> str:
        return "ema"

    def bad_values(self, folder: Path) -> BadValues:
        made = {name: folder / name for name in FIXTURES}
        return [("missing", str(folder / "missing")), ("a file", str(made["FILE"])), ("a device", "/dev/null"),
                ("neither a name nor a folder", "emma"), ("name too long", "x" * 300), ("empty", "")]  # fmt: skip


class OutputPath(Kind):
    """Where a command writes: a file (``folder=False``), a folder (created if missing), or with ``suffixes`` a
    path prefix whose files are ``PREFIX<suffix>`` (``--table figures/05_eval`` -> ``.csv`` and ``.md``).

    :meth:`check` creates nothing: a long name, a broken link, a file where a folder belongs (or the reverse), a
    device and a place where nothing can be written (probed in the nearest existing folder) are one line each.
    """

    def __init__(self, folder: bool = False, suffixes: Sequence[str] = ("",)):
        self.folder, self.suffixes = folder, tuple(suffixes)
        self.name = "output folder" if folder else "output prefix" if suffixes != ("",) else "output file"

    def parse(self, text: str) -> str:
        text = super().parse(text)
        if not self.folder and (text.endswith("/") or Path(text).expanduser().name in ("", ".", "..")):
            what = "a file name prefix, e.g. out/05_eval" if self.suffixes != ("",) else "a file name, e.g. out.png"
            raise argparse.ArgumentTypeError(f"{shorten(text)!r} names a folder, not a file; give {what}")
        return text

    def check(self, value: str, flag: str) -> None:
        for suffix in self.suffixes:
            path = Path(value).expanduser()
            check_output(path.with_name(path.name + suffix) if suffix else path, flag, self.folder)

    def example_text(self) -> str:
        return "out" if self.folder else "out.png"

    def example(self, folder: Path) -> str:
        return str(folder / "new" / self.example_text())

    def bad_values(self, folder: Path) -> BadValues:
        made = {name: folder / name for name in FIXTURES}
        bad = [("unwritable", "/proc/x/out"), ("name too long", "x" * 300), ("path too long", _long_path(folder)),
               ("empty", ""),
               ("under a file", str(made["FILE"] / "out")), ("through a link loop", str(made["LOOP"] / "out")),
               ("through a link to nothing", str(made["DANGLING"] / "out"))]  # fmt: skip
        if self.folder:
            return [("a file", str(made["FILE"])), ("a device", "/dev/null"), *bad]
        folders = [("a folder's slash", f"{made['FOLDER']}/"), ("the current folder", "."), ("the root", "/")]
        if self.suffixes == ("",):
            return [("a folder", str(made["FOLDER"])), ("a device", "/dev/null"), *bad, *folders]
        return bad + folders


def _blocked(path: Path) -> tuple[Path, str] | None:
    """The first of ``path``'s folders (outermost first) and ``path`` itself that is a symbolic link loop, a link to
    nothing or, for a folder, a file, with what it is; None when none is."""
    for part in [*reversed(path.parents), path]:
        problem = link_problem(part)
        if problem is None and part != path and part.exists() and not part.is_dir():
            problem = "is a file, not a folder"
        if problem is not None:
            return part, problem
    return None


def check_output(path: Path, flag: str, folder: bool) -> None:
    """One line (naming ``flag``) unless ``path`` can be written as a file (``folder`` False) or as a folder that
    exists or can be made; nothing is created (:func:`_probe` in the nearest existing folder)."""
    shown, fix = repr(shorten(path)), "give a folder" if folder else "choose another path"
    length = _too_long(path)
    if length is not None:
        raise InvalidArgumentError(
            f"{flag} {shown} has a name of {length:,} characters, longer than the system allows; {fix}"
        )
    blocked = _blocked(path)
    if blocked is not None:
        part, problem = blocked
        raise InvalidArgumentError(f"{flag} {shown}{'' if part == path else f': {shorten(part)!r}'} {problem}; {fix}")
    if folder and path.exists() and not path.is_dir():
        raise InvalidArgumentError(f"{flag} {shown} is a file; give a folder")
    if not folder and path.is_dir():
        raise InvalidArgumentError(f"{flag} {shown} is a folder; give a file name")
    if not folder and path.exists() and not path.is_file():
        raise InvalidArgumentError(f"{flag} {shown} is a device, FIFO or socket, not a file; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise InvalidArgumentError(f"{flag} {shown} is not writable; choose another path")
    target = path if folder else path.parent
    nearest = target
    while not nearest.exists():
        nearest = nearest.parent
    try:
        _probe(nearest)
    except OSError as exc:
        if nearest != target:
            what = "the folder" if folder else "its folder"
            raise InvalidArgumentError(f"{flag} {shown}: cannot create {what} ({exc.strerror})") from None
        raise InvalidArgumentError(f"{flag} {shown} is not writable ({exc.strerror}); choose another") from None


def _probe(folder: Path) -> None:
    """Raise the :class:`OSError` of creating a file in ``folder``, if any: permissions alone do not tell (/proc,
    read-only mounts, root). An unnamed ``O_TMPFILE`` leaves the folder untouched (not even its time); where the
    file system has none, a named file is made and removed at once."""
    try:
        os.close(os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o600))
        return
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
    probe = folder / f".goc-probe.{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


def check_writable(path: Path, flag: str) -> Path:
    """:func:`check_output` for a file; returns the path (``~`` expanded). Nothing is created: its folder is made
    when the file is written (:func:`~goc_utils.files.atomic_write`), so a later refusal leaves nothing behind."""
    path = path.expanduser()
    check_output(path, flag, folder=False)
    return path


def check_output_dir(path: Path, flag: str) -> Path:
    """:func:`check_output` for a folder, then create it; returns the path (``~`` expanded)."""
    path = path.expanduser()
    check_output(path, flag, folder=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidArgumentError(f"{flag} {str(path)!r}: cannot create the folder ({exc.strerror})") from None
    return path


class InputFiles(InputPath):
    """Several input files (``nargs="+"``), each an :class:`InputPath` file, no file twice (also not under
    another name: a link, ``./a`` and ``a``)."""

    def check_action(self, action: argparse.Action, value: list[str]) -> None:
        super().check_action(action, value)
        flag = action.option_strings[0]
        for i, text in enumerate(value):
            twin = next((other for other in value[:i] if os.path.samefile(other, text)), None)
            if twin is not None:
                also = "" if twin == text else f" (also as {shorten(text)!r})"
                raise InvalidArgumentError(f"{flag} lists the file {shorten(twin)!r} twice{also}; give each file once")


def check_together(args: argparse.Namespace, actions: Sequence[argparse.Action]) -> None:
    """The checks of options that depend on each other, run by ``goc``'s ``main`` after each option's own
    :meth:`Kind.check` and before the command, on ``--model``'s DiT built on the meta device (no memory, no
    weights): ``--image-size`` must make a whole number of patches (and of latent cells, for a latent preset), and
    every :class:`Batch` option's images must fit one forward in memory. Before them, for every command: no two
    outputs name one file, and no output is one of the command's input files (:func:`check_distinct_outputs`)."""
    check_distinct_outputs(args, actions)
    model = getattr(args, "model", None)
    if not isinstance(model, str):
        return
    import torch  # only once a command runs

    from goc_utils.files import check_memory
    from goc_utils.model.presets import create_model, forward_bytes_at_least, preset_info

    if getattr(args, "vae", None) is not None and not preset_info(model).latent:
        raise InvalidArgumentError(f"--vae is for latent models; {model} works on pixels and has none: drop --vae")
    size = getattr(args, "image_size", None)
    if size is not None:
        try:
            with torch.device("meta"):
                create_model(model, size)
        except GocError as exc:
            raise InvalidArgumentError(f"argument --image-size: {exc}") from None
    for action in actions:
        value = getattr(args, action.dest, None)
        if isinstance(getattr(action, "kind", None), Batch) and isinstance(value, int):
            cap = getattr(args, action.kind.capped_by, None) if action.kind.capped_by else None
            images = min(value, cap) if isinstance(cap, int) else value
            flag = action.option_strings[0]
            check_memory(forward_bytes_at_least(model, size, images), f"{flag} {value:,}", f"choose a smaller {flag}")


def _paths(args: argparse.Namespace, actions: Sequence[argparse.Action], kind: type) -> list[tuple[str, Path]]:
    """``(flag, resolved path)`` of every value of the options of ``kind`` (an output prefix: each of its files)."""
    found = []
    for action in actions:
        value = getattr(args, action.dest, None)
        if not isinstance(getattr(action, "kind", None), kind) or value is None:
            continue
        flag = action.option_strings[0] if action.option_strings else action.dest
        suffixes = action.kind.suffixes if kind is OutputPath else ("",)
        for text in _values(value):
            found += [(flag, Path(f"{text}{suffix}").expanduser().resolve()) for suffix in suffixes]
    return found


def check_distinct_outputs(args: argparse.Namespace, actions: Sequence[argparse.Action]) -> None:
    """One line when two outputs of a command name one file (``sample --out x.png --save-npz x.png``: the second
    write would replace the first) or an output is one of its input files (which the command would overwrite)."""
    written: dict[Path, str] = {}
    for flag, path in _paths(args, actions, OutputPath):
        if path in written and written[path] != flag:
            raise InvalidArgumentError(f"{written[path]} and {flag} both name {shorten(path)!r}; give each its own")
        written[path] = flag
    for flag, path in _paths(args, actions, InputPath):
        if path in written:
            raise InvalidArgumentError(
                f"{written[path]} {shorten(path)!r} is the file that {flag} reads: writing it would replace the input; "
                f"choose another {written[path]}"
            )


class _Once:
    """An option given a second time is refused (argparse would keep the last value silently): ``--steps 4 ...
    --steps 5``, ``--x --no-x``. ``action="append"`` options (``--pair A B --pair C D``) are given repeatedly by
    design and do not take this."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = getattr(parser, GIVEN, None)
        if given is not None:
            if self.dest in given:
                first = given[self.dest]
                again = "" if first == option_string else f" (as {first}, then as {option_string})"
                raise argparse.ArgumentError(self, f"given twice{again}; give it once")
            given[self.dest] = option_string
        super().__call__(parser, namespace, values, option_string)


_ONCE_CLASSES: dict[type, type] = {}


def _given_once(action: argparse.Action) -> None:
    if isinstance(action, argparse._AppendAction) or not action.option_strings:
        return
    cls = type(action)
    if cls not in _ONCE_CLASSES:
        _ONCE_CLASSES[cls] = type(cls.__name__, (_Once, cls), {"__doc__": cls.__doc__})
    action.__class__ = _ONCE_CLASSES[cls]


def add_option(container, name: str, kind: Kind, **kwargs) -> argparse.Action:
    """``container.add_argument(name, **kwargs)`` with its ``kind`` declared: what argparse needs to apply it
    (``type``, ``choices`` or ``action``) and the action's ``kind`` attribute, which ``goc``'s ``main`` checks
    before the command runs and the tests enumerate. The option is taken once: given twice, it is refused
    (:class:`_Once`), except an ``append`` option."""
    action = container.add_argument(name, **kind.argparse_kwargs(), **kwargs)
    action.kind = kind
    _given_once(action)
    return action
