"""The goc command: info JSON, sampling files, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from goc_utils import paths
from goc_utils.cli import main
from goc_utils.model.presets import create_model
from tests.conftest import router_file


def _run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_info_dit_xl2(capsys):
    code, out, _ = _run(["info", "--model", "DiT-XL/2"], capsys)
    info = json.loads(out)
    assert code == 0
    assert info["params"] == 675_129_632
    assert (info["depth"], info["hidden_size"], info["num_heads"], info["patch_size"]) == (28, 1152, 16, 2)
    assert (info["input_size"], info["in_channels"], info["num_classes"], info["tokens"]) == (32, 4, 1000, 256)
    assert info["learn_sigma"] is True and "checkpoint" not in info


def test_info_tiny_digits_names_its_checkpoint(capsys):
    code, out, _ = _run(["info", "--model", "tiny-digits"], capsys)
    info = json.loads(out)
    assert code == 0 and info["checkpoint"].endswith("data/tiny_digits_dit_ema.safetensors")
    assert info["depth"] >= 12 and info["tokens"] == 16


def test_info_512_has_64x64_latents(capsys):
    _, out, _ = _run(["info", "--model", "DiT-XL/2", "--image-size", "512"], capsys)
    assert json.loads(out)["input_size"] == 64 and json.loads(out)["tokens"] == 1024


@pytest.fixture
def tiny_ckpt(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.save(create_model("tiny-digits").state_dict(), path)
    return path


def test_sample_writes_grid_and_npz(tmp_path, tiny_ckpt, capsys):
    out, npz = tmp_path / "sub" / "grid.png", tmp_path / "s.npz"
    code, stdout, _ = _run(
        [
            "sample",
            "--model",
            "tiny-digits",
            "--ckpt",
            str(tiny_ckpt),
            "--steps",
            "4",
            "--classes",
            "1,2",
            "--per-class",
            "2",
            "--out",
            str(out),
            "--save-npz",
            str(npz),
        ],
        capsys,
    )
    assert code == 0 and out.is_file() and "images/s" in stdout
    with np.load(npz) as data:
        assert data["arr_0"].shape == (4, 8, 8, 1) and data["labels"].tolist() == [1, 1, 2, 2]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "DiT-XXL/2"], "unknown model preset 'DiT-XXL/2'"),
        (["--model", "DiT-XL/2"], "has no committed weights; pass --ckpt"),
        (["--ckpt", "/nonexistent/w.pt"], "does not exist"),
        (["--classes", "3,12"], "class id 12 is out of range for tiny-digits; use 0..9"),
        (["--classes", "x"], "malformed class list"),
        (["--steps", "0"], "steps must be in 1..1000"),
        (["--cfg-scale", "-1"], "argument --cfg-scale: must be a number >= 0 (got -1)"),
        (["--cfg-scale", "nan"], "'nan' is not a finite number"),
        (["--cfg-scale", "abc"], "not a number"),
        (["--out", "/proc/forbidden/grid.png"], "--out '/proc/forbidden/grid.png'"),
        (["--sampler", "euler"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, message, tiny_ckpt, tmp_path, capsys):
    base = ["sample", "--steps", "2"] + ([] if "--out" in argv else ["--out", str(tmp_path / "g.png")])
    if "--ckpt" not in argv and "--model" not in argv:
        base += ["--ckpt", str(tiny_ckpt)]
    code, _, err = _run(base + argv, capsys)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1, err


def test_mismatched_checkpoint_is_one_line(tmp_path, capsys):
    path = tmp_path / "s8.pt"
    torch.save(create_model("DiT-S/8", image_size=64).state_dict(), path)
    code, _, err = _run(["sample", "--ckpt", str(path), "--out", str(tmp_path / "g.png")], capsys)
    assert code == 2 and "does not fit preset 'tiny-digits'" in err and "DiT-S/8" in err
    assert len(err.strip().splitlines()) == 1


def test_missing_vae_offline_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "s8.pt"
    torch.save(create_model("DiT-S/8", image_size=64).state_dict(), path)
    code, _, err = _run(
        [
            "sample",
            "--model",
            "DiT-S/8",
            "--image-size",
            "64",
            "--ckpt",
            str(path),
            "--vae",
            "mse",
            "--classes",
            "1",
            "--out",
            str(tmp_path / "g.png"),
        ],
        capsys,
    )
    assert code == 2 and "data/vae/sd-vae-ft-mse" in err
    assert len(err.strip().splitlines()) == 1


def test_console_script_entry_point():
    env = dict(os.environ)
    result = subprocess.run(
        [sys.executable, "-m", "goc_utils.cli", "info", "--model", "DiT-S/2"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert json.loads(result.stdout)["params"] > 0


def test_info_prints_macs(capsys):
    _, out, _ = _run(["info", "--model", "DiT-XL/2"], capsys)
    info = json.loads(out)
    assert abs(info["macs_forward"] / 118.6e9 - 1) < 0.005
    assert info["macs_attention_branch"] < info["macs_mlp_branch"]


def test_sample_with_cache_reports_its_ratio(tmp_path, tiny_ckpt, capsys):
    code, stdout, err = _run(
        [
            "sample",
            "--ckpt",
            str(tiny_ckpt),
            "--steps",
            "20",
            "--classes",
            "1",
            "--cache",
            "fora-50",
            "--compensator",
            "goc",
            "--out",
            str(tmp_path / "g.png"),
        ],
        capsys,
    )
    assert code == 0, err
    assert "fora-50+goc" in stdout and "50.0% of unit-steps reused" in stdout and "theoretical speedup" in stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--goc-weight", "1.2"], "--goc-weight needs --compensator goc"),
        (["--compensator", "goc"], "needs a schedule that reuses units"),
        (["--cache", "fora", "--fora-interval", "-2"], "argument --fora-interval: must be an integer >= 1 (got -2)"),
        (["--cache", "fora", "--fora-range", "x"], "malformed step range"),
        (["--cache", "l2c"], "needs a Learning-to-Cache router: pass --router PATH"),
        (["--cache", "l2c", "--router", "ROUTER20"], "needs 20 routers of 24 units"),
        (["--cache", "l2c", "--router", "ROUTER20", "--router-thres", "2"], "must be in [0, 1]"),
        (["--cache", "fora-50", "--router", "ROUTER20"], "--router needs --cache l2c"),
        (
            ["--cache", "fora-50", "--compensator", "goc", "--goc-steps", "auto", "--priors", "/nonexistent.st"],
            "create it with `goc priors",
        ),
        (["--cache", "fora-50", "--compensator", "goc", "--priors", "PRIORS"], "--priors needs --goc-steps auto"),
        (["--cache", "fora-50", "--compensator", "goc", "--goc-steps", "3,40"], "step 40 is outside"),
        (["--cache", "matrix"], "needs exactly one of --matrix PATH"),
    ],
)
def test_bad_cache_options_are_one_line(argv, message, tiny_ckpt, tmp_path, capsys):
    router = str(router_file(tmp_path / "xl20.pt", np.zeros((20, 56))))  # shaped like the DiT-XL/2 routers
    priors = str(paths.DATA_DIR / "priors" / "tiny-digits_ddim20_cfg4.safetensors")
    argv = [{"ROUTER20": router, "PRIORS": priors}.get(a, a) for a in argv]
    code, _, err = _run(["sample", "--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "g.png")] + argv, capsys)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1


def test_goc_help_does_not_import_torch():
    code = (
        "import sys\nfrom goc_utils.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'goc --help imported torch'\nprint('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-500:]
