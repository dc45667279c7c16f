"""Bad priors files, resume checkpoints, router files, schedule matrices and router-training data: one line on
stderr, exit status 2, no warning, no traceback, no code run (table-driven; each row was a traceback, a huge
allocation, silently doubled sums, a multi-line warning or a misleading message before)."""

from __future__ import annotations

import json
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from goc_utils.cli import main
from goc_utils.priors.stats import STAT_NAMES, PriorStats
from tests.conftest import router_file, run_bad_input

PRIORS = "data/priors/tiny-digits_ddim20_cfg4.safetensors"
LONG = "/" + "x" * 5000


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch RAN",))


def _small_priors() -> PriorStats:
    """A valid two-sample priors file's statistics (4 steps, 2 blocks, 4 tokens of 8)."""
    stats = PriorStats("tiny-digits", 4, 4.0, 2, 4, 8, [0, 1], [0, 0])
    stats.count = stats.gram_count = 2
    rng = np.random.default_rng(0)
    for name in STAT_NAMES:
        setattr(stats, name, rng.random(getattr(stats, name).shape))
    return stats


def _write_priors(path, header=None, tensors=None, raw_header=None):
    """A priors file with the header fields in ``header`` replaced and the tensors in ``tensors`` replaced (None
    removes one), or with ``raw_header`` as its header text."""
    stats = _small_priors()
    arrays = {name: torch.from_numpy(getattr(stats, name)) for name in STAT_NAMES}
    for name, value in (tensors or {}).items():
        if value is None:
            del arrays[name]
        else:
            arrays[name] = value
    text = raw_header if raw_header is not None else json.dumps(stats.header() | (header or {}))
    save_file(arrays, str(path), {"goc_priors": text})
    return path


def _files(tmp_path):
    """The bad files the table refers to by name."""
    made = {}
    nan = torch.from_numpy(_small_priors().sum_feature).clone()
    nan[1, 0, 0, 0, 0] = float("nan")
    inf = torch.from_numpy(_small_priors().sum_gram).clone()
    inf[0, 0, 0, 0] = float("inf")
    priors = {
        "P_LIST": {"raw_header": "[1, 2, 3]"},
        "P_NOT_JSON": {"raw_header": "{steps: 4"},
        "P_HUGE_HIDDEN": {"header": {"hidden": 2**60}},
        "P_NEGATIVE_STEPS": {"header": {"steps": -3}},
        "P_COUNT_MANY": {"header": {"count": "many"}},
        "P_CLASSES_5": {"header": {"classes": 5}},
        "P_COUNT_0": {"header": {"count": 0, "gram_count": 0, "classes": [], "seeds": []}},
        "P_COUNT_WRONG": {"header": {"count": 3, "gram_count": 3}},
        "P_CFG_TEXT": {"header": {"cfg_scale": "4"}},
        "P_EXTRA": {"tensors": {"evil": torch.zeros(1)}},
        "P_MISSING": {"tensors": {"sum_l2": None}},
        "P_SHAPE": {"tensors": {"sum_abs": torch.zeros(4, 2, 2, dtype=torch.float64)}},
        "P_INT": {"tensors": {"sum_abs": torch.zeros(4, 2, 3, dtype=torch.int64)}},
        "P_NAN": {"tensors": {"sum_feature": nan}},
        "P_INF": {"tensors": {"sum_gram": inf}},
    }
    for name, spec in priors.items():
        made[name] = _write_priors(tmp_path / f"{name.lower()}.safetensors", **spec)
    made["P_GOOD"] = _small_priors().save(tmp_path / "good.safetensors")
    made["P_LINK"] = tmp_path / "link.safetensors"
    made["P_LINK"].symlink_to(made["P_GOOD"])
    made["P_COPY"] = tmp_path / "copy.safetensors"
    made["P_COPY"].write_bytes(made["P_GOOD"].read_bytes())
    made["A_FIFO"] = tmp_path / "fifo"
    os.mkfifo(made["A_FIFO"])
    made["A_DANGLING"] = tmp_path / "dangling.pt"
    made["A_DANGLING"].symlink_to(tmp_path / "nowhere")
    made["A_FOLDER"] = tmp_path / "folder"
    made["A_FOLDER"].mkdir()
    made["A_FILE"] = tmp_path / "a_file"
    made["A_FILE"].write_text("not a folder")
    made["ROUTER_COMPLEX"] = tmp_path / "complex.pt"
    torch.save({"routers": {f"{k}.prob": torch.ones(24, dtype=torch.complex64) for k in range(20)}},
               made["ROUTER_COMPLEX"])  # fmt: skip
    made["RAW_PICKLE"] = tmp_path / "raw.pt"
    made["RAW_PICKLE"].write_bytes(pickle.dumps({"routers": _RunsCode()}))
    made["EMPTY_CSV"] = tmp_path / "empty.csv"
    made["EMPTY_CSV"].write_text("")
    made["EMPTY_JSON"] = tmp_path / "empty.json"
    made["EMPTY_JSON"].write_text("[[]]")
    made["SPARSE_CSV"] = tmp_path / "sparse.csv"
    with open(made["SPARSE_CSV"], "wb") as f:
        f.truncate(1 << 30)  # 1 GiB of holes: no disk used
    return made


