"""The evaluation commands' bad inputs are one line on stderr and exit status 2 (table-driven, as
tests/test_bad_inputs.py): damaged run.json files, --threads, batch files given to ``goc fid``, sizes beyond the
machine, and --tf32 recorded and checked on resume."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from tqdm.auto import tqdm

from goc_utils import paths
from goc_utils.cli import build_parser, main
from goc_utils.cli import evaluate as evaluate_cli
from goc_utils.files import memory_bytes
from goc_utils.model import sampler
from tests.conftest import run_bad_input

N = 8


def _quiet(monkeypatch) -> None:
    """No progress bars on stderr (the promise is about its one line)."""
    for module in ("goc_utils.evaluation.metrics.features", "goc_utils.evaluation.sampling"):
        monkeypatch.setattr(f"{module}.tqdm", lambda *args, **kwargs: tqdm(*args, **{**kwargs, "disable": True}))


@pytest.fixture
def tf32_flags():
    """Restore torch's TF32 flags after the test (monkeypatch cannot: the cuBLAS flag is not a plain attribute)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _batch(**arrays) -> dict:
    """A valid little sample batch (8 digit-sized images and their labels) with ``arrays`` replacing or added."""
    rng = np.random.default_rng(0)
    base = {"arr_0": rng.integers(0, 256, (N, 8, 8, 1), dtype=np.uint8), "arr_1": np.arange(N) % 10}
    return {k: v for k, v in {**base, **arrays}.items() if v is not None}


def _stats(d: int = 4, **changes) -> dict:
    stats = {"mu": np.zeros(d), "sigma": np.eye(d), "mu_s": np.zeros(d), "sigma_s": np.eye(d)}
    return {**stats, **changes}


BATCHES = {
    "OBJECT_LABELS": _batch(arr_1=np.array([{"a": 1}] * N, dtype=object)),
    "OBJECT_EXTRA": _batch(notes=np.array(["x", 1], dtype=object)),
    "MU_0D": _batch(**_stats(mu=np.float64(1.0))),
    "MU_ONLY": _batch(mu=np.zeros(4), sigma=np.eye(4)),
    "MU_STRINGS": _batch(**_stats(mu=np.array(["a", "b", "c", "d"]))),
    "SIGMA_SHAPE": _batch(**_stats(sigma=np.eye(4)[:, :3])),
    "MU_SHAPE": _batch(**_stats(mu=np.zeros(5))),
    "LABELS_STRINGS": _batch(arr_1=np.array([str(i % 10) for i in range(N)])),
    "LABELS_NAN": _batch(arr_1=np.where(np.arange(N) == 3, np.nan, 1.0)),
    "LABELS_SHORT": _batch(arr_1=np.arange(3)),
    "LABELS_NEG": _batch(arr_1=np.where(np.arange(N) == 3, -1, 1)),
    "LABELS_BIG": _batch(arr_1=np.full(N, 12)),
    "FEATURES_LIST": _batch(features=np.array(["digits", "inception"])),
    "LABELS_2D": _batch(labels=np.zeros((N, 1), dtype=np.int64), arr_1=None),
}


def _files(tmp_path) -> dict:
    made = {}
    for name, arrays in BATCHES.items():
        made[name] = tmp_path / f"{name.lower()}.npz"
        np.savez(made[name], **arrays)
    made["SAMPLES"] = tmp_path / "samples.npz"
    np.savez(made["SAMPLES"], **_batch())
    ref = dict(np.load(paths.DIGITS_REFERENCE_BATCH))
    made["REF_MU_NAN"] = tmp_path / "ref_mu_nan.npz"
    np.savez(made["REF_MU_NAN"], **{**ref, "mu": np.where(np.arange(len(ref["mu"])) == 2, np.nan, ref["mu"])})
    made["FIFO"] = tmp_path / "fifo.npz"
    os.mkfifo(made["FIFO"])
    made["A_FOLDER"] = tmp_path / "folder.npz"
    made["A_FOLDER"].mkdir()
    for name, text in {
        "RUN_GARBAGE": "\x00\x17garbage{",
        "RUN_EMPTY": "",
        "RUN_LIST": "[1, 2, 3]",
        "RUN_NULL": "null",
        "RUN_SAMPLES": json.dumps({"model": "tiny-digits", "samples": [12, "abc"]}),
        "RUN_BINARY": None,
    }.items():
        made[name] = tmp_path / name.lower()
        made[name].mkdir()
        if text is None:
            (made[name] / "run.json").write_bytes(b"\xff\xfe\x00binary")
        else:
            (made[name] / "run.json").write_text(text)
    made["RUN_FOLDER"] = tmp_path / "run_folder"
    (made["RUN_FOLDER"] / "run.json").mkdir(parents=True)
    return made


