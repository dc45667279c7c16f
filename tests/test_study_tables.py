"""Where the study's committed tables live per model, and how notebooks 05 / 07 / 08 find them and their samples."""

from __future__ import annotations

import pytest

from goc_utils import paths
from goc_utils.errors import InvalidArgumentError
from goc_utils.study.nb05_fid_tables import committed_rows, default_samples_dir
from goc_utils.study.nb07_diffusers import peers_rows


def test_each_model_reads_its_own_committed_peers_table(tmp_path, capsys):
    tiny = peers_rows("tiny-digits")  # figures/tiny-digits/07_diffusers_peers.csv
    assert len(tiny) == 34 and {"fora-50+goc", "l2c+goc"} <= {r["method"] for r in tiny}
    assert peers_rows("DiT-XL/2") == [] and "no peers table for DiT-XL/2" in capsys.readouterr().out
    with pytest.raises(InvalidArgumentError, match="does not exist yet; make it with `make peers`"):
        peers_rows("tiny-fashion", tmp_path / "07_diffusers_peers.csv")


def test_committed_rows_and_the_samples_folders_of_other_counts(capsys):
    rows = committed_rows("tiny-digits", "05_eval_tiny")
    assert {r["cfg_scale"] for r in rows} == {"1.5", "4"} and rows[0]["method"] == "none"
    verdicts = committed_rows("tiny-fashion", "05_verdicts")  # text columns (method strings) kept as written
    assert ("fora-50+goc", "fora-50") in {(r["A"], r["B"]) for r in verdicts}
    assert committed_rows("DiT-XL/2", "05_verdicts") == [] and "no 05_verdicts table" in capsys.readouterr().out
    assert default_samples_dir("tiny-fashion", 2000) == paths.RUNS_DIR / "eval" / "tiny-fashion"  # make eval's
    assert default_samples_dir("tiny-fashion", 500) == paths.RUNS_DIR / "eval" / "tiny-fashion-n500"
    assert default_samples_dir("DiT-XL/2", 50000) == paths.RUNS_DIR / "eval" / "DiT-XL-2-n50000"
