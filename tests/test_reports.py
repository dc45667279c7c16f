"""The results reports (figures/README.md, figures/tiny-digits/README.md): regenerated from the committed CSVs they
are the committed bytes, a missing CSV drops its section, every number sits under a marker naming the CSVs that hold
it, and ``goc report`` writes (or checks) the report of the folder it is given. Reads committed CSVs only; never
writes into figures/."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import pytest

from goc_utils import paths
from goc_utils.cli import main
from goc_utils.errors import InvalidArgumentError
from goc_utils.study.report import REPORT_NAME, TIERS, build_report

MARKER = re.compile(r"<!-- numbers: (.+) -->")
NUMBER = re.compile(r"(?<![\w.])[-+]?(\d+(?:\.\d+)?)(?:x|%| ?dB)?(?!\w|\.\d)")
"""A number as a report writes it: sign, digits, decimals, unit (``+11.32 dB``, ``1.318x``, ``90.7%``); the digits
of names (``F1B0``, ``32x32``) are no numbers, those of ``fora-50`` are (and are in its CSV cell too)."""
NAMES = re.compile(r"`[^`]*`|\]\([^)]*\)")
"""Code spans (method strings, file names) and link targets: names, not numbers."""


def numbers(text: str) -> list[str]:
    """The numbers of a markdown text outside code spans and link targets, sign and unit stripped."""
    return NUMBER.findall(NAMES.sub(" ", text))


def csv_numbers(names: list[str]) -> set[str]:
    """Every number that occurs in a cell of the CSVs ``names`` (paths from the repository root)."""
    found: set[str] = set()
    for name in names:
        with (paths.PROJECT_ROOT / name).open(newline="") as handle:
            found.update(n for row in csv.reader(list(handle)[1:]) for cell in row for n in NUMBER.findall(cell))
    return found


def number_problems(report: str) -> list[str]:
    """What breaks the numbers convention: a table without a marker right above it, a block with numbers but no
    marker, a marker naming a CSV that does not exist, a number that none of the marker's CSVs holds."""
    problems = []
    for block in report.split("\n\n"):
        first, _, rest = block.partition("\n")
        marker = MARKER.fullmatch(first)
        content = rest if marker else block
        if marker is None:
            if content.startswith("|"):
                problems.append(f"table without a numbers marker: {content[:60]!r}")
            if numbers(content):
                problems.append(f"numbers {numbers(content)} without a marker: {content[:60]!r}")
            continue
        names = [name.strip() for name in marker.group(1).split(",")]
        missing = [name for name in names if not (paths.PROJECT_ROOT / name).is_file()]
        if missing:
            problems.append(f"marker names missing CSVs {missing}")
            continue
        allowed = csv_numbers(names)
        problems += [f"{n} is in none of {names}: {content[:60]!r}" for n in numbers(content) if n not in allowed]
    return problems


def figures_copy(model: str, tmp_path: Path) -> Path:
    """A copy of the committed figures folder of ``model`` (without the other models' folders inside it)."""

    def folders(folder: str, names: list[str]) -> list[str]:
        return [name for name in names if (Path(folder) / name).is_dir()]

    return Path(shutil.copytree(paths.model_figures_dir(model), tmp_path / "figures", ignore=folders))


@pytest.mark.parametrize("model", list(TIERS))
def test_the_committed_report_is_what_its_csvs_give(model):
    committed = paths.model_figures_dir(model) / REPORT_NAME
    assert build_report(model) == committed.read_text(), f"{committed} is stale: run `make report`"


@pytest.mark.parametrize("model", list(TIERS))
def test_every_number_of_a_report_is_in_the_csvs_its_marker_names(model):
    report = build_report(model)
    assert report.count("<!-- numbers: ") >= 10 and number_problems(report) == []
    assert numbers("FID 35.05 (1.48) at `fora-50+goc` ([`05_eval.md`](05_eval.md)), 32x32, F1B0") == ["35.05", "1.48"]


def test_the_numbers_check_catches_a_changed_number_and_a_missing_marker():
    report = build_report("tiny-fashion")
    assert "| +11.32 dB (0.07) |" in report
    changed = report.replace("| +11.32 dB (0.07) |", "| +11.33 dB (0.07) |")
    problems = number_problems(changed)
    assert len(problems) == 1 and problems[0].startswith("11.33 is in none of ['figures/05_verdicts.csv'")
    unmarked = report.replace("<!-- numbers: figures/05_eval.csv, figures/00_tcc_packs.csv -->\n", "")
    assert any(p.startswith("table without a numbers marker") for p in number_problems(unmarked))
    prose = report.replace("alone takes seconds", "alone takes 3 s")  # a number in a paragraph without a marker
    assert any(p.startswith("numbers ['3'] without a marker") for p in number_problems(prose))
    wrong = report.replace("<!-- numbers: figures/07_verdicts.csv -->", "<!-- numbers: figures/05_eval.csv -->")
    assert any("is in none of ['figures/05_eval.csv']" in p for p in number_problems(wrong))


