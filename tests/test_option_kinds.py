"""Every option of every ``goc`` command declares its kind (:mod:`goc_utils.cli.kinds`), and bad values generated
from that kind (negative, zero, huge, NaN, infinite, empty, a folder where a file belongs, a missing file, a device,
an unwritable path, a name too long, a repeated item or file, the option itself given twice, ...) are refused
before any work: exit status 2, exactly one line on stderr naming the option, nothing written.

The fast part tries the first two bad values of every option; the slow part every bad value, and checks that no
committed output (``data/``, ``figures/``) changed. An option added without a kind fails
:func:`test_every_option_declares_its_kind`, and from then on is tried like the others.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from goc_utils import cli, paths
from goc_utils.cli import kinds

DRY = Path("/fixtures")
"""Where bad values are listed for the test ids (nothing is made there); the tests use a real folder."""


def commands(parser: argparse.ArgumentParser | None = None) -> dict[str, argparse.ArgumentParser]:
    parser = parser or cli.build_parser()
    return dict(parser._subparsers._group_actions[0].choices)


def options(command: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in command._actions if not isinstance(a, argparse._HelpAction)]


def flag(action: argparse.Action) -> str:
    return action.option_strings[0] if action.option_strings else action.dest


def undeclared(parser: argparse.ArgumentParser) -> list[str]:
    """``"command option"`` of every option without a kind."""
    return [
        f"{name} {flag(action)}"
        for name, command in commands(parser).items()
        for action in options(command)
        if not isinstance(getattr(action, "kind", None), kinds.Kind)
    ]


COMMANDS = commands()
OPTIONS = [
    (name, action) for name, command in COMMANDS.items() for action in options(command) if hasattr(action, "kind")
]


TWICE = "given twice"
"""The option given a second time, with a valid value (argparse would keep the last one silently)."""


def labels(action: argparse.Action, every: bool) -> list[str]:
    """The bad values tried on ``action``: the first two of its kind, or ``every`` one; a file given twice to an
    option taking several; and the option given twice (every option but positionals and ``append`` ones)."""
    found = [label for label, _ in action.kind.bad_values(DRY)]
    twice = action.option_strings and not isinstance(action, argparse._AppendAction)
    return (
        (found if every else found[:2])
        + (["a file twice in the list"] if action.nargs == "+" else [])
        + ([TWICE] if twice else [])
    )


def cases(every: bool) -> list:
    """``(command, option, bad value's label)`` of every option."""
    return [
        pytest.param(name, action.dest, label, id=f"{name} {flag(action)} {label}")
        for name, action in OPTIONS
        for label in labels(action, every)
    ]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fixtures")
    kinds.make_fixtures(folder)
    return folder


def _refuse_to_run(args: argparse.Namespace) -> int:
    print(f"goc {args.command}: ran although every option was checked and one was bad")
    return 0


@pytest.fixture
def guarded(monkeypatch):
    """``goc``'s parser with every command's work replaced by :func:`_refuse_to_run`: an accepted bad value shows
    as exit status 0, and no command runs."""
    build = cli.build_parser

    def build_guarded(names=None):
        parser = build(names)
        for command in commands(parser).values():
            command.set_defaults(func=_refuse_to_run)
        return parser

    monkeypatch.setattr(cli, "build_parser", build_guarded)


def _value(action: argparse.Action, text: str | None, fixtures: Path) -> list[str]:
    """The arguments giving ``action`` the value ``text`` (None: its kind's example)."""
    kind = action.kind
    if isinstance(kind, kinds.Flag):
        return [action.option_strings[0] if text is None else f"{action.option_strings[0]}={text}"]
    text = kind.example(fixtures) if text is None else text
    if not action.option_strings:
        return [text]
    if isinstance(action.nargs, int):
        return [action.option_strings[0], text, *[kind.example(fixtures)] * (action.nargs - 1)]
    return [f"{action.option_strings[0]}={text}"]


def argv(name: str, dest: str, label: str, fixtures: Path) -> list[str]:
    """``goc name``, its required arguments valid (kinds' examples) and the option ``dest`` bad as ``label`` says."""
    command = COMMANDS[name]
    action = next(a for a in options(command) if a.dest == dest)
    if label == "a file twice in the list":
        bad = [action.option_strings[0], *[action.kind.example(fixtures)] * 2]
    elif label == TWICE:
        bad = _value(action, None, fixtures) * 2
    else:
        bad = _value(action, dict(action.kind.bad_values(fixtures))[label], fixtures)
    words = [name]
    for other in options(command):
        if other is action and not other.option_strings:
            words += bad
        elif other is not action and (other.required or not other.option_strings):
            words += _value(other, None, fixtures)
    return words + (bad if action.option_strings else [])


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.lstat().st_mtime_ns, p.lstat().st_size) for p in sorted(folder.rglob("*"))}