def _partials(tmp_path):
    """Garbage where a resume checkpoint is expected."""
    return {
        "JSON_LIST": b"[1, 2, 3]",
        "EMPTY": b"",
        "RANDOM": np.random.default_rng(0).bytes(4096),
        "PICKLE": pickle.dumps({"config": _RunsCode()}),
        "PRIORS_AS_ROUTER": _small_priors().save(tmp_path / "s.safetensors").read_bytes(),
    }


SAMPLE = ["sample", "--steps", "20", "--classes", "1", "--out", "OUT/g.png"]
EVAL = ["eval-sample", "--steps", "20", "--num-samples", "2", "--out", "OUT"]
PRIORS_RUN = ["priors", "--steps", "4", "--classes", "0", "--out", "OUT/p.safetensors"]
ROUTER_RUN = ["train-router", "--steps", "4", "--train-steps", "2", "--batch-size", "2", "--out", "OUT/r.pt"]
XL_ROUTER = ["train-router", "--model", "DiT-XL/2", "--out", "OUT/r.pt", "--data"]

PRIORS_CASES = [
    ("P_LIST", "has a header that is a JSON list, not an object"),
    ("P_NOT_JSON", "has a header that is not JSON"),
    ("P_HUGE_HIDDEN", "has tensor sum_feature of shape (4, 2, 3, 4, 8), but its header"),
    ("P_NEGATIVE_STEPS", "header field steps = -3, which must be an integer in 1..1000"),
    ("P_COUNT_MANY", 'header field count = "many", which must be an integer >= 1'),
    ("P_CLASSES_5", "header field classes = 5, which must be a list of 2 class ids"),
    ("P_COUNT_0", "header field count = 0, which must be an integer >= 1"),
    ("P_COUNT_WRONG", "header field classes = [0, 1], which must be a list of 3 class ids"),
    ("P_CFG_TEXT", 'header field cfg_scale = "4", which must be a finite number'),
    ("P_EXTRA", "holds a tensor 'evil' that no priors file has"),
    ("P_MISSING", "lacks the tensor(s) sum_l2"),
    ("P_SHAPE", "has tensor sum_abs of shape (4, 2, 2)"),
    ("P_INT", "has tensor sum_abs of dtype I64"),
    ("P_NAN", "holds NaN or infinite values in sum_feature"),
    ("P_INF", "holds NaN or infinite values in sum_gram"),
]
CASES = [
    # item 4: every priors file is checked in one place, whoever reads it
    *[(["inflections", name], message) for name, message in PRIORS_CASES],
    (["priors", "--merge", "P_GOOD", "P_NAN", "--out", "OUT/m.safetensors"], "holds NaN or infinite values"),
    (["priors", "--merge", "P_HUGE_HIDDEN", "P_GOOD", "--out", "OUT/m.safetensors"], "but its header"),
    ([*SAMPLE[:-2], "--compensator", "goc", "--goc-steps", "auto", "--priors", "P_INF", "--out", "OUT/g.png"],
     "holds NaN or infinite values in sum_gram"),  # fmt: skip
    # item 8 (end): what the priors path is
    (["inflections", "A_FOLDER"], "priors file 'A_FOLDER' is a folder, not a file"),
    (["inflections", "A_FIFO"], "is not a regular file (a device, FIFO or socket)"),
    (["inflections", "/dev/zero"], "priors file '/dev/zero' is not a regular file"),
    (["inflections", LONG], "has a name of 5,001 characters"),
    # item 3: one shard once
    (["priors", "--merge", "P_GOOD", "P_GOOD", "--out", "OUT/m.safetensors"], "lists the file 'P_GOOD' twice"),
    (["priors", "--merge", "P_GOOD", "P_LINK", "--out", "OUT/m.safetensors"], "twice (also as 'P_LINK')"),
    (["priors", "--merge", "P_GOOD", "P_COPY", "--out", "OUT/m.safetensors"], "2 of the 2 samples to add are already"),
    ([*PRIORS_RUN[:-4], "--classes", "3,5,3", "--out", "OUT/p.safetensors"], "class 3 is listed twice"),
    (["priors", "--merge", "P_GOOD", "A_FIFO", "--out", "OUT/m.safetensors"], "--merge file 'A_FIFO' is not a"),
    # item 7: --data is refused where it would be ignored, and checked before any model is loaded
    (["train-router", "--data", "A_FOLDER", "--out", "OUT/r.pt"], "--data is not used for tiny-digits"),
    (["train-router", "--model", "tiny-fashion", "--data", "A_FOLDER", "--out", "OUT/r.pt"], "not used for tiny-fa"),
    ([*XL_ROUTER, "/nonexistent"], "image folder '/nonexistent' does not exist"),
    ([*XL_ROUTER, "A_FILE"], "image folder 'A_FILE' is a file, not a folder"),
    ([*XL_ROUTER, "A_FOLDER"], "Couldn't find any class folder"),
    ([*XL_ROUTER, LONG], "has a name of 5,001 characters, longer than the system allows; pass --data DIR"),
    # item 8: router files
    ([*SAMPLE, "--cache", "l2c", "--router", "A_FOLDER"], "router file 'A_FOLDER' is a folder, not a file"),
    ([*SAMPLE, "--cache", "l2c", "--router", "/dev/zero"], "router file '/dev/zero' is not a regular file"),
    ([*SAMPLE, "--cache", "l2c", "--router", "A_FIFO"], "is not a regular file (a device, FIFO or socket)"),
    ([*SAMPLE, "--cache", "l2c", "--router", "A_DANGLING"], "is a symbolic link to nothing"),
    ([*EVAL, "--method", f"l2c:router={LONG}"], "router file '/xxx"),
    ([*SAMPLE, "--cache", "l2c", "--router", "ROUTER_COMPLEX"], "holds torch.complex64 values"),
    ([*SAMPLE, "--cache", "l2c", "--router", "RAW_PICKLE"], "cannot read router file"),
    # item 8: schedule matrices
    ([*SAMPLE, "--cache", "matrix", "--matrix", "A_FOLDER"], "schedule matrix 'A_FOLDER' is a folder"),
    ([*SAMPLE, "--cache", "matrix", "--matrix", "/dev/zero"], "is not a regular file"),
    ([*SAMPLE, "--cache", "matrix", "--matrix", "A_FIFO"], "is not a regular file"),
    ([*SAMPLE, "--cache", "matrix", "--matrix", "A_DANGLING"], "is a symbolic link to nothing"),
    ([*EVAL, "--method", f"matrix:path={LONG}"], "has a name of 5,001 characters"),
    ([*SAMPLE, "--cache", "matrix", "--matrix", "EMPTY_CSV"], "holds no values"),
    ([*SAMPLE, "--cache", "matrix", "--matrix", "EMPTY_JSON"], "holds no values"),
    ([*SAMPLE, "--cache", "matrix", "--matrix", "SPARSE_CSV"], "is 1 GiB, more than a schedule matrix can be"),
]
PARTIAL_CASES = [
    # items 6 and 4: garbage where a resume checkpoint is expected says how to restart
    *[([*PRIORS_RUN], kind, "delete it to start over") for kind in ("JSON_LIST", "EMPTY", "RANDOM", "PICKLE")],
    *[([*ROUTER_RUN], kind, "delete it to start over") for kind in ("JSON_LIST", "EMPTY", "RANDOM", "PICKLE")],
    ([*ROUTER_RUN], "PRIORS_AS_ROUTER", "delete it to start over"),
    ([*PRIORS_RUN], "A_FOLDER", "checkpoint 'OUT/p.safetensors.partial' is a folder, not a file; delete it"),
    ([*ROUTER_RUN], "A_FOLDER", "router checkpoint 'OUT/r.pt.partial' is a folder, not a file; delete it"),
    ([*PRIORS_RUN], "P_NAN", "holds NaN or infinite values in sum_feature; delete it to start over"),
    ([*PRIORS_RUN], "P_GOOD", "holds no resume state; delete it to start over"),
]


