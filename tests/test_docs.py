"""The front door stays open: README.md and docs/ within their limits, links and anchors that resolve inside the
repository, commands that parse against the current CLI and Makefile, and no result number that its source does not
hold (every quoted number is checked against the files its `<!-- numbers: ... -->` marker names)."""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
from pathlib import Path

import pytest

from goc_utils.cli import COMMANDS, build_parser
from goc_utils.paths import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
DOCS = sorted((PROJECT_ROOT / "docs").glob("*.md"))
REPORTS = [PROJECT_ROOT / "figures" / "README.md", PROJECT_ROOT / "figures" / "tiny-digits" / "README.md"]
PAGES = [README, *DOCS, *[p for p in REPORTS if p.exists()]]
WRITTEN = [README, *DOCS]  # pages written by hand (the reports are generated)

MARKER = re.compile(r"^<!-- numbers: (.+?) -->\s*$")
DECIMAL = re.compile(r"(?<![\w.])[-+]?\d+(?:,\d{3})*\.\d+(?![\w.])")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.S | re.M)


def rel(path: Path) -> str:
    return str(path.relative_to(PROJECT_ROOT))


def without_code(text: str) -> str:
    """The text without fenced blocks, inline code spans and link targets (settings and paths, not results)."""
    text = FENCE.sub("", text)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.sub(r"\]\([^)]*\)", "]", text)


def decimals(text: str) -> list[str]:
    """Decimal numbers as written, without sign or thousands separators: '+11.32' -> '11.32', '2,000.5' -> '2000.5'."""
    return [token.lstrip("+-").replace(",", "") for token in DECIMAL.findall(text)]


# ----------------------------------------------------------------------------- limits


def test_the_readme_is_read_in_five_minutes():
    text = README.read_text()
    assert len(text.splitlines()) <= 150, "README.md has more than 150 lines: move the detail to docs/"
    assert len(text.split()) <= 1500, "README.md has more than 1,500 words: move the detail to docs/"


@pytest.mark.parametrize("page", DOCS, ids=rel)
def test_every_docs_page_holds_one_concern(page):
    assert len(page.read_text().splitlines()) <= 200, f"{rel(page)} has more than 200 lines: split it"


def test_goc_on_dit_xl2_is_a_complete_command_within_the_first_60_lines():
    head = "\n".join(README.read_text().splitlines()[:60])
    commands = [argv for c in fenced_commands(head) if (argv := goc_arguments(c)) and argv[0] == "sample"]
    methods = {c[c.index("--method") + 1] for c in commands if "--method" in c and "DiT-XL/2" in c}
    assert {"fora-50+goc", "l2c+goc"} <= methods, methods
    for argv in commands:
        parse_goc(argv)
        assert (
            "--ckpt" in argv and "--vae" in argv and "--router" in argv or "l2c" not in argv[argv.index("--method") + 1]
        )


def test_every_docs_page_is_in_the_readmes_map():
    readme = README.read_text()
    assert [p for p in DOCS if f"(docs/{p.name})" not in readme] == []


# ----------------------------------------------------------------------------- links and anchors


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", page.read_text()), re.M):
        base, n = slug(heading), 0
        while (name := base if n == 0 else f"{base}-{n}") in found:
            n += 1
        found.add(name)
    return found


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_relative_link_and_anchor_resolves_inside_the_repository(page):
    text = FENCE.sub("", page.read_text())
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not ours to check here
            continue
        path_part, _, anchor = target.partition("#")
        path = (page.parent / path_part).resolve() if path_part else page
        if not path.is_relative_to(PROJECT_ROOT):
            broken.append(f"{target} leaves the repository")
        elif not path.exists():
            broken.append(f"{target} does not exist")
        elif anchor and (path.suffix != ".md" or anchor not in anchors(path)):
            broken.append(f"{target}: no heading #{anchor} in {rel(path)}")
    assert broken == []


@pytest.mark.parametrize("page", WRITTEN, ids=rel)
def test_no_page_points_outside_the_repository(page):
    text = page.read_text()
    assert "../shared" not in text and "REFERENCE.md" not in text and "/tmp/" not in text