def refused(words: list[str], flag_name: str, work: Path, fixtures: Path, capsys, monkeypatch) -> None:
    """``goc words`` run in ``work``: exit status 2, one stderr line naming ``flag_name``, nothing written."""
    monkeypatch.chdir(work)
    before = _snapshot(fixtures)
    try:
        code = cli.main(words)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    shown = f"goc {' '.join(words)!r}"
    assert code == 2, f"{shown} was accepted (exit {code}): {out}{err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"{shown}: not one line on stderr: {err!r}"
    assert flag_name.lower() in lines[0].lower(), f"{shown}: the error does not name {flag_name}: {lines[0]}"
    assert list(work.iterdir()) == [], f"{shown} wrote {list(work.iterdir())}"
    assert _snapshot(fixtures) == before, f"{shown} changed the fixtures"


def test_every_option_declares_its_kind():
    assert undeclared(cli.build_parser()) == [], "options without a kind (declare one with kinds.add_option)"


def test_an_option_without_a_kind_is_found():
    """The check is not vacuous: a plain ``add_argument`` is reported."""
    parser = cli.build_parser(["info"])
    commands(parser)["info"].add_argument("--new-option", type=int)
    assert undeclared(parser) == ["info --new-option"]


def test_every_kind_has_bad_values_and_accepts_its_example(fixtures):
    for name, action in OPTIONS:
        kind = action.kind
        assert kind.bad_values(fixtures), f"{name} {flag(action)}: its kind {kind.name} lists no bad value"
        if not isinstance(kind, (kinds.Flag, kinds.Choice)):
            example = kind.example(fixtures)
            kind.check(kind(example), flag(action))  # raises on a refusal


@pytest.mark.parametrize("name", COMMANDS)
def test_the_valid_arguments_pass_every_check_and_write_nothing(name, fixtures, tmp_path, capsys, monkeypatch, guarded):
    monkeypatch.chdir(tmp_path)
    required = [a for a in options(COMMANDS[name]) if a.required or not a.option_strings]
    words = [name] + [w for a in required for w in _value(a, None, fixtures)]
    assert cli.main(words) == 0, capsys.readouterr().err
    assert "ran although" in capsys.readouterr().out and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, dest, label", cases(every=False))
def test_a_bad_value_is_refused_in_one_line(name, dest, label, fixtures, tmp_path, capsys, monkeypatch, guarded):
    action = next(a for a in options(COMMANDS[name]) if a.dest == dest)
    refused(argv(name, dest, label, fixtures), flag(action), tmp_path, fixtures, capsys, monkeypatch)


COMMITTED = (paths.DATA_DIR, paths.PROJECT_ROOT / "figures")
"""Where the commands write by default: no bad value may touch them."""


@pytest.mark.slow
@pytest.mark.parametrize("name, option", [(n, a.dest) for n, a in OPTIONS], ids=[f"{n} {flag(a)}" for n, a in OPTIONS])
def test_every_bad_value_of_every_option_is_refused(name, option, fixtures, tmp_path, capsys, monkeypatch, guarded):
    before = {folder: _snapshot(folder) for folder in COMMITTED}
    action = next(a for a in options(COMMANDS[name]) if a.dest == option)
    for i, label in enumerate(labels(action, every=True)):
        work = tmp_path / str(i)
        work.mkdir()
        refused(argv(name, option, label, fixtures), flag(action), work, fixtures, capsys, monkeypatch)
    assert {folder: _snapshot(folder) for folder in COMMITTED} == before, "a bad value changed data/ or figures/"


def test_case_counts():
    """The fast part tries two bad values of each option; the slow part every one."""
    fast, slow = len(cases(every=False)), len(cases(every=True))
    twice = sum(TWICE in labels(a, every=False) for _, a in OPTIONS)
    assert len(OPTIONS) >= 200 and twice >= len(OPTIONS) - 20, (len(OPTIONS), twice)
    assert fast >= 3 * len(OPTIONS) - 40 and slow > 2.5 * fast, (len(OPTIONS), fast, slow)


SIZED = [name for name, command in COMMANDS.items() if {"model", "image_size"} <= {a.dest for a in options(command)}]
"""The commands that take a preset and an image size, which are checked together (``kinds.check_together``)."""


@pytest.mark.parametrize("name", SIZED)
def test_an_image_size_the_preset_cannot_make_is_refused_first(name, fixtures, tmp_path, capsys, monkeypatch, guarded):
    """An odd size is a whole number of patches of no preset (DiT's patch is 2 pixels or latent cells)."""
    command = COMMANDS[name]
    required = [a for a in options(command) if (a.required or not a.option_strings) and a.dest != "image_size"]
    words = [name, *[w for a in required for w in _value(a, None, fixtures)], "--image-size", "9"]
    refused(words, "--image-size", tmp_path, fixtures, capsys, monkeypatch)
    assert len(SIZED) >= 8, SIZED
