"""Nothing lost, nothing silently wrong: damaged results are rebuilt, finished runs never shrink, one sampler per
folder, and the long jobs (priors, router training) resume after kill -9 with the bytes of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from goc_utils import paths
from goc_utils.errors import InvalidArgumentError
from goc_utils.evaluation.sampling import MANIFEST_NAME, SAMPLES_NAME, NpzRun, run_lock, sample_to_npz
from goc_utils.files import file_sha256
from goc_utils.model.checkpoints import load_model

GOC = [sys.executable, "-m", "goc_utils.cli"]
ENV = {**os.environ, "PYTHONPATH": str(paths.PROJECT_ROOT), "OMP_NUM_THREADS": "1"}


def _sample(model, out, num_samples, batch):
    return sample_to_npz(model, out, NpzRun(num_samples, batch, {"run": 1}, steps=4), progress=False)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-digits")


def test_a_damaged_samples_file_is_rebuilt_from_the_shards(tiny, tmp_path, capfd):
    path = _sample(tiny, tmp_path, 12, 4)
    clean = path.read_bytes()
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["samples"] == {"count": 12, "sha256": file_sha256(path)}
    damaged = bytearray(clean)
    damaged[len(damaged) // 2] ^= 0xFF  # one flipped byte inside arr_0
    path.write_bytes(bytes(damaged))
    assert _sample(tiny, tmp_path, 12, 4).read_bytes() == clean
    assert "does not match its sha256" in capfd.readouterr().err


def test_a_finished_run_is_never_shrunk(tiny, tmp_path):
    path = _sample(tiny, tmp_path, 12, 4)
    before = path.read_bytes()
    with pytest.raises(InvalidArgumentError, match="finished run of 12 samples; --num-samples 8 would shrink it"):
        _sample(tiny, tmp_path, 8, 4)
    assert path.read_bytes() == before
    assert len(_sample(tiny, tmp_path, 16, 4).read_bytes()) > len(before)  # growing is fine


def test_one_sampling_process_per_folder(tiny, tmp_path):
    with run_lock(tmp_path), pytest.raises(InvalidArgumentError, match="another process is sampling into"):
        _sample(tiny, tmp_path, 4, 4)
    assert not (tmp_path / SAMPLES_NAME).exists()
    _sample(tiny, tmp_path, 4, 4)  # the lock is released with its holder


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be interrupted; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        ["priors", "--steps", "6", "--classes", "0-9", "--per-class", "12", "--batch-size", "2"],
        ["train-router", "--steps", "4", "--train-steps", "400", "--batch-size", "4"],
    ],
    ids=["priors", "train-router"],
)
def test_kill_9_then_rerun_gives_the_uninterrupted_bytes(argv, tmp_path):
    whole, killed = tmp_path / "whole.out", tmp_path / "killed.out"
    argv = [*argv, "--checkpoint-seconds", "0"]
    subprocess.run([*GOC, *argv, "--out", str(whole)], env=ENV, check=True, capture_output=True)
    partial = killed.with_name(killed.name + ".partial")
    proc = subprocess.Popen([*GOC, *argv, "--out", str(killed)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    _kill_when(proc, partial.exists)  # the first checkpoint is written after one batch / step: many remain
    assert partial.exists() and not killed.exists()
    subprocess.run([*GOC, *argv, "--out", str(killed)], env=ENV, check=True, capture_output=True)
    assert killed.read_bytes() == whole.read_bytes()
    assert not partial.exists()
