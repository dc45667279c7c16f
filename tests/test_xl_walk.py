"""docs/dit-xl2.md walked as a user would: every `goc` command of the page's fenced blocks runs, in order and in
process, on random-weight stand-ins of the user's files (DiT-XL/2's official checkpoint, an sd-vae folder, an L2C
router, the FID Inception, a reference batch), at the smallest settings, on the CPU. The page and the walk cannot drift
apart: the commands come from the page, only their paths and sizes are replaced."""

from __future__ import annotations

import argparse
import csv
import re
import shlex
import shutil
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import yaml

from goc_utils import paths
from goc_utils.cli import COMMANDS, build_parser, main
from goc_utils.evaluation.metrics.inception import random_inception
from goc_utils.model.presets import create_model
from goc_utils.model.vae import SD_VAE_CONFIG
from goc_utils.paths import PROJECT_ROOT
from tests.conftest import run_bad_input

PAGE = PROJECT_ROOT / "docs" / "dit-xl2.md"
PUBLISHED = PROJECT_ROOT / "docs" / "published_dit_xl2.csv"
PARAMS = "notebooks/params/xl.yaml"
STEPS = 4
"""Sampling steps of the walk: FORA-50 reuses steps 1 and 3 and GOC corrects step 3, the smallest run where GOC
differs from plain reuse (the stand-in router has this many routers)."""

SMALL = {"--device": "cpu", "--steps": str(STEPS), "--num-samples": "4", "--per-device-batch": "4", "--batch-size": "1"}
"""Flag values the walk shrinks (4 samples: the fewest precision / recall accept)."""

CLASSES = {"sample": "207", "priors": "0"}
"""``--classes`` of the walk per command: one image, one prior sample."""

PARSED_ONLY = {
    "eval": "all seven methods of the papers' table (its parts run: eval-sample, fid)",
    "notebooks": "every notebook on DiT-XL/2 (hours on a CPU); `--only 01` runs",
}
"""Commands of the page that the walk only parses: the command -> why (when it has no ``--only``)."""


def page_commands(text: str) -> list[list[str]]:
    """The goc arguments of every command in the page's fenced bash blocks (``goc ...`` and
    ``torchrun ... -m goc_utils.cli ...``), continuation lines joined, in page order."""
    commands = []
    for body in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "goc":
                commands.append(words[1:])
            elif words and words[0] == "torchrun":
                commands.append(words[words.index("goc_utils.cli") + 1 :])
    return commands


def value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def shrink(argv: list[str], files: dict[str, str]) -> list[str]:
    """``argv`` with the page's placeholder paths replaced by the stand-ins and its sizes by :data:`SMALL`."""
    small = SMALL | ({"--classes": CLASSES[argv[0]]} if argv[0] in CLASSES else {})
    out = [files.get(word, word) for word in argv]
    for i, word in enumerate(out[:-1]):
        if word in small:
            out[i + 1] = small[word]
    return out


