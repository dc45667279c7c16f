"""Sampling at scale (per-sample seeds, shards, resume, torchrun) and the `goc eval` / `goc fid` commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from goc_utils import paths
from goc_utils.cache import CacheMethod, Resources, RunShape, resolve_method, without_router
from goc_utils.cli import main
from goc_utils.errors import InvalidArgumentError
from goc_utils.evaluation.eval import EvalSettings, eval_sample, method_folder, parse_methods, read_results
from goc_utils.evaluation.sampling import SAMPLES_NAME, Distributed, NpzRun, sample_to_npz, write_npz
from goc_utils.model.checkpoints import load_model
from goc_utils.model.sampler import per_sample_inputs

GOC = [sys.executable, "-m", "goc_utils.cli"]
ENV = {**os.environ, "PYTHONPATH": str(paths.PROJECT_ROOT), "OMP_NUM_THREADS": "1"}


def _run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-digits")


def test_per_sample_inputs_do_not_depend_on_the_batch(tiny):
    labels, noise = per_sample_inputs(tiny, range(10), seed=3)
    tail_labels, tail_noise = per_sample_inputs(tiny, range(6, 10), seed=3)
    assert labels[6:] == tail_labels and np.array_equal(noise[6:].numpy(), tail_noise.numpy())
    other_labels, other_noise = per_sample_inputs(tiny, range(10), seed=4)
    assert not np.array_equal(noise.numpy(), other_noise.numpy())
    many, _ = per_sample_inputs(tiny, range(400), seed=0)
    assert set(many) == set(range(10))  # labels spread over every class


def _run4(num_samples, batch):
    return NpzRun(num_samples, batch, {"run": 1}, steps=4)


def test_sample_to_npz_same_bytes_for_any_batch_and_process_split(tiny, tmp_path):
    one = sample_to_npz(tiny, tmp_path / "a", _run4(10, 4), progress=False)
    data = np.load(one)
    assert data["arr_0"].shape == (10, 8, 8, 1) and data["arr_0"].dtype == np.uint8 and data["arr_1"].shape == (10,)
    assert sorted(p.name for p in (tmp_path / "a" / "shards").iterdir()) == [
        "00000000.npz",
        "00000004.npz",
        "00000008.npz",
    ]
    # two "processes" run sequentially: rank 1 first writes its shard, rank 0 then writes its own and merges
    sample_to_npz(tiny, tmp_path / "b", _run4(10, 4), dist=Distributed(rank=1, world=2), progress=False)
    assert not (tmp_path / "b" / SAMPLES_NAME).exists()  # only rank 0 merges
    two = sample_to_npz(tiny, tmp_path / "b", _run4(10, 4), dist=Distributed(rank=0, world=2), progress=False)
    assert one.read_bytes() == two.read_bytes()
    assert sample_to_npz(tiny, tmp_path / "c", _run4(10, 3), progress=False).read_bytes() == one.read_bytes()


def test_resume_redoes_only_missing_or_torn_shards(tiny, tmp_path):
    clean = sample_to_npz(tiny, tmp_path / "clean", _run4(12, 4), progress=False).read_bytes()
    out = tmp_path / "broken"
    sample_to_npz(tiny, out, _run4(12, 4), progress=False)
    (out / SAMPLES_NAME).unlink()
    (out / "shards" / "00000004.npz").write_bytes(b"torn")  # a shard cut short
    (out / "shards" / "00000008.npz").unlink()
    (out / "shards" / "00000008.npz.tmp").write_bytes(b"partial")  # killed mid-write
    first = (out / "shards" / "00000000.npz").stat().st_mtime_ns
    assert sample_to_npz(tiny, out, _run4(12, 4), progress=False).read_bytes() == clean
    assert (out / "shards" / "00000000.npz").stat().st_mtime_ns == first  # complete shards are kept


def test_finished_run_is_not_rewritten_and_features_are_reused(tiny, tmp_path, monkeypatch):
    from goc_utils.evaluation.metrics import features

    settings = EvalSettings(steps=4, per_device_batch=4)
    path = eval_sample(tiny, settings, "none", tmp_path, 8, progress=False)
    stamp = path.stat().st_mtime_ns
    assert eval_sample(tiny, settings, "none", tmp_path, 8, progress=False).stat().st_mtime_ns == stamp
    extractor = features.build_extractor("digits")
    first = features.extract_cached(path, extractor, progress=False)
    monkeypatch.setattr(features, "extract", lambda *a, **k: pytest.fail("features were recomputed"))
    again = features.extract_cached(path, extractor, progress=False)
    assert np.array_equal(first.pool, again.pool) and np.array_equal(first.logits, again.logits)
    monkeypatch.undo()
    extractor.network.head.bias.data += 1.0  # other weights: the cache no longer applies
    changed = features.extract_cached(path, extractor, progress=False)
    assert not np.array_equal(changed.logits, first.logits)


def test_rerun_with_other_settings_is_refused_but_more_samples_extend(tiny, tmp_path):
    settings = EvalSettings(steps=4, per_device_batch=4, cfg_scale=1.5)
    eval_sample(tiny, settings, "fora-50", tmp_path, 8, progress=False)
    with pytest.raises(InvalidArgumentError, match="cfg_scale=1.5 .*this one: 4.0.*new --out"):
        eval_sample(
            tiny, EvalSettings(steps=4, per_device_batch=4, cfg_scale=4.0), "fora-50", tmp_path, 8, progress=False
        )
    with pytest.raises(InvalidArgumentError, match="method='fora-50'"):
        eval_sample(tiny, settings, "fora-25", tmp_path, 8, progress=False)
    grown = np.load(eval_sample(tiny, settings, "fora-50", tmp_path, 12, progress=False))["arr_0"]
    fresh = np.load(eval_sample(tiny, settings, "fora-50", tmp_path / "fresh", 12, progress=False))["arr_0"]
    assert np.array_equal(grown, fresh)


def test_method_strings():
    assert parse_methods("none, fora-50+goc,l2c:data/r.pt@0.2+goc:w=0.8") == [
        "none",
        "fora-50+goc",
        "l2c:data/r.pt@0.2+goc:w=0.8",
    ]
    assert method_folder("l2c:data/r.pt@0.2+goc:w=0.8") == "l2c-data_r.pt@0.2+goc-w=0.8"
    assert CacheMethod.parse("l2c+goc").compensator_options == {}  # block coupling by default
    unit = CacheMethod.parse("l2c+goc:auto:coupling=unit")
    assert unit.compensator_options == {"weight": "auto", "correction_steps": "auto", "coupling": "unit"}
    assert unit.label() == "l2c+goc:auto:coupling=unit"
    # every schedule the CLI builds is one string; the short forms still work
    assert CacheMethod.parse("fora:interval=2:range=2-18").schedule_options == {"interval": 2, "start": 2, "stop": 18}
    assert CacheMethod.parse("matrix:path=m.csv").schedule_options == {"path": "m.csv"}
    for text in ("l2c:router=r.pt:thres=0.2", "l2c:r.pt@0.2"):
        assert CacheMethod.parse(text).schedule_options == {"router": "r.pt", "thres": 0.2}
    router = str(paths.TINY_DIGITS_ROUTER)  # the caller's router fills in what the string leaves out
    resolved = resolve_method("l2c@0.3", RunShape(steps=20, depth=12), Resources(router=router))
    assert resolved.schedule_options == {"router": router, "thres": 0.3}
    with pytest.raises(InvalidArgumentError, match="needs a Learning-to-Cache router: pass --router PATH"):
        resolve_method("l2c@0.3", RunShape(steps=20, depth=12))  # parsed without one, refused when resolved
    assert CacheMethod.parse("fora-25+taylor:k=2").compensator_options == {"order": 2}
    assert parse_methods("none,fora-50+goc:steps=3,5,7,l2c+goc") == ["none", "fora-50+goc:steps=3,5,7", "l2c+goc"]
    kept, skipped = without_router(["none", "l2c", "l2c:r.pt+goc", "fora-50"], None)
    assert (kept, skipped) == (["none", "l2c:r.pt+goc", "fora-50"], ["l2c"])
    with pytest.raises(InvalidArgumentError, match="malformed step list"):
        parse_methods("fora-50+goc:steps=3,,x", single=True)
    with pytest.raises(InvalidArgumentError, match="takes one method"):
        parse_methods("none,fora-50", single=True)
    for bad, message in [
        ("fora-51", "unknown method"),
        ("fora-50+goc:x=1", "unknown option"),
        ("", "empty method list"),
        ("fora-50+goc:coupling=blocks", "coupling must be one of block, unit"),
        ("fora:intervall=3", "unknown option 'intervall=3' for schedule 'fora'"),
    ]:
        with pytest.raises(InvalidArgumentError, match=message):
            parse_methods(bad)
    with pytest.raises(InvalidArgumentError, match="twice"):
        parse_methods("none,none")


@pytest.mark.slow
def test_kill_9_then_rerun_gives_the_uninterrupted_bytes(tmp_path):
    args = ["eval-sample", "--num-samples", "40", "--per-device-batch", "2", "--steps", "60", "--device", "cpu"]
    subprocess.run([*GOC, *args, "--out", str(tmp_path / "whole")], env=ENV, check=True, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [*GOC, *args, "--out", str(out)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "shards").glob("*.npz"))) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / "shards").glob("*.npz")))
    assert 3 <= done < 20 and not (out / SAMPLES_NAME).exists()  # really stopped mid-run
    subprocess.run([*GOC, *args, "--out", str(out)], env=ENV, check=True, capture_output=True)
    assert (out / SAMPLES_NAME).read_bytes() == (tmp_path / "whole" / SAMPLES_NAME).read_bytes()


@pytest.mark.slow
def test_torchrun_two_gloo_processes_equal_one_process(tmp_path):
    args = ["eval-sample", "--method", "fora-50+goc", "--num-samples", "14", "--per-device-batch", "4", "--steps", "6",
            "--device", "cpu"]  # fmt: skip
    subprocess.run([*GOC, *args, "--out", str(tmp_path / "one")], env=ENV, check=True, capture_output=True)
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533", "-m",
           "goc_utils.cli", *args, "--out", str(tmp_path / "two")]  # fmt: skip
    result = subprocess.run(run, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "two" / SAMPLES_NAME).read_bytes() == (tmp_path / "one" / SAMPLES_NAME).read_bytes()


def test_goc_eval_table_and_goc_fid(tmp_path, capsys):
    code, out, err = _run(
        ["eval", "--methods", "none,fora-50,fora-50+goc", "--num-samples", "24", "--per-device-batch", "12",
         "--steps", "6", "--cfg-scale", "1.5,4", "--latency-repeats", "1", "--latency-batch", "2",
         "--out", str(tmp_path)],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    rows = read_results(tmp_path / "results.csv")
    assert [(r["method"], r["cfg_scale"]) for r in rows] == [
        (m, c) for c in (1.5, 4.0) for m in ("none", "fora-50", "fora-50+goc")
    ]
    none, fora = rows[0], rows[1]
    assert none["psnr_vs_none"] == float("inf") and none["ssim_vs_none"] == pytest.approx(1.0)
    assert np.isfinite(fora["psnr_vs_none"]) and fora["ssim_vs_none"] < 1
    assert fora["cache_ratio"] == pytest.approx(0.5) and fora["macs_speedup"] > 1.8
    assert all(r["samples"] == 24 and r["fid"] > 0 and 0 <= r["precision"] <= 1 for r in rows)
    assert "| fora-50+goc | 4 | 24 |" in (tmp_path / "results.md").read_text()
    # goc fid on the samples the table scored gives the table's numbers
    samples = tmp_path / "cfg1.5" / "fora-50" / SAMPLES_NAME
    code, out, _ = _run(["fid", str(paths.DIGITS_REFERENCE_BATCH), str(samples), "--features", "digits"], capsys)
    assert code == 0
    printed = dict(line.split(": ") for line in out.strip().splitlines())
    assert float(printed["FID"]) == pytest.approx(fora["fid"], abs=0.005 + 1e-9)  # the table keeps 2 decimals
    assert float(printed["Recall"]) == pytest.approx(fora["recall"], abs=0.0005 + 1e-9)  # and 3 for ratios


def test_eval_commands_fail_in_one_line(tmp_path, capsys):
    write_npz(tmp_path / "x.npz", images=np.zeros((4, 8, 8, 1), np.uint8))
    write_npz(tmp_path / "plain.npz", arr_0=np.zeros((4, 8, 8, 1), np.uint8))  # a batch that names no features
    cases = [
        (["fid", str(tmp_path / "x.npz"), str(paths.DIGITS_REFERENCE_BATCH), "--features", "digits"], "no arr_0"),
        (["eval", "--methods", "fora-50+magic", "--out", str(tmp_path / "o")], "unknown method"),
        (["eval", "--model", "DiT-S/8", "--out", str(tmp_path / "o")], "--ref-batch is required"),
        (["eval-sample", "--method", "none,fora-50", "--out", str(tmp_path / "o")], "takes one method"),
        (["eval-sample", "--num-samples", "0", "--out", str(tmp_path / "o")], "--num-samples must be >= 1"),
        (["fid", str(tmp_path / "plain.npz"), str(paths.DIGITS_REFERENCE_BATCH)], "Inception weights needed"),
    ]
    for argv, message in cases:
        env_weights = os.environ.pop("GOC_INCEPTION_WEIGHTS", None)
        code, _, err = _run(argv, capsys)
        if env_weights is not None:
            os.environ["GOC_INCEPTION_WEIGHTS"] = env_weights
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not Path(tmp_path / "o" / SAMPLES_NAME).exists()


@pytest.mark.slow
def test_committed_table_bytes_do_not_depend_on_the_thread_count(tmp_path):
    """What `make study` commits is rounded so that CPU-dependent float differences do not reach the bytes."""
    import torch

    from goc_utils.evaluation.eval import EvalSettings, Scoring, run_eval, write_results
    from goc_utils.evaluation.metrics.features import build_extractor

    model, extractor = load_model("tiny-digits"), build_extractor("digits", "cpu", None)
    settings = EvalSettings(
        model="tiny-digits", cfg_scale=1.5, per_device_batch=16, router=str(paths.TINY_DIGITS_ROUTER)
    )
    methods = ["none", "fora-50+goc", "l2c+goc"]
    threads, tables = torch.get_num_threads(), []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            scoring = Scoring(paths.DIGITS_REFERENCE_BATCH, extractor, latency_batch=2, latency_repeats=1,
                              fid_bootstrap=5)  # fmt: skip
            rows = run_eval(model, settings, methods, 32, tmp_path / f"threads{n}", scoring, progress=False)
            csv_path, md_path = write_results(rows, tmp_path, f"table{n}", timing=False)
            tables.append((csv_path.read_bytes(), md_path.read_bytes()))
    finally:
        torch.set_num_threads(threads)
    assert tables[0] == tables[1]
    header, first = tables[0][0].decode().splitlines()[:2]
    assert "latency_s" not in header and first.startswith("none,1.5,32,")
    assert all(len(cell.split(".")[1]) <= 4 for cell in first.split(",") if "." in cell and cell[0].isdigit())
