"""Nothing lost for the long priors and router jobs: one writer per output file (a second `goc priors` or
`goc train-router` on the same --out stops at once), and a resume never continues a partial made with other weights."""

from __future__ import annotations

import subprocess

import pytest
import torch
from safetensors.torch import save_file

from goc_utils.cli import main
from goc_utils.datasets import load_digits_tensors
from goc_utils.files import output_lock, state_dict_sha256
from goc_utils.model.checkpoints import load_model
from goc_utils.priors.extraction import extract_priors
from goc_utils.priors.stats import PriorStats
from goc_utils.training.routers import RouterTrainConfig, tensor_batches, train_router
from tests.conftest import run_bad_input
from tests.test_nothing_lost import ENV, GOC

PRIORS = ["priors", "--steps", "4", "--classes", "0,1", "--batch-size", "1"]
ROUTER = ["train-router", "--steps", "4", "--train-steps", "3", "--batch-size", "2"]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-digits")


@pytest.fixture
def other_weights(tiny, tmp_path):
    """tiny-digits' weights with one value changed, as a .safetensors file (what --ckpt would point at)."""
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    state["final_layer.linear.bias"][0] += 1.0
    path = tmp_path / "other.safetensors"
    save_file(state, str(path))
    assert state_dict_sha256(state) != state_dict_sha256(tiny.state_dict())
    return path


def test_a_second_priors_process_on_the_same_out_stops_at_once(tmp_path):
    out = tmp_path / "p.safetensors"
    with output_lock(out):  # a first `goc priors` holds it
        result = subprocess.run([*GOC, *PRIORS, "--out", str(out)], env=ENV, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"another process is writing {str(out)!r}" in result.stderr
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


@pytest.mark.parametrize("argv, name", [(PRIORS, "p.safetensors"), (ROUTER, "r.pt")], ids=["priors", "train-router"])
def test_one_writer_per_out_then_the_lock_is_released(argv, name, tmp_path, capsys):
    out = tmp_path / name
    with output_lock(out):
        run_bad_input([*argv, "--out", str(out)], "another process is writing", capsys)
    assert not out.exists()
    assert main([*argv, "--out", str(out)]) == 0 and out.exists()


def test_a_merge_into_an_out_being_written_stops_at_once(tmp_path, capsys):
    shard = tmp_path / "shard.safetensors"
    assert main([*PRIORS, "--out", str(shard)]) == 0
    capsys.readouterr()
    out = tmp_path / "m.safetensors"
    with output_lock(out):
        run_bad_input(["priors", "--merge", str(shard), "--out", str(out)], "another process is writing", capsys)
    assert not out.exists()


def test_priors_resume_refuses_a_partial_of_other_weights(tiny, other_weights, tmp_path, capsys):
    out = tmp_path / "p.safetensors"
    partial = out.with_name(out.name + ".partial")
    extract_priors(tiny, "tiny-digits", [0, 1], steps=4, batch_size=1, progress=False, checkpoint=partial,
                   checkpoint_seconds=0)  # fmt: skip
    assert partial.is_file()  # one batch of two done, as after a kill
    saved = partial.read_bytes()
    run_bad_input([*PRIORS, "--ckpt", str(other_weights), "--out", str(out)],
                  "from an extraction with other model weights (--ckpt); rerun with the same weights to resume, "
                  "or delete it to start over", capsys)  # fmt: skip
    assert partial.read_bytes() == saved and not out.exists()
    assert main([*PRIORS, "--out", str(out)]) == 0  # the same weights resume it
    assert not partial.exists()
    whole = extract_priors(tiny, "tiny-digits", [0, 1], steps=4, batch_size=1, progress=False)
    assert (PriorStats.load(out).sum_feature == whole.sum_feature).all()


def test_router_resume_refuses_a_partial_of_other_weights(tiny, other_weights, tmp_path, capsys):
    out = tmp_path / "r.pt"
    partial = out.with_name(out.name + ".partial")
    config = RouterTrainConfig(steps=4, train_steps=3, batch_size=2)
    train_router(tiny, tensor_batches(*load_digits_tensors()), config, progress=False, checkpoint=partial,
                 checkpoint_seconds=0)  # fmt: skip
    assert partial.is_file()
    saved = partial.read_bytes()
    run_bad_input([*ROUTER, "--ckpt", str(other_weights), "--out", str(out)],
                  "from a run with other model weights (--ckpt); rerun with the same weights to resume, or delete it "
                  "to start over", capsys)  # fmt: skip
    assert partial.read_bytes() == saved and not out.exists()
    state = torch.load(partial, weights_only=True)
    assert state["weights"] == state_dict_sha256(tiny.state_dict())
    assert main([*ROUTER, "--out", str(out)]) == 0 and not partial.exists()