def published_table() -> str:
    """The page's table of published numbers, rendered from docs/published_dit_xl2.csv."""
    rows = list(csv.reader(PUBLISHED.open()))
    lines = [
        "| setting | paper | NFE | IS | FID | sFID | precision (%) | recall (%) | latency (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows[1:]])


# ----------------------------------------------------------------------------- the page (fast)


def test_the_page_gives_every_step_of_the_xl_path_as_a_complete_command():
    commands = page_commands(PAGE.read_text())
    for argv in commands:
        assert argv[0] in COMMANDS, argv
        build_parser([argv[0]]).parse_args(argv)
    samples = {value(c, "--method"): c for c in commands if c[0] == "sample"}
    assert {"none", "fora-50+goc", "l2c+goc", "fora-50+goc:auto"} <= set(samples)
    assert value(samples["l2c+goc"], "--router") == "/data/DDIM20_router.pt"
    priors = [value(c, "--out") for c in commands if c[0] == "priors"]
    assert priors and value(samples["fora-50+goc:auto"], "--priors") in priors
    assert [value(c, "--classes") for c in commands if c[0] == "priors"] == ["all", "0-99"]
    eval_samples = [c for c in commands if c[0] == "eval-sample"]
    assert len(eval_samples) == 2 and eval_samples[0] == eval_samples[1]  # the 8-GPU run is the 1-GPU command
    (fid,) = [c for c in commands if c[0] == "fid"]
    assert fid[2] == value(eval_samples[0], "--out") + "/samples.npz"
    assert ["notebooks", "--preset", "xl", "--params", PARAMS, "--only", "01"] in commands
    for argv in commands:
        assert all(not word.startswith("/data/") or word in placeholder_names() for word in argv), argv


def placeholder_names() -> set[str]:
    return {
        "/data/DiT-XL-2-256x256.pt",
        "/data/sd-vae-ft-ema",
        "/data/DDIM20_router.pt",
        "/data/VIRTUAL_imagenet256_labeled.npz",
        "/data/weights-inception-2015-12-05-6726825d.pth",
    }


def test_the_published_table_is_rendered_from_its_csv():
    assert published_table() in PAGE.read_text()


def test_the_example_params_file_names_the_pages_files_and_only_known_parameters():
    from goc_utils.study.notebooks import check_parameters, load_params_file, study_notebooks

    params = load_params_file(PROJECT_ROOT / PARAMS)
    check_parameters(params, study_notebooks())
    assert {v for v in params.values() if isinstance(v, str) and v.startswith("/data/")} == placeholder_names()


def test_sample_takes_the_router_beside_a_method_string(tmp_path, capsys):
    """`goc sample --method l2c+goc --router R` (the page's form, as eval-sample takes it) samples what the method
    string with the router inside does; a router flag beside a method without l2c is refused in one line."""
    router = str(paths.TINY_DIGITS_ROUTER)
    base = ["sample", "--model", "tiny-digits", "--steps", "20", "--classes", "3", "--device", "cpu"]
    for name, method in (("flag", ["--method", "l2c+goc", "--router", router, "--router-thres", "0.2"]),
                         ("inside", ["--method", f"l2c:router={router}:thres=0.2+goc"])):  # fmt: skip
        outputs = ["--out", str(tmp_path / f"{name}.png"), "--save-npz", str(tmp_path / f"{name}.npz")]
        assert main([*base, *method, *outputs]) == 0
    assert np.array_equal(np.load(tmp_path / "flag.npz")["final"], np.load(tmp_path / "inside.npz")["final"])
    capsys.readouterr()
    run_bad_input([*base, "--method", "fora-50", "--router", router], "--router is for l2c methods", capsys)
    run_bad_input([*base, "--method", "l2c", "--goc-weight", "1"], "--method replaces --cache", capsys)


# ----------------------------------------------------------------------------- the walk (slow)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> Iterator[dict[str, str]]:
    """Random-weight files in the user's formats, by the page's placeholder path. Every DiT weight is drawn at
    random (DiT's own init zeroes the adaLN gates and the final layer: such a model outputs zeros and every cache
    would be a no-op)."""
    from diffusers import AutoencoderKL

    folder = tmp_path_factory.mktemp("xl_files")
    generator = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in create_model("DiT-XL/2").state_dict().items()}
    state = {k: torch.randn(shape, generator=generator) * 0.02 for k, shape in shapes.items()}
    torch.save(state, folder / "DiT-XL-2-256x256.pt")  # DiT's official format: a plain state dict
    del state
    torch.manual_seed(0)
    AutoencoderKL(**SD_VAE_CONFIG).save_pretrained(folder / "sd-vae-ft-ema")  # sd-vae-ft-ema's shape, random
    logits = torch.randn(STEPS, 56, generator=generator) * 2 - 2  # about half the units reused at threshold 0.1
    router = {"routers": {f"{k}.prob": row for k, row in enumerate(logits)}, "opt": {}, "args": argparse.Namespace()}
    torch.save(router, folder / "DDIM20_router.pt")  # L2C's format, pickled Namespace included
    torch.save(random_inception(seed=0).state_dict(), folder / "weights-inception-2015-12-05-6726825d.pth")
    images = np.random.default_rng(0).integers(0, 256, size=(8, 256, 256, 3), dtype=np.uint8)
    np.savez(folder / "VIRTUAL_imagenet256_labeled.npz", arr_0=images)
    files = {name: str(folder / name.removeprefix("/data/")) for name in placeholder_names()}
    assert all((folder / name.removeprefix("/data/")).exists() for name in placeholder_names())
    yield files
    shutil.rmtree(folder)  # 2.7 GB of random weights: gone with the module, not kept to the session's end


def tiny_params(files: dict[str, str], out) -> str:
    """notebooks/params/xl.yaml with the stand-ins' paths and the walk's sizes (one image, two steps, CPU)."""
    text = (PROJECT_ROOT / PARAMS).read_text()
    for name, path in files.items():
        text = text.replace(name, path)
    params = yaml.safe_load(text) | {"steps": 2, "device": "cpu", "classes": "0", "per_class": 1}
    out.write_text(yaml.safe_dump(params))
    return str(out)


@pytest.mark.slow
def test_the_xl_path_walked_on_random_weight_stand_ins(stand_ins, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the page's relative outputs (runs/, data/priors/, grids) land here
    monkeypatch.setenv("GOC_FIGURES_DIR", str(tmp_path / "figures"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the notebook's kernel
    monkeypatch.setattr(paths, "EXECUTED_NOTEBOOKS_DIR", tmp_path / "executed")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    files = stand_ins | {PARAMS: tiny_params(stand_ins, tmp_path / "xl.yaml")}
    printed = {}
    try:
        for argv in page_commands(PAGE.read_text()):
            if argv[0] in PARSED_ONLY and "--only" not in argv:
                continue
            small = shrink(argv, files)
            assert main(small) == 0, (small, capsys.readouterr())
            printed[" ".join([argv[0], value(argv, "--method") or ""]).strip()] = capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)

    def final(name: str) -> np.ndarray:
        with np.load(tmp_path / f"xl_{name}.npz") as data:
            return data["final"]

    none = final("none")
    assert np.isfinite(none).all() and np.abs(none).max() > 0
    assert not np.allclose(final("fora-50+goc"), none)  # caching changes the samples: the weights are not inert
    assert not np.allclose(final("l2c+goc"), none)
    assert "correction steps 3" in printed["sample l2c+goc"] and "GOC: w = " in printed["sample fora-50+goc:auto"]
    assert "inflection steps" in printed["inflections"]
    assert (tmp_path / "data" / "priors" / "DiT-XL-2_ddim20_cfg4.safetensors").is_file()
    with np.load(tmp_path / "runs" / "xl" / "fora-50+goc" / "samples.npz") as data:
        assert data["arr_0"].shape == (4, 256, 256, 3) and data["arr_0"].dtype == np.uint8
    assert all(f"{metric}:" in printed["fid"] for metric in ("Inception Score", "FID", "sFID", "Precision", "Recall"))
    for figure in ("01_samples", "01_pipeline"):
        assert (tmp_path / "figures" / f"{figure}.png").is_file()
