"""Further bad inputs of the kinds reliability round 4 named, found by trying the commands as a careless user
would after it: each is refused in one line before any work, and leaves nothing behind. Each case stands for
its kind, fixed where the kind is checked (the output kind, the options checked together, the one CSV reader,
the notebook parameters checked by their options' kinds, the lock beside an output)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from goc_utils import paths
from goc_utils.files import output_lock
from tests.conftest import run_bad_input


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("prefix", [".", "/", "tables/", ".."])
@pytest.mark.parametrize("command", [["tcc-packs", "--model", "tiny-digits"], ["sample", "--steps", "2"]])
def test_an_output_file_or_prefix_naming_a_folder_is_refused(command, prefix, work, capsys):
    flag = "--table" if command[0] == "tcc-packs" else "--out"
    run_bad_input([*command, flag, prefix], "names a folder, not a file", capsys)
    assert _listing(work) == []


def test_two_outputs_of_one_file_are_refused(work, capsys):
    run_bad_input(["sample", "--steps", "2", "--out", "x.png", "--save-npz", "x.png"], "both name", capsys)
    assert _listing(work) == []


def test_an_output_that_is_an_input_is_refused(work, capsys):
    weights = shutil.copy(paths.PROJECT_ROOT / "data" / "tiny_digits_dit_ema.safetensors", work / "w.png")
    before = Path(weights).read_bytes()
    argv = ["sample", "--steps", "2", "--ckpt", "w.png", "--out", "w.png"]
    run_bad_input(argv, "is the file that --ckpt reads", capsys)
    assert Path(weights).read_bytes() == before and _listing(work) == ["w.png"]


@pytest.mark.parametrize(
    "argv",
    [
        ["sample", "--model", "tiny-digits", "--vae", "mse", "--steps", "2"],
        ["export-diffusers", "--model", "tiny-digits", "--vae", "mse", "--out", "pipe"],
    ],
)
def test_an_option_that_the_model_cannot_use_is_refused(argv, work, capsys):
    run_bad_input(argv, "--vae is for latent models", capsys)
    assert _listing(work) == []


def test_tiny_report_refuses_fid_samples_for_the_digits_tier(work, capsys):
    argv = ["tiny-report", "--model", "tiny-digits", "--fid-samples", "10", "--out-dir", "report"]
    run_bad_input(argv, "--fid-samples is for tiny-fashion", capsys)
    assert _listing(work) == []


def test_eval_refuses_too_few_samples_to_score_before_sampling(work, capsys):
    argv = ["eval", "--steps", "2", "--num-samples", "3", "--methods", "none", "--out", "run"]
    run_bad_input(argv, "scoring needs at least 4 samples per method", capsys)
    assert _listing(work) == []


def test_fid_refuses_a_batch_too_small_to_score_before_any_feature(work, capsys, monkeypatch):
    np.savez(work / "two.npz", arr_0=np.zeros((2, 8, 8, 1), np.uint8))
    monkeypatch.setattr("goc_utils.cli.evaluate.build_extractor", lambda *a, **k: pytest.fail("features loaded"))
    run_bad_input(["fid", str(paths.DATA_DIR / "reference" / "digits_ref.npz"), "two.npz"], "holds 2 image(s)", capsys)


def test_a_refused_run_leaves_no_folder_made_for_its_lock(work):
    with pytest.raises(RuntimeError), output_lock(work / "a" / "b" / "out.safetensors"):
        assert (work / "a" / "b").is_dir()
        raise RuntimeError("refused inside the lock")
    assert _listing(work) == []
    with output_lock(work / "a" / "b" / "out.safetensors"):
        (work / "a" / "b" / "out.safetensors").write_text("written")
    assert _listing(work) == ["a", "a/b", "a/b/out.safetensors"]


def test_priors_refused_after_its_lock_leaves_no_folder(work, capsys):
    argv = ["priors", "--steps", "2", "--classes", "0-10", "--out", "deep/er/p.safetensors"]
    run_bad_input(argv, "class id 10 is out of range", capsys)
    assert _listing(work) == []


def _params(work: Path, text: str) -> str:
    (work / "p.yaml").write_text(text)
    return "p.yaml"


@pytest.mark.parametrize(
    "text, says",
    [
        ("steps: 1" + "0" * 400, "parameter 'steps': --steps must be in 1..1000"),
        ("steps: 5000", "parameter 'steps': --steps must be in 1..1000"),
        ("device: tpu", "parameter 'device': unknown device 'tpu'"),
        ("ckpt: /nonexistent.pt", "parameter 'ckpt': checkpoint '/nonexistent.pt' does not exist"),
        ("methods: none,,fora-50", "parameter 'methods': malformed method list"),
        ("per_device_batch: 100000000000000", "parameter per_device_batch: --per-device-batch 100,000,000,000,000"),
    ],
)
def test_notebook_parameters_are_checked_by_their_options_kinds(text, says, work, capsys, monkeypatch):
    monkeypatch.setattr("goc_utils.cli.study.run_notebooks", lambda *a, **k: pytest.fail("a notebook ran"))
    argv = ["notebooks", "--only", "05", "--params", _params(work, text), "--figures-dir", "figures"]
    run_bad_input(argv, says, capsys)
    assert _listing(work) == ["p.yaml"]


def test_valid_notebook_parameters_pass_their_kinds(work):
    from goc_utils.cli.study import check_parameter_kinds

    data = paths.PROJECT_ROOT / "data"
    params = {
        "model": "tiny-digits", "ckpt": str(data / "tiny_digits_dit_ema.safetensors"), "vae": "", "image_size": 0,
        "steps": 20, "cfg_scale": 1.5, "seed": 3, "classes": "0-9", "per_class": 2, "device": "cpu",
        "router": str(data / "routers" / "tiny_digits_ddim20.pt"), "method": "fora-50+goc",
        "methods": "none,fora-50", "num_samples": 100, "per_device_batch": 50, "features": "digits",
        "ref_batch": str(data / "reference" / "digits_ref.npz"), "samples_dir": "runs/x", "smoke": True,
    }  # fmt: skip
    check_parameter_kinds(params, "tiny-digits")
    assert _listing(work) == []


@pytest.fixture
def figures(work) -> Path:
    folder = work / "fig"
    folder.mkdir()
    for csv in (paths.PROJECT_ROOT / "figures").glob("*.csv"):
        shutil.copy(csv, folder)
    return folder


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda text: b"\x00\xff\xfe garbage", "is not UTF-8 text"),
        (lambda text: text[:150], "has 3 cells, its header 5 (cut short?)"),
        (lambda text: b"", "has no header row"),
        (lambda text: text.replace(b"cached units", b"method", 1), "repeated column name"),
        (lambda text: text.replace(b"method,", b"approach,", 1), "has no column 'method'"),
    ],
    ids=["not UTF-8", "cut short", "empty", "a column twice", "a column missing"],
)
@pytest.mark.parametrize("check", [[], ["--check"]], ids=["write", "check"])
def test_a_damaged_results_csv_is_refused_by_the_report(damage, says, check, figures, capsys):
    csv = figures / "04_methods.csv"
    csv.write_bytes(damage(csv.read_bytes()))
    run_bad_input(["report", "--figures-dir", str(figures), *check], says, capsys)
    assert not (figures / "README.md").exists()


def test_a_pair_given_twice_is_refused(work, capsys):
    (work / "run").mkdir()
    argv = ["verdicts", "run", "--pair", "none", "fora-50", "--pair", "fora-50", "none"]
    run_bad_input(argv, "--pair fora-50 none is given twice", capsys)


def test_bench_names_the_fix_when_no_method_is_left(work, capsys):
    err = run_bad_input(["bench", "--methods", "l2c", "--steps", "2"], "nothing to bench: l2c needs a router", capsys)
    assert "--steps 20" in err


@pytest.mark.parametrize(
    "argv, says",
    [
        (["sample", "--steps", "1_0"], "'1_0' is not an integer"),
        (["sample", "--steps", "\u0663"], "is not an integer"),
        (["sample", "--cfg-scale", "1_5"], "not a number: '1_5'"),
        (["sample", "--classes", "\u0663"], "malformed class list"),
        (["sample", "--method", "fora:interval=1_0"], "is not a valid value"),
        (["sample", "--method", "fora:range=2_0-18"], "malformed step range"),
        (["sample", "--method", "fora-50+goc:w=1_0"], "is not a valid value"),
        (["bench", "--methods", "cachedit:dbcache:fn=1_0"], "bad value fn=1_0"),
        (["bench", "--methods", "diffusers:fbc:threshold=1_0.5"], "bad value threshold=1_0.5"),
    ],
)
def test_a_number_is_written_in_plain_ascii_digits(argv, says, work, capsys):
    """Python's int and float also read 1_0 and other scripts' digits: every number of a flag, a list or a method
    string goes through the plain readers (lists.PLAIN) instead."""
    run_bad_input(argv, says, capsys)
    assert _listing(work) == []


@pytest.mark.parametrize("text, value", [("+4", 4), (" 7", 7), (".5", 0.5), ("2e-3", 0.002), ("1.", 1.0)])
def test_plain_numbers_read_what_a_researcher_writes(text, value):
    from goc_utils.lists import plain_float, plain_int

    assert (plain_int(text) if isinstance(value, int) else plain_float(text)) == value