def test_the_link_checker_catches_broken_links_and_anchors(tmp_path, monkeypatch):
    assert slug("Priors for `goc:auto`") == "priors-for-gocauto"
    assert slug("The `goc` command and the method-string grammar") == "the-goc-command-and-the-method-string-grammar"
    assert "design" not in anchors(PROJECT_ROOT / "docs" / "design.md")  # only headings are anchors


# ----------------------------------------------------------------------------- commands


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([a-zA-Z][\w-]*):", (PROJECT_ROOT / "Makefile").read_text(), re.M))


def fenced_commands(text: str) -> list[list[str]]:
    """Shell commands of the fenced bash / sh / plain blocks, continuation lines joined, comments dropped."""
    commands = []
    for lang, body in FENCE.findall(text):
        if lang not in ("", "bash", "sh", "shell", "console"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "$":
                words = words[1:]
            if words:
                commands.append(words)
    return commands


def goc_arguments(words: list[str]) -> list[str] | None:
    """The goc arguments of a shell command (`goc`, `.venv/bin/goc`, `torchrun ... -m goc_utils.cli`), else None."""
    if Path(words[0]).name == "goc":
        return words[1:]
    if words[0] in ("torchrun", "python", "python3") or Path(words[0]).name.startswith("python"):
        if "-m" in words and words[words.index("-m") + 1] == "goc_utils.cli":
            return words[words.index("-m") + 2 :]
    return None


def parse_goc(argv: list[str]) -> None:
    assert argv and argv[0] in COMMANDS, f"goc {' '.join(argv)}: unknown command"
    try:
        build_parser([argv[0]]).parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"goc {shlex.join(argv)} does not parse (exit {exc.code})")


def inline_commands(text: str) -> list[str]:
    return re.findall(r"`((?:\.venv/bin/)?(?:goc|make) [^`]+)`", FENCE.sub("", text))


def check_flags(span: str) -> None:
    """A command mentioned in prose (often a fragment): its command exists and takes every flag it shows."""
    words = span.replace("\\|", "|").split()
    if words[1] in ("--help", "-h") or words[1].isupper():
        return
    assert words[1] in COMMANDS, f"`{span}`: goc has no command {words[1]}"
    sub = build_parser([words[1]])._subparsers._group_actions[0].choices[words[1]]
    options = {o for action in sub._actions for o in action.option_strings}
    flags = {w.split("=")[0].strip("[]") for w in words[2:] if w.lstrip("[").startswith("--")}
    assert flags <= options, f"`{span}`: goc {words[1]} has no {sorted(flags - options)}"


@pytest.mark.parametrize("page", WRITTEN, ids=rel)
def test_every_written_command_parses_against_the_cli_and_the_makefile(page, capsys):
    text = page.read_text()
    targets = makefile_targets()
    for words in fenced_commands(text):
        if (argv := goc_arguments(words)) is not None:
            parse_goc(argv)
        elif words[0] == "make":
            assert set(words[1:]) <= targets, f"{shlex.join(words)}: not a Makefile target"
    for span in inline_commands(text):
        words = span.split()
        if Path(words[0]).name == "make":
            assert all(w in targets for w in words[1:] if re.fullmatch(r"[a-z][\w-]*", w)), span
        elif words[1] != "...":
            check_flags(span)


def test_the_command_checker_refuses_what_does_not_parse():
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        parse_goc(["sample", "--no-such-flag"])
    with pytest.raises(AssertionError, match="unknown command"):
        parse_goc(["smaple"])
    assert fenced_commands("```bash\ngoc sample --model a \\\n    --steps 4  # comment\n```\n") == [
        ["goc", "sample", "--model", "a", "--steps", "4"]
    ]


# ----------------------------------------------------------------------------- numbers


def source_rows(path: Path) -> list[list[str]]:
    """Rows of a CSV file, the leaf values of a JSON file, or the markdown tables of any other text file."""
    text = path.read_text()
    if path.suffix == ".csv":
        return list(csv.reader(io.StringIO(text)))
    if path.suffix == ".json":  # a benchmark's record: every leaf value a one-cell row
        return [[str(leaf)] for leaf in json_leaves(json.loads(text))]
    return [
        [c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("|")
    ]


def json_leaves(value) -> list:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in json_leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in json_leaves(v)]
    return [value]