REF = str(paths.DIGITS_REFERENCE_BATCH)
FID = ["fid", "--features", "digits", "--device", "cpu"]
EVAL_SAMPLE = ["eval-sample", "--num-samples", "2", "--steps", "4", "--device", "cpu"]
EVAL = ["eval", "--methods", "none", "--num-samples", "4", "--steps", "4", "--device", "cpu", "--out", "OUT"]
EVAL_SAMPLE_N, EVAL_N = [*EVAL_SAMPLE[:1], *EVAL_SAMPLE[3:]], [*EVAL[:3], *EVAL[5:-2]]  # --num-samples (--out) left out
REFUSE_RUN = "cannot be checked without it: delete"

CASES = [
    # 1. a damaged run.json: what is wrong and how to start over
    ([*EVAL_SAMPLE, "--out", "RUN_GARBAGE"], "is not valid JSON"),
    ([*EVAL_SAMPLE, "--out", "RUN_BINARY"], "is not valid JSON"),
    ([*EVAL_SAMPLE, "--out", "RUN_EMPTY"], f"run.json' is empty; its shards {REFUSE_RUN}"),
    ([*EVAL_SAMPLE, "--out", "RUN_LIST"], "holds a list, not a JSON object of settings"),
    ([*EVAL_SAMPLE, "--out", "RUN_NULL"], "holds null, not a JSON object"),
    ([*EVAL_SAMPLE, "--out", "RUN_SAMPLES"], "its 'samples' entry [12, 'abc'] is not"),
    ([*EVAL_SAMPLE, "--out", "RUN_FOLDER"], "run.json' is a folder"),
    # 2. --threads: >= 1 wherever it is taken
    (["train-router", "--threads=-1", "--out", "OUT/r.pt"], "argument --threads: must be an integer >= 1 (got -1)"),
    (["bench", "--threads=-2", "--steps", "4", "--methods", "none"], "must be an integer >= 1 (got -2)"),
    (["priors", "--threads", "0", "--steps", "4", "--out", "OUT/p.safetensors"], "must be an integer >= 1"),
    (["train-tiny", "--threads", "0", "--out", "OUT/w.pt"], "must be an integer >= 1 (got 0)"),
    ([*EVAL_SAMPLE, "--threads", "0", "--out", "OUT"], "argument --threads: must be an integer >= 1 (got 0)"),
    ([*EVAL, "--threads", "two"], "argument --threads: 'two' is not an integer"),
    # 3. goc fid: one validation of a batch file's arrays where it is read
    ([*FID, REF, "OBJECT_LABELS"], "arr_1 is an array of Python objects (pickles are never loaded)"),
    ([*FID, REF, "OBJECT_EXTRA"], "notes is an array of Python objects"),
    ([*FID, "MU_0D", "SAMPLES"], "mu has shape (); expected (D,)"),
    ([*FID, "MU_ONLY", "SAMPLES"], "holds mu, sigma but not mu_s, sigma_s"),
    ([*FID, "MU_STRINGS", "SAMPLES"], "mu holds <U1 values; statistics are floats"),
    ([*FID, "SIGMA_SHAPE", "SAMPLES"], "sigma has shape (4, 3); expected (4, 4) to match mu (4,)"),
    ([*FID, "MU_SHAPE", "SAMPLES"], "sigma has shape (4, 4); expected (5, 5) to match mu (5,)"),
    ([*FID, "REF_MU_NAN", "SAMPLES"], "mu holds 1 NaN or infinite value(s)"),
    ([*FID, REF, "LABELS_STRINGS"], "arr_1 holds <U1 values; class labels are integers"),
    ([*FID, REF, "LABELS_NAN"], "arr_1 holds float64 values; class labels are integers"),
    ([*FID, REF, "LABELS_SHORT"], "arr_1 has shape (3,); expected (8,), one class label per image"),
    ([*FID, REF, "LABELS_2D"], "labels has shape (8, 1); expected (8,)"),
    ([*FID, REF, "LABELS_NEG"], "arr_1 holds the label -1; class labels are 0..K-1"),
    ([*FID, REF, "LABELS_BIG"], "labels must be one per sample in 0..9"),
    ([*FID, REF, "FEATURES_LIST"], "features holds <U9 of shape (2,); it names the extractor as one string"),
    ([*FID, REF, "A_FOLDER"], "folder.npz' is a folder, not a file; make samples with `goc eval-sample`"),
    ([*FID, "A_FOLDER", "SAMPLES"], "batch file '"),
    ([*FID, REF, "/dev/zero"], "batch file '/dev/zero' is not a regular file (a device, FIFO or socket)"),
    ([*FID, "FIFO", "SAMPLES"], "fifo.npz' is not a regular file (a device, FIFO or socket)"),
    # 4. sizes against the machine, before any sampling
    (["sample", "--steps", "4", "--classes", "1", "--upscale", "200000"], "--upscale 200000 (1 image) would need"),
    (["sample", "--steps", "4", "--upscale", "0"], "argument --upscale: must be an integer >= 1 (got 0)"),
    (["sample", "--steps", "4", "--per-class", "100000000"], "--per-class 100000000 (1,000,000,000 images) would"),
    ([*EVAL_SAMPLE_N, "--num-samples", "1000000000000", "--out", "OUT"], "--num-samples 1000000000000 would write"),
    ([*EVAL_N, "--num-samples", "1000000000000", "--out", "OUT"], "x 1 method(s) x 1 cfg scale(s) would write"),
    ([*EVAL, "--fid-bootstrap=-3"], "argument --fid-bootstrap: must be 0 (off) or an integer >= 2 (got -3)"),
    ([*EVAL, "--fid-bootstrap", "1"], "must be 0 (off) or an integer >= 2 (got 1)"),  # one resample has no spread
    # 6. --tf32 is a switch
    ([*EVAL_SAMPLE, "--tf32=yes", "--out", "OUT"], "--tf32"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a)[:70] for a, _ in CASES])