def test_a_missing_csv_drops_its_section(tmp_path):
    folder = figures_copy("tiny-fashion", tmp_path)
    full = build_report("tiny-fashion", folder)
    assert full == build_report("tiny-fashion")  # the copy gives the committed bytes: markers name committed CSVs
    assert "### The peers' paired verdicts" in full and "## The main comparisons" in full
    (folder / "07_verdicts.csv").unlink()
    without = build_report("tiny-fashion", folder)
    assert "### The peers' paired verdicts" not in without and "figures/07_verdicts.csv" not in without
    assert "## The peers table" in without and "## The main comparisons" in without
    (folder / "05_verdicts.csv").unlink()
    assert "The paired spread" not in build_report("tiny-fashion", folder)
    (folder / "07_verdicts.csv").write_bytes((paths.FIGURES_DIR / "07_verdicts.csv").read_bytes())
    peers_only = build_report("tiny-fashion", folder)  # the definition of the paired spread moves to the peers
    assert "## The main comparisons" not in peers_only
    assert peers_only.index("The paired spread") > peers_only.index("### The peers' paired verdicts")
    for name in ("08_weight_sweep", "08_inflections", "08_cache_ratio", "08_replay_vs_measured"):
        (folder / f"{name}.csv").unlink()
    assert "## The ablations" not in build_report("tiny-fashion", folder)
    for csv_file in folder.glob("*.csv"):
        csv_file.unlink()
    with pytest.raises(InvalidArgumentError, match="holds none of the result tables of a report"):
        build_report("tiny-fashion", folder)


def test_the_tiny_digits_report_has_its_own_tables_and_no_verdicts():
    report = build_report("tiny-digits")
    assert "figures/tiny-digits/05_eval_tiny.csv" in report and "figures/tiny-digits/04_methods.csv" in report
    assert "verdicts" not in report and "The paired spread" not in report
    assert "make eval-tiny" in report and "make fashion-report" not in report
    assert "| cache-dit dbcache F1B0 threshold=0.17 warmup=4 +foca | 1.842x | 13.46 (1.41) | 42.1 dB |" in report


def test_goc_report_writes_and_checks_the_report_of_the_folder_it_is_given(tmp_path, capsys, monkeypatch):
    committed = (paths.model_figures_dir("tiny-digits") / REPORT_NAME).read_bytes()
    folder = figures_copy("tiny-digits", tmp_path)
    (folder / REPORT_NAME).unlink()
    assert main(["report", "--model", "tiny-digits", "--figures-dir", str(folder), "--check"]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["report", "--model", "tiny-digits", "--figures-dir", str(folder)]) == 0
    assert (folder / REPORT_NAME).read_bytes() == committed
    assert main(["report", "--model", "tiny-digits", "--figures-dir", str(folder), "--check"]) == 0
    eval_csv = folder / "05_eval_tiny.csv"
    eval_csv.write_text(eval_csv.read_text().replace("14.46", "14.47"))
    assert main(["report", "--model", "tiny-digits", "--figures-dir", str(folder), "--check"]) == 1
    assert "differs from what its CSVs give; run `make report`" in capsys.readouterr().err
    monkeypatch.setenv("GOC_FIGURES_DIR", str(folder))  # the default folder follows the study's figures
    assert main(["report", "--model", "tiny-digits"]) == 0
    assert "14.47 (1.45)" in (folder / REPORT_NAME).read_text()
    assert (paths.model_figures_dir("tiny-digits") / REPORT_NAME).read_bytes() == committed
    assert main(["report", "--model", "tiny-digits", "--figures-dir", str(tmp_path / "empty")]) == 2
    assert "holds none of the result tables" in capsys.readouterr().err


def test_the_report_never_links_this_machines_timings(tmp_path):
    """Notebook 05 writes its latency table beside the figures, git-ignored: a report that linked it would differ
    between a machine that ran `make study` and a fresh clone, and link a file the clone lacks."""
    folder = figures_copy("tiny-fashion", tmp_path)
    (folder / "05_fid_table_latency.md").write_text("| method | latency |\n|---|---|\n| none | 0.1 s |\n")
    assert build_report("tiny-fashion", folder) == build_report("tiny-fashion")