def marked_blocks(page: Path) -> list[tuple[list[Path], str]]:
    """(sources, block) for every `<!-- numbers: ... -->` marker: the lines up to the next blank line."""
    lines = page.read_text().splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if found := MARKER.match(line):
            sources = [PROJECT_ROOT / s.strip() for s in found.group(1).split(",")]
            block = []
            for following in lines[i + 1 :]:
                if not following.strip():
                    break
                block.append(following)
            blocks.append((sources, "\n".join(block)))
    return blocks


def unmatched_numbers(sources: list[Path], block: str) -> list[str]:
    """The numbers of a block that its sources do not hold. A table row that names a method of its sources (its
    first cell is a source row's first cell, or that method's host: `fora-50` names `fora-50+goc` too) is checked
    against the cells of the rows it names only."""
    rows = [row for source in sources for row in source_rows(source)]
    everywhere = {n for row in rows for cell in row for n in decimals(cell) + [cell.replace(",", "")]}
    missing = []
    lines = block.splitlines()
    for i, line in enumerate(lines):
        if re.fullmatch(r"\|[-:| ]+\|", line.strip()):
            continue
        header = i + 1 < len(lines) and re.fullmatch(r"\|[-:| ]+\|", lines[i + 1].strip())
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") and not header else []
        key = cells[0].strip("`* ") if cells else None
        named = [
            row for row in rows if key and row and re.fullmatch(re.escape(key) + r"([+:].*)?", row[0].strip("`* "))
        ]
        allowed = {n for row in named for cell in row for n in decimals(cell) + [cell.replace(",", "")]} or everywhere
        missing += [f"{n} ({line.strip()[:60]})" for n in decimals(without_code(line)) if n not in allowed]
    return missing


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_quoted_number_is_found_in_its_source(page):
    problems = []
    for sources, block in marked_blocks(page):
        absent = [rel(s) if s.is_relative_to(PROJECT_ROOT) else str(s) for s in sources if not s.is_file()]
        problems += [f"marker names {a}, which does not exist" for a in absent]
        if not absent:
            problems += unmatched_numbers(sources, block)
    assert problems == []


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_no_result_table_is_copied_by_hand(page):
    """A table with a decimal number outside code spans must name its source with a numbers marker."""
    lines = page.read_text().splitlines()
    unmarked = []
    for i, line in enumerate(lines):
        starts_table = line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|"))
        if not starts_table:
            continue
        table = []
        for following in lines[i:]:
            if not following.startswith("|"):
                break
            table.append(following)
        marked = i > 0 and MARKER.match(lines[i - 1])
        if decimals(without_code("\n".join(table))) and not marked:
            unmarked.append(f"line {i + 1}: {line[:60]}")
    assert unmarked == []


def test_the_number_checker_catches_a_copied_number_that_drifted(tmp_path):
    source = tmp_path / "t.csv"
    source.write_text("method,fid,psnr\nfora-50,36.95,34.9\nfora-50+goc,35.05,46.2\n")
    assert unmatched_numbers([source], "| `fora-50` | 36.95 | 34.9 dB |") == []
    assert unmatched_numbers([source], "| `fora-50` | 36.96 | 34.9 dB |") == ["36.96 (| `fora-50` | 36.96 | 34.9 dB |)"]
    # a number of another row is refused where the row names its method
    assert unmatched_numbers([source], "| `fora-50+goc` | 36.95 | 46.2 dB |") == [
        "36.95 (| `fora-50+goc` | 36.95 | 46.2 dB |)"
    ]
    assert unmatched_numbers([source], "| `fora-50` | 35.05 | 34.9 dB |") == []  # a host's row may show its methods
    assert unmatched_numbers([source], "GOC gains 46.2 dB against 34.9 dB.") == []
    assert unmatched_numbers([source], "GOC gains +11.3 dB.") == ["11.3 (GOC gains +11.3 dB.)"]
