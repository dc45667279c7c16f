"""Every bad input is one line on stderr and exit status 2 (table-driven; each row was a traceback, a crash,
a wrong message or silently accepted nonsense before)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from goc_utils.cli import main
from goc_utils.errors import InvalidArgumentError, VAEError
from goc_utils.files import check_disk, check_memory, input_file, memory_bytes
from goc_utils.model import vae as vae_module
from tests.conftest import router_file, run_bad_input


class _RunsCode:
    def __reduce__(self):
        return (print, ("this pickle runs code",))


def _files(tmp_path):
    """The bad files the table refers to by name."""
    made = {}
    made["ROUTER_KEY"] = tmp_path / "key.pt"
    torch.save({"routers": {"a.prob": torch.zeros(24)}}, made["ROUTER_KEY"])
    made["ROUTER_LENGTHS"] = tmp_path / "lengths.pt"
    torch.save({"routers": {f"{k}.prob": torch.zeros(24 + k % 2) for k in range(20)}}, made["ROUTER_LENGTHS"])
    made["ROUTER_VALUES"] = tmp_path / "values.pt"
    torch.save({"routers": {f"{k}.prob": [0.0] * 24 for k in range(20)}}, made["ROUTER_VALUES"])
    made["ROUTER_NAN"] = router_file(tmp_path / "nan.pt", np.full((20, 24), np.nan))
    made["MATRIX_2"] = tmp_path / "m2.csv"
    made["MATRIX_2"].write_text("\n".join(["1,1"] + ["2,1"] * 19) + "\n")
    made["MATRIX_NAN"] = tmp_path / "mnan.npy"
    np.save(made["MATRIX_NAN"], np.where(np.arange(40).reshape(20, 2) == 5, np.nan, 1.0))
    made["BAD_YAML"] = tmp_path / "bad.yaml"
    made["BAD_YAML"].write_text("steps: [1, 2\nsmoke: true\n")
    made["EVIL_PT"] = tmp_path / "evil.pt"
    made["EVIL_PT"].write_bytes(pickle.dumps({"x": _RunsCode()}))
    made["A_FILE"] = tmp_path / "a_file"
    made["A_FILE"].write_text("not a folder")
    from safetensors.torch import save_file

    made["PRIORS_NO_STEPS"] = tmp_path / "p.safetensors"
    header = '{"format": "goc-priors/1", "model": "tiny-digits", "cfg_scale": 4.0}'
    save_file({"sum_feature": torch.zeros(1)}, str(made["PRIORS_NO_STEPS"]), {"goc_priors": header})
    return made


SAMPLE = ["sample", "--steps", "4", "--classes", "1"]
CASES = [
    # seeds: one rule everywhere
    ([*SAMPLE, "--seed", "1180591620717411303424"], "outside 0..2**63-1"),
    ([*SAMPLE, "--seed=-5"], "outside 0..2**63-1"),
    (["eval-sample", "--seed=-1", "--num-samples", "2", "--out", "OUT"], "outside 0..2**63-1"),
    # sizes checked before any allocation
    ([*SAMPLE[:1], "--steps", "1000000000"], "steps must be in 1..1000"),
    (["bench", "--steps", "0", "--methods", "none,fora-50"], "steps must be in 1..1000"),
    (["bench", "--repeats", "0", "--steps", "4", "--methods", "none"], "--repeats: must be an integer >= 1 (got 0)"),
    (["bench", "--warmup=-1", "--steps", "4", "--methods", "none"], "--warmup: must be an integer >= 0 (got -1)"),
    (["bench", "--batch", "0", "--steps", "4", "--methods", "none"], "--batch: must be an integer >= 1 (got 0)"),
    (["priors", "--batch-size", "0", "--steps", "4", "--classes", "0", "--out", "OUT/p.safetensors"], "--batch-size"),
    (["info", "--image-size=-8"], "argument --image-size: must be an integer >= 1 (got -8)"),
    (["info", "--image-size", "0"], "argument --image-size: must be an integer >= 1 (got 0)"),
    (["info", "--image-size", "7"], "not a positive multiple of the patch size 2"),
    # outputs checked before the work
    ([*SAMPLE, "--save-npz", "/proc/x.npz"], "is not writable"),
    ([*SAMPLE, "--save-npz", "/sys/kernel/x.npz"], "is not writable"),
    (["eval", "--methods", "none", "--num-samples", "4", "--out", "OUT", "--table", "/proc/x/res"], "--table"),
    (["eval-sample", "--num-samples", "2", "--out", "A_FILE"], "is a file; give a folder"),
    # router and schedule files
    ([*SAMPLE, "--cache", "l2c", "--router", "ROUTER_KEY"], "key 'a.prob' is not '<k>.prob'"),
    ([*SAMPLE, "--cache", "l2c", "--router", "ROUTER_LENGTHS"], "different lengths"),
    ([*SAMPLE, "--cache", "l2c", "--router", "ROUTER_VALUES"], "must be a tensor"),
    ([*SAMPLE, "--cache", "l2c", "--router", "ROUTER_NAN"], "NaN or infinite logits"),
    ([*SAMPLE[:1], "--steps", "20", "--cache", "matrix", "--matrix", "MATRIX_2"], "holds 2"),
    ([*SAMPLE[:1], "--steps", "20", "--cache", "matrix", "--matrix", "MATRIX_NAN"], "holds nan"),
    # other values
    ([*SAMPLE, "--device", "tpu"], "argument --device: unknown device 'tpu'"),
    ([*SAMPLE, "--cfg-scale", "inf"], "'inf' is not a finite number"),
    (["inflections", "PRIORS_NO_STEPS"], "its header lacks steps"),
    (["inflections", "data/priors/tiny-digits_ddim20_cfg4.safetensors", "--weight", "nan"], "not a finite number"),
    (["train-router", "--l1", "nan", "--out", "OUT/r.pt"], "not a finite number"),
    (["notebooks", "--params", "BAD_YAML"], "is not valid YAML at line"),
    (["eval-sample", "--method", "fora-50+goc:steps=3,,x", "--out", "OUT"], "malformed step list '3,,x'"),
    ([*SAMPLE, "--ckpt", "EVIL_PT"], "cannot read checkpoint"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_is_one_line_with_exit_2(argv, message, tmp_path, capsys):
    files = _files(tmp_path)
    out = tmp_path / "out"
    argv = [str(files.get(a, a)).replace("OUT", str(out)) for a in argv]
    if "--out" not in argv and argv[0] == "sample":
        argv += ["--out", str(tmp_path / "g.png")]
    run_bad_input(argv, message, capsys, out)


def test_vae_paths_and_unreachable_hub_are_one_line(monkeypatch):
    with pytest.raises(VAEError, match="VAE folder '/nonexistent/vae' does not exist"):
        vae_module.load_vae("/nonexistent/vae")
    monkeypatch.setattr(vae_module, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(VAEError, match="not cached here and the hub is unreachable") as info:
        vae_module.load_vae("someone/no-such-vae")
    assert "\n" not in str(info.value)


def test_bench_uses_the_committed_router_like_eval(capsys):
    assert main(["bench", "--steps", "20", "--repeats", "1", "--warmup", "0", "--methods", "none,l2c"]) == 0
    out = capsys.readouterr().out
    assert "skipping" not in out and "| l2c | 24.8% |" in out


def test_input_file_says_what_the_path_is(tmp_path):
    """One check for every input file: what the path is instead of a file, in one line."""
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    big = tmp_path / "big.csv"
    big.write_bytes(b"1" * 100)
    cases = {
        str(tmp_path / "missing.pt"): "does not exist",
        str(tmp_path): "is a folder, not a file",
        "/dev/zero": "is not a regular file",
        str(tmp_path / "loop"): "is a symbolic link loop",
        str(tmp_path / "dangling"): "is a symbolic link to nothing",
        "/" + "x" * 5000: "has a name of 5,001 characters",
        str(big): "is 100 B, more than a matrix file can be (10 B)",
    }
    for path, reason in cases.items():
        with pytest.raises(InvalidArgumentError, match="pass --x PATH$") as info:
            input_file(path, "matrix file", "pass --x PATH", max_bytes=10)
        assert reason in str(info.value) and "\n" not in str(info.value) and len(str(info.value)) < 200
    assert input_file(big, "matrix file", "pass --x PATH") == big


def test_memory_and_disk_are_checked_before_the_work(tmp_path):
    with pytest.raises(InvalidArgumentError, match=r"would need .* of memory, more than this machine's"):
        check_memory(10 * memory_bytes(), "--per-class 100000000", "sample fewer images")
    check_memory(1024, "a small job", "")
    with pytest.raises(InvalidArgumentError, match=r"would write .* free; sample fewer"):
        check_disk(tmp_path / "not" / "yet", 2**70, "--num-samples 10**12", "sample fewer")
