"""Refusals come before the work: sizes that cannot fit are refused before any weights load, files named inside
method strings are checked with the other paths, and a refused ``eval`` / ``eval-sample`` leaves no folder."""

from __future__ import annotations

import pytest

from goc_utils.cli import main
from goc_utils.errors import InvalidArgumentError
from goc_utils.files import exclusive_lock
from tests.conftest import run_bad_input


@pytest.fixture
def no_loading(monkeypatch):
    """Loading weights fails the test: what these refusals need is known without them."""

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the refusal")

    for module in ("goc_utils.cli.sample", "goc_utils.cli.evaluate"):
        monkeypatch.setattr(f"{module}.load_model", refuse)


BEFORE_LOADING = [
    (["sample", "--model", "tiny-fashion", "--per-class", "100000000", "--out", "OUT/g.png"],
     "--per-class 100000000 (1,000,000,000 images) would need"),
    (["sample", "--model", "DiT-XL/2", "--ckpt", "MISSING", "--classes", "1", "--out", "OUT/g.png"],
     "checkpoint 'MISSING' does not exist; pass --ckpt PATH"),
    (["sample", "--model", "tiny-fashion", "--per-class", "2", "--upscale", "100000", "--out", "OUT/g.png"],
     "--upscale 100000 (20 images) would need"),
    (["eval-sample", "--model", "tiny-fashion", "--num-samples", "100000000000", "--out", "OUT/run"],
     "--num-samples 100000000000 would write"),
    (["eval", "--model", "tiny-fashion", "--methods", "none,fora-50", "--num-samples", "10000000000",
      "--out", "OUT/run"], "x 2 method(s) x 1 cfg scale(s) would write"),
    (["sample", "--model", "tiny-fashion", "--image-size", "30", "--out", "OUT/g.png"],
     "argument --image-size: image size 30 is not a multiple of 4 (the VAE factor of tiny-fashion); use 32"),
    (["sample", "--device", "cuda:4096", "--out", "OUT/g.png"], "--device cuda:4096"),
    (["sample", "--method", "l2c:MISSING@0.2+goc", "--out", "OUT/g.png"],
     "argument --method: router file 'MISSING' does not exist; give an existing file as router= in method"),
    (["eval-sample", "--method", "fora-50+tcc:pack=OUT", "--num-samples", "2", "--out", "OUT/run"],
     "pack file"),
    (["eval", "--methods", "none,matrix:path=MISSING", "--num-samples", "4", "--out", "OUT/run"],
     "argument --methods: path file"),
    (["bench", "--methods", "none,l2c:router=/dev/null"], "is not a regular file"),
    (["bench", "--batch", "100000000000"], "--batch 100,000,000,000 would need 11.6 PiB of memory"),
    (["eval", "--latency-batch", "100000000000", "--num-samples", "4", "--out", "OUT/run"],
     "--latency-batch 100,000,000,000 would need"),
]  # fmt: skip


@pytest.mark.parametrize("argv, message", BEFORE_LOADING, ids=[f"{a[0]} {m[:40]}" for a, m in BEFORE_LOADING])
def test_refused_before_any_weights_load_and_nothing_written(argv, message, no_loading, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MISSING: a file that is not there, named relatively
    words = [w.replace("OUT", str(tmp_path / "out")) for w in argv]
    (tmp_path / "out").mkdir()
    run_bad_input(words, message, capsys)
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("command", ["eval-sample", "eval"])
def test_a_refusal_after_loading_leaves_no_folder(command, tmp_path, capsys):
    """A method refused when it is resolved (no TCC pack for 7 steps), after the model loaded, before sampling."""
    out = tmp_path / "run"
    flag = "--method" if command == "eval-sample" else "--methods"
    argv = [command, "--steps", "7", flag, "fora-50+tcc", "--num-samples", "4", "--device", "cpu", "--out", str(out)]
    run_bad_input(argv, "tiny-digits_ddim7_cfg1.5_fora-50.safetensors' does not exist", capsys)
    assert not out.exists()


def test_an_option_given_twice_names_both_spellings(capsys):
    run_bad_input(["eval-sample", "--tf32", "--no-tf32", "--out", "x"], "given twice (as --tf32, then as --no-tf32)",
                  capsys)  # fmt: skip
    assert main(["verdicts", "--help"][:1] + ["--pair", "a", "b", "--pair", "c", "d", "RUN", "--table", "/proc/t"]) == 2
    assert "given twice" not in capsys.readouterr().err  # --pair is given once per pair by design


def test_a_huge_priors_count_is_refused_at_once(tmp_path, capsys):
    """The count of a range of seeds is checked without walking it (10^12 samples: one line, not an hour)."""
    argv = ["priors", "--classes", "0-9", "--per-class", "100000000000", "--out", str(tmp_path / "p.safetensors")]
    run_bad_input(argv, "1,000,000,000,000 samples (classes x --per-class) do not fit one priors file", capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_lock_is_held_once_and_leaves_no_file(tmp_path):
    path = tmp_path / ".out.lock"
    with exclusive_lock(path, "busy"):
        assert path.exists()
        with pytest.raises(InvalidArgumentError, match="^busy$"), exclusive_lock(path, "busy"):
            pass
    assert not path.exists()
    with exclusive_lock(path, "busy"):  # taken again after its removal
        assert path.exists()
    assert list(tmp_path.iterdir()) == []
