"""Bad inputs around diffusers: export targets, diffusers' cache options, method strings, broken diffusers folders.
Each row is one line on stderr and exit status 2, before any work (no run.json), and leaves every input as it was."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from goc_utils.cli import main
from goc_utils.files import atomic_write_dir
from goc_utils.paths import PROJECT_ROOT
from tests.conftest import run_bad_input


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """tiny-digits through ``goc export-diffusers`` (hidden size 128, 12 layers)."""
    out = tmp_path_factory.mktemp("export") / "dit"
    assert main(["export-diffusers", "--model", "tiny-digits", "--out", str(out)]) == 0
    return out


def _damaged(exported, folder, config=None, weights=None):
    """A copy of the export with ``config(dict) -> json value`` and ``weights(dict)`` applied."""
    shutil.copytree(exported, folder)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config(json.loads((folder / "config.json").read_text()))))
    if weights is not None:
        state = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
        weights(state)
        save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def files(exported, tmp_path_factory):
    """The bad folders the table refers to by name (built once: no row may change them)."""
    tmp_path = tmp_path_factory.mktemp("bad")
    made = {}
    made["UNET"] = tmp_path / "unet"  # a diffusers UNet folder with its README
    made["UNET"].mkdir()
    (made["UNET"] / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    save_file({"conv_in.weight": torch.zeros(2)}, str(made["UNET"] / "diffusion_pytorch_model.safetensors"))
    (made["UNET"] / "README.md").write_text("# my UNet\n")
    made["NOTES"] = tmp_path / "notes"
    made["NOTES"].mkdir()
    (made["NOTES"] / "notes.txt").write_text("mine")
    made["A_FILE"] = tmp_path / "a_file"
    made["A_FILE"].write_text("not a folder")
    # a DiT transformer folder as diffusers saves it, not by goc export-diffusers (no mark in its config)
    made["THEIR_DIT"] = _damaged(exported, tmp_path / "their_dit", config=lambda c: c.pop("_written_by") and c)
    made["LINK"] = tmp_path / "link"
    made["LINK"].symlink_to(exported)

    def set_key(key, value):
        return lambda c: c | {key: value}

    def set_weight(key, value):
        return lambda state: state.__setitem__(key, value)

    made["CONFIG_LIST"] = _damaged(exported, tmp_path / "c_list", config=lambda c: [1, 2])
    made["CONFIG_STRING"] = _damaged(exported, tmp_path / "c_str", config=lambda c: "DiTTransformer2DModel")
    made["NO_SAMPLE_SIZE"] = _damaged(exported, tmp_path / "c_size", config=lambda c: c.pop("sample_size") and c)
    made["LAYERS_TEXT"] = _damaged(exported, tmp_path / "c_layers", config=set_key("num_layers", "twelve"))
    made["HEADS_BOOL"] = _damaged(exported, tmp_path / "c_heads", config=set_key("num_attention_heads", True))
    made["PATCH_3"] = _damaged(exported, tmp_path / "c_patch", config=set_key("patch_size", 3))
    made["OUT_5"] = _damaged(exported, tmp_path / "c_out", config=set_key("out_channels", 5))
    made["TO_Q_128x64"] = _damaged(
        exported, tmp_path / "w_q", weights=set_weight("transformer_blocks.3.attn1.to_q.weight", torch.zeros(128, 64))
    )
    made["UNKNOWN_KEY"] = _damaged(
        exported, tmp_path / "w_key", weights=set_weight("transformer_blocks.x.attn1.to_q.weight", torch.zeros(1))
    )
    made["ZERO_D"] = _damaged(
        exported, tmp_path / "w_0d", weights=set_weight("transformer_blocks.0.attn1.to_k.bias", torch.tensor(1.0))
    )
    made["NO_BLOCK_11"] = _damaged(
        exported, tmp_path / "w_11",
        weights=lambda s: [s.pop(k) for k in list(s) if k.startswith("transformer_blocks.11.")],
    )  # fmt: skip
    return made


SAMPLE = ["sample", "--steps", "4", "--classes", "1", "--out", "OUT/x.png"]
EVAL = ["eval-sample", "--backend", "diffusers", "--steps", "4", "--num-samples", "2", "--out", "OUT"]
EVAL_5 = [*EVAL[:3], "--steps", "5", *EVAL[5:]]
BENCH = ["bench", "--backend", "diffusers", "--steps", "4", "--repeats", "1", "--warmup", "0"]
EXPORT = ["export-diffusers", "--model", "tiny-digits", "--out"]
INTERVAL = "an interval N (compute once every N calls) must be >= 1"
CASES = [
    # 1. an export replaces only an earlier export of ours
    ([*EXPORT, "UNET"], "is not a DiT transformer folder written by goc export-diffusers"),
    ([*EXPORT, "NOTES"], "is not a DiT transformer folder written by goc export-diffusers"),
    ([*EXPORT, "THEIR_DIT"], "is not a DiT transformer folder written by goc export-diffusers"),
    ([*EXPORT, "LINK"], "is not a DiT transformer folder written by goc export-diffusers"),
    ([*EXPORT, "A_FILE"], "is a file; give a folder"),
    # 2. diffusers' cache options, by kind, at parse time
    ([*EVAL, "--method", "diffusers:taylorseer:cache_interval=0"], INTERVAL),
    ([*EVAL, "--method", "diffusers:taylorseer:cache_interval=-3"], INTERVAL),
    ([*EVAL, "--method", "diffusers:pab:spatial_attention_block_skip_range=0"], INTERVAL),
    ([*EVAL, "--method", "diffusers:fastercache:unconditional_batch_skip_range=0"], INTERVAL),
    ([*EVAL, "--method", "diffusers:fastercache:spatial_attention_block_skip_range=-1"], INTERVAL),
    ([*EVAL, "--method", "diffusers:pab:spatial_attention_timestep_skip_range=500"], "ranges as lo..hi"),
    ([*EVAL, "--method", "diffusers:pab:spatial_attention_timestep_skip_range=800..100"], "needs lo < hi"),
    ([*EVAL, "--method", "diffusers:fastercache:unconditional_batch_timestep_skip_range=5..5"], "needs lo < hi"),
    ([*EVAL, "--method", "diffusers:taylorseer:disable_cache_before_step=-5"], "must be >= 0"),
    ([*EVAL, "--method", "diffusers:fbc:threshold=nan"], "a threshold must be a finite number >= 0"),
    ([*EVAL, "--method", "diffusers:fbc:threshold=inf"], "a threshold must be a finite number >= 0"),
    ([*EVAL, "--method", "diffusers:fbc:threshold=-1"], "a threshold must be a finite number >= 0"),
    ([*EVAL, "--method", "diffusers:magcache:threshold=nan"], "a threshold must be a finite number >= 0"),
    ([*EVAL, "--method", "diffusers:fastercache:alpha_low_frequency=inf"], "must be a finite number"),
    ([*EVAL, "--method", "diffusers:taylorseer:max_order=-1"], "a Taylor order must be >= 0"),
    ([*EVAL, "--method", "diffusers:magcache:num_inference_steps=7"], "differs from the run's 4 steps"),
    ([*BENCH, "--methods", "none,diffusers:magcache:num_inference_steps=7"], "differs from the run's 4 steps"),
    ([*EVAL, "--method", "diffusers:magcache:max_skip_steps=-1"], "must be >= 0"),
    ([*EVAL, "--method", "diffusers:magcache:retention_ratio=2"], "a ratio must be in [0, 1]"),
    ([*EVAL, "--method", "diffusers:magcache:retention_ratio=-0.5"], "a ratio must be in [0, 1]"),
    ([*EVAL, "--method", "diffusers:fastercache:is_guidance_distilled=true"], "but cfg 1.5 guides"),
    ([*BENCH, "--methods", "none,diffusers:fastercache:is_guidance_distilled=true"], "but cfg 4 guides"),
    ([*EVAL, "--cfg-scale", "1", "--method", "diffusers:fastercache"], "use a cfg scale other than 1"),
    # 3. an option given twice; long values shortened
    ([*EVAL, "--method", "fora:interval=2:interval=3"], "option 'interval' is given twice"),
    ([*EVAL, "--method", "diffusers:fbc:threshold=0.05:threshold=0.5"], "option threshold is given twice"),
    ([*EVAL, "--method", "l2c:data/r.pt:router=data/s.pt"], "option 'router' is given twice"),
    ([*EVAL, "--method", "fora-50+goc:auto:w=0.8"], "option 'w' sets weight, which 'auto' set already"),
    ([*SAMPLE, "--method", "fora:interval=" + "7" * 100_000], "is not a valid value"),
    ([*EVAL, "--method", "diffusers:fbc:threshold=" + "7" * 100_000], "a threshold must be a finite number"),
    ([*EVAL, "--method", "diffusers:fbc:" + "x" * 100_000], "diffusers:fbc takes key=value with keys: threshold"),
    ([*EVAL, "--method", "cachedit:dbcache:fn=1:thresh=0.1"], "cachedit:dbcache takes key=value with keys: fn, bn,"),
    ([*EVAL_5, "--method", "cachedit:dbcache:mask=1111"], "has 4 digits; give one per step (5)"),
    ([*BENCH, "--methods", "none,cachedit:dbcache:fn=1:threshold=-1"], "threshold=-1 in 'cachedit:dbcache:fn=1:"),
    ([*EVAL, "--cfg-scale", "1", "--method", "cachedit:dbcache:separate_cfg=true"], "or separate_cfg=false"),
    # 4. broken diffusers folders as --ckpt
    ([*SAMPLE, "--ckpt", "CONFIG_LIST"], "config.json' holds a JSON list, not an object of DiT settings"),
    ([*SAMPLE, "--ckpt", "CONFIG_STRING"], "config.json' holds a JSON string, not an object of DiT settings"),
    ([*SAMPLE, "--ckpt", "NO_SAMPLE_SIZE"], "sample_size is missing, not a whole number >= 1"),
    ([*SAMPLE, "--ckpt", "LAYERS_TEXT"], 'num_layers is "twelve", not a whole number >= 1'),
    ([*BENCH, "--methods", "none", "--ckpt", "LAYERS_TEXT"], 'num_layers is "twelve", not a whole number >= 1'),
    ([*SAMPLE, "--ckpt", "HEADS_BOOL"], "num_attention_heads is true, not a whole number >= 1"),
    ([*SAMPLE, "--ckpt", "PATCH_3"], "sample_size 8 is not a multiple of patch_size 3"),
    ([*SAMPLE, "--ckpt", "OUT_5"], "out_channels is 5, not in_channels (1) or twice it"),
    ([*SAMPLE, "--ckpt", "TO_Q_128x64"], "transformer_blocks.3.attn1.to_q.weight 128x64 (config: 128x128)"),
    ([*BENCH, "--methods", "none", "--ckpt", "TO_Q_128x64"], "transformer_blocks.3.attn1.to_q.weight 128x64"),
    ([*SAMPLE, "--ckpt", "UNKNOWN_KEY"], "1 unknown keys (transformer_blocks.x.attn1.to_q.weight)"),
    ([*SAMPLE, "--ckpt", "ZERO_D"], "transformer_blocks.0.attn1.to_k.bias a 0-d value (config: 128)"),
    ([*SAMPLE, "--ckpt", "NO_BLOCK_11"], "19 missing keys (transformer_blocks.11."),
]


def _tree(root):
    return sorted((str(p), p.is_symlink() or p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a)[:70] for a, _ in CASES])
def test_bad_input_is_one_short_line_with_exit_2(argv, message, files, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [str(files.get(a, a)).replace("OUT", str(out)) for a in argv]
    before = _tree(files["UNET"].parent)
    err = run_bad_input(argv, message, capsys, out)
    assert len(err) < 400  # a 100,000-character value is shortened
    assert _tree(files["UNET"].parent) == before  # no input replaced, deleted or changed


def _killed_writer(folder):
    """A process killed with SIGKILL while filling ``atomic_write_dir(folder)``: it leaves the hidden partial."""
    script = textwrap.dedent(f"""
        import sys, time
        from goc_utils.files import atomic_write_dir
        with atomic_write_dir({str(folder)!r}) as tmp:
            (tmp / "weights").write_bytes(b"0" * 1000)
            print(tmp.name, flush=True)
            time.sleep(60)
    """)
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    name = writer.stdout.readline().strip()
    return writer, folder.parent / name


def test_a_killed_export_leaves_a_partial_that_the_next_export_removes(exported):
    writer, partial = _killed_writer(exported)
    try:
        with atomic_write_dir(exported.parent / "other") as tmp:  # a live writer's partial is left alone
            (tmp / "x").write_text("x")
        assert partial.is_dir()
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert partial.is_dir() and (partial / "weights").is_file()  # killed: left behind, hidden
    recycled = exported.parent / f".{exported.name}.{os.getppid()}.partial"  # a live process's id, reused
    recycled.mkdir()
    assert main(["export-diffusers", "--model", "tiny-digits", "--out", str(exported)]) == 0  # replaces its own
    assert not partial.exists() and not recycled.exists()
    assert sorted(p.name for p in exported.parent.iterdir()) == ["dit", "other"]
    assert json.loads((exported / "config.json").read_text())["_written_by"] == "goc export-diffusers"
