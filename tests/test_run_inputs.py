"""A resumed ``goc eval-sample`` run reads the contents its first part read: its ``run.json`` records the sha256 of
the DiT's weights, the schedule a method resolved to (an L2C router's decisions) and a TCC pack, and a rerun whose
file changed in place is refused in one line, before any sample. Runs recorded before these digests resume."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from goc_utils import paths
from goc_utils.cache.tcc import TCCPack, default_pack_path
from goc_utils.cli import main
from goc_utils.errors import InvalidArgumentError
from goc_utils.evaluation.sampling import read_manifest
from goc_utils.evaluation.verdicts import check_same_noise
from tests.conftest import run_bad_input

ARGV = ["eval-sample", "--model", "tiny-digits", "--per-device-batch", "4", "--steps", "20", "--device", "cpu"]


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setattr(
        "goc_utils.evaluation.sampling.tqdm", lambda *args, **kwargs: tqdm(*args, **{**kwargs, "disable": True})
    )


def _sample(extra: list[str], out, count: int) -> int:
    return main([*ARGV, *extra, "--num-samples", str(count), "--out", str(out)])


def test_weights_changed_in_place_are_refused_and_the_same_ones_resume(tmp_path, capsys):
    ckpt = tmp_path / "dit.safetensors"
    shutil.copy(paths.TINY_DIGITS_WEIGHTS, ckpt)
    out = tmp_path / "run"
    assert _sample(["--ckpt", str(ckpt)], out, 4) == 0
    inputs = read_manifest(out)["inputs"]
    assert sorted(inputs) == ["schedule", "weights"] and all(len(v) == 64 for v in inputs.values())
    weights = load_file(ckpt)
    name = next(iter(weights))
    save_file({**weights, name: weights[name] * 1.01}, ckpt)  # retrained in place
    capsys.readouterr()
    argv = [*ARGV, "--ckpt", str(ckpt), "--num-samples", "8", "--out", str(out)]
    run_bad_input(argv, "sampled with weights of sha256", capsys)
    assert not (out / "shards" / "00000004.npz").exists()
    save_file(weights, ckpt)  # restored: the run resumes
    assert _sample(["--ckpt", str(ckpt)], out, 8) == 0
    assert read_manifest(out)["samples"]["count"] == 8


def test_a_router_whose_decisions_changed_is_refused(tmp_path, capsys):
    router = tmp_path / "router.pt"
    shutil.copy(paths.DATA_DIR / "routers" / "tiny_digits_ddim20.pt", router)
    out = tmp_path / "run"
    assert _sample(["--method", "l2c", "--router", str(router)], out, 4) == 0
    obj = torch.load(router, weights_only=False)
    obj["routers"] = {k: -v for k, v in obj["routers"].items()}  # every decision flipped
    torch.save(obj, router)
    capsys.readouterr()
    argv = [*ARGV, "--method", "l2c", "--router", str(router), "--num-samples", "8", "--out", str(out)]
    run_bad_input(argv, "with schedule of sha256", capsys)


def test_a_tcc_pack_refitted_in_place_is_refused(tmp_path, capsys):
    pack = tmp_path / "pack.safetensors"
    shutil.copy(default_pack_path("tiny-digits", 20, 1.5, "fora-50", "class"), pack)
    out = tmp_path / "run"
    extra = ["--method", "fora-50+tcc", "--tcc-pack", str(pack)]
    assert _sample(extra, out, 4) == 0
    assert "compensator_pack" in read_manifest(out)["inputs"]
    loaded = TCCPack.load(pack)
    loaded.mu_a = loaded.mu_a + 0.01
    loaded.save(pack)
    capsys.readouterr()
    run_bad_input([*ARGV, *extra, "--num-samples", "8", "--out", str(out)], "with compensator_pack of sha256", capsys)


def test_a_run_recorded_before_the_digests_still_resumes(tmp_path):
    out = tmp_path / "run"
    assert _sample([], out, 4) == 0
    stored = json.loads((out / "run.json").read_text())
    del stored["inputs"]
    (out / "run.json").write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")
    assert _sample([], out, 8) == 0
    assert read_manifest(out)["samples"]["count"] == 8 and "inputs" not in read_manifest(out)


def test_samples_of_other_weights_are_not_compared_image_by_image(tmp_path):
    settings = {"model": "tiny-digits", "ckpt": "w.safetensors", "steps": 20, "seed": 0}
    roles = {}
    for role, weights in [("A", "a" * 64), ("B", "b" * 64), ("old", None)]:
        (tmp_path / role).mkdir()
        inputs = {} if weights is None else {"inputs": {"weights": weights, "schedule": role}}
        (tmp_path / role / "run.json").write_text(json.dumps({**settings, **inputs}))
        roles[role] = tmp_path / role / "samples.npz"
    with pytest.raises(InvalidArgumentError, match=r"^A was sampled with inputs.weights=aaaa.* but B with inputs"):
        check_same_noise({"A": roles["A"], "B": roles["B"]})
    check_same_noise({"A": roles["A"], "old": roles["old"]})  # a run recorded before the digests: settings only


def test_a_run_json_that_does_not_record_a_same_noise_setting_is_refused(tmp_path):
    roles = {}
    for role, manifest in [("A", {"model": "tiny-digits", "seed": 0}), ("B", {"model": "tiny-digits"})]:
        (tmp_path / role).mkdir()
        (tmp_path / role / "run.json").write_text(json.dumps(manifest))
        roles[role] = tmp_path / role / "samples.npz"
    with pytest.raises(InvalidArgumentError, match=r"^B's run.json does not record seed, which A's records \(0\)"):
        check_same_noise(roles)