def test_bad_input_is_one_line_with_exit_2(argv, message, tmp_path, capsys, monkeypatch):
    _quiet(monkeypatch)
    files = _files(tmp_path)
    out = tmp_path / "out"
    damaged_run = any(a.startswith("RUN_") for a in argv)
    argv = [str(files.get(a, a)).replace("OUT", str(out)) for a in argv]
    if argv[0] == "sample" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "g.png")]
    run_bad_input(argv, message, capsys, None if damaged_run else out)
    assert not list(out.rglob("*.npz")) and not (tmp_path / "g.png").exists()  # nothing sampled


def test_a_sampling_run_whose_merge_does_not_fit_in_memory_is_refused(tmp_path, capsys, monkeypatch):
    """More samples than this machine's memory holds labels for (the merge reads them whole), on a disk big enough."""
    monkeypatch.setattr("goc_utils.evaluation.sampling.check_disk", lambda *args: None)
    n = memory_bytes() // 8 + 1
    argv = ["eval-sample", "--num-samples", str(n), "--steps", "4", "--out", str(tmp_path / "out")]
    run_bad_input(argv, f"--num-samples {n} would need", capsys, tmp_path / "out")


def test_tf32_is_a_switch_on_the_four_sampling_commands(capsys):
    for command in ("sample", "eval-sample", "eval", "bench"):
        parser = build_parser([command])
        extra = ["--out", "x"] if command.startswith("eval") else []
        assert parser.parse_args([command, *extra]).tf32 is True  # as published
        assert parser.parse_args([command, *extra, "--no-tf32"]).tf32 is False
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--no-tf32 for strict fp32. No effect on CPU" in " ".join(capsys.readouterr().out.split())


def test_set_tf32_sets_both_backend_flags_on_cuda_and_nothing_on_cpu(tf32_flags):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    assert sampler.set_tf32("cuda", True) is True
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert sampler.set_tf32("cuda:1", False) is False
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert sampler.set_tf32("cpu", True) is None
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


def test_run_json_records_tf32_on_cuda_and_a_resume_with_the_other_setting_is_refused(
    tmp_path, capsys, monkeypatch, tf32_flags
):
    _quiet(monkeypatch)
    argv = ["eval-sample", "--num-samples", "2", "--steps", "4", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "cpu"), "--no-tf32"]) == 0  # no TF32 on the CPU: nothing recorded
    assert "tf32" not in json.loads((tmp_path / "cpu" / "run.json").read_text())
    calls = []

    def as_if_on_cuda(device, enabled):
        calls.append(device)
        return sampler.set_tf32("cuda", enabled)

    monkeypatch.setattr(evaluate_cli, "set_tf32", as_if_on_cuda)
    out = tmp_path / "cuda"
    assert main([*argv, "--out", str(out)]) == 0
    assert calls == ["cpu"] and torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert json.loads((out / "run.json").read_text())["tf32"] is True
    capsys.readouterr()
    run_bad_input([*argv, "--out", str(out), "--no-tf32"], "holds a run with tf32=True (this one: False)", capsys)
    assert main([*argv, "--out", str(out), "--tf32"]) == 0  # the same setting resumes


def test_eval_sample_applies_threads_before_sampling(tmp_path, monkeypatch):
    _quiet(monkeypatch)
    order = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: order.append(("threads", n)))
    real = evaluate_cli.eval_sample
    monkeypatch.setattr(evaluate_cli, "eval_sample", lambda *a, **k: order.append("sample") or real(*a, **k))
    argv = ["eval-sample", "--num-samples", "2", "--steps", "4", "--device", "cpu", "--threads", "1"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert order == [("threads", 1), "sample"]
    order.clear()
    assert main([*argv[:-2], "--out", str(tmp_path / "b")]) == 0
    assert order == ["sample"]  # no --threads: torch's default, as bench and priors