def _run(argv, message, tmp_path, capsys, out):
    """``run_bad_input`` that also promises that no warning (numpy's, torch's pickle advice) was shown."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_bad_input(argv, message, capsys, out)
    assert not caught, [f"{w.filename}: {str(w.message)[:200]}" for w in caught]


def _substitute(items, files, out):
    """Each argument (or message) with the names of ``_files`` replaced by their paths and OUT by ``out``."""
    replaced = []
    for item in items:
        for name in sorted(files, key=len, reverse=True):
            item = item.replace(name, str(files[name]))
        replaced.append(item.replace("OUT", str(out)))
    return replaced


@pytest.mark.parametrize("argv, message", CASES, ids=[f"{a[0]} {' '.join(a[-2:])[-50:]}" for a, _ in CASES])
def test_bad_input_is_one_line_with_exit_2(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a pickle that ran would leave RAN here
    files = {k: v.relative_to(tmp_path) for k, v in _files(tmp_path).items()}
    out = tmp_path / "out"
    _run(_substitute(argv, files, "out"), _substitute([message], files, "out")[0], tmp_path, capsys, out)
    assert not (tmp_path / "RAN").exists()
    assert not list(out.glob("*.safetensors")) and not list(out.glob("*.pt"))


@pytest.mark.parametrize("argv, kind, message", PARTIAL_CASES, ids=[f"{a[0]} {k}" for a, k, _ in PARTIAL_CASES])
def test_a_bad_partial_says_how_to_restart(argv, kind, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = {k: v.relative_to(tmp_path) for k, v in _files(tmp_path).items()}
    target = _substitute([argv[-1]], files, "out")[0]
    partial = tmp_path / (target + ".partial")
    partial.parent.mkdir()
    if kind == "A_FOLDER":
        partial.mkdir()
    elif kind in files:
        partial.write_bytes((tmp_path / files[kind]).read_bytes())
    else:
        partial.write_bytes(_partials(tmp_path)[kind])
    _run(_substitute(argv, files, "out"), _substitute([message], files, "out")[0], tmp_path, capsys, None)
    assert not (tmp_path / "RAN").exists() and not (tmp_path / target).exists()
    assert partial.exists()  # the user decides what to delete


def test_inflections_with_a_router_that_reuses_nothing_prints_the_table(tmp_path, capsys):
    router = router_file(tmp_path / "all.pt", np.full((20, 24), 5.0))  # every score > 0.1: every unit recomputed
    priors = os.path.join(os.path.dirname(__file__), "..", PRIORS)
    assert main(["inflections", priors, "--schedule", "l2c", "--router", str(router)]) == 0
    out = capsys.readouterr().out
    assert "reuses at steps []" in out and "correction steps: (none)" in out
    assert "plain reuse 0.000 -> GOC 0.000 (nothing is reused, so nothing to correct)" in out
    assert main(["inflections", priors, "--schedule", "l2c", "--router", str(router), "--weight", "auto"]) == 0
    assert "nothing is reused" in capsys.readouterr().out


def test_a_valid_priors_file_still_loads_and_merges_disjoint_shards(tmp_path, capsys):
    stats = _small_priors()
    a = stats.save(tmp_path / "a.safetensors")
    stats.classes, stats.seeds = [2, 3], [0, 0]
    b = stats.save(tmp_path / "b.safetensors")
    out = tmp_path / "m.safetensors"
    assert main(["priors", "--merge", str(a), str(b), "--out", str(out)]) == 0
    merged = PriorStats.load(out)
    assert merged.count == 4 and merged.classes == [0, 1, 2, 3]
    np.testing.assert_array_equal(merged.sum_feature, 2 * _small_priors().sum_feature)
    path = _write_priors(tmp_path / "old.safetensors", {"gram_count": 0}, {"sum_gram": None})
    assert not PriorStats.load(path).has_gram  # files from before ``gram`` was recorded still load
