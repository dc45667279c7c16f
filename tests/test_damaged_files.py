"""Damaged files, generated the same way for every file format the project reads: each valid file cut short (empty,
its first byte, half, all but its last byte), a byte flipped (first, inside the header, middle, last), and for the
structured formats a field of the wrong type, a missing field, a field out of range and another model's file.

Every case runs the ``goc`` command that reads the file, in-process, and holds it to one promise: exit status 2 with
exactly one line on stderr naming the file or its option and nothing written, or, where the damage leaves a file
of the format that still holds what the command needs (a flipped byte inside float weights, a text file cut at a
line end), exit status 0; never an exception. A damage is that lenient one only when the format's own container
(zip, pickle, safetensors, gzip, JSON, YAML) still reads it; a cut binary file, a field of the wrong type, a missing
field, a field out of range and another model's file are always refused.

The fast part damages the nine formats that the quickest commands read in eight ways each (two cuts, two flips, the
first field of each structured kind, another model's file); the slow part every format in every way.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import io
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from tqdm import std as tqdm_std

from goc_utils import paths
from goc_utils.cli import main
from goc_utils.evaluation.metrics.inception import random_inception
from goc_utils.files import save_training_state
from goc_utils.model.judges import DigitsClassifier
from goc_utils.model.vae import SD_VAE_CONFIG
from goc_utils.priors.extraction import extract_priors
from tests.conftest import small_dit
from tests.test_bad_inputs_priors import _small_priors

# ----------------------------------------------------------------------------- codecs: a file <-> a tree of fields


class Codec:
    """A file format's container: bytes -> a tree of fields (dicts, lists, numbers, text, tensors, arrays) and back.
    ``decode`` raising is what makes a damage strict: the container itself cannot read the file."""

    def decode(self, data: bytes):
        raise NotImplementedError

    def encode(self, tree) -> bytes:
        raise NotImplementedError

    def wrong_type(self, value):
        return wrong_type(value)

    def out_of_range(self, value):
        return out_of_range(value)


class Safetensors(Codec):
    """``{"tensors": {name: tensor}, "metadata": {key: text}}``; each of ``headers`` names a metadata entry holding
    a JSON object, decoded into the tree under that name (a priors file's fields are ``("goc_priors", "steps")``)."""

    def __init__(self, *headers: str):
        self.headers = headers

    def decode(self, data: bytes) -> dict:
        size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
        tree = {"tensors": load_safetensors(data), "metadata": dict(metadata)}
        for name in self.headers:
            tree[name] = json.loads(tree["metadata"].pop(name))
        return tree

    def encode(self, tree: dict) -> bytes:
        metadata = dict(tree["metadata"]) | {name: json.dumps(tree[name]) for name in self.headers if name in tree}
        tensors = {k: v.contiguous() for k, v in tree["tensors"].items()}
        return save_safetensors(tensors, metadata or None)


class Torch(Codec):
    """``torch.save``'s files (read as the project reads them: ``weights_only``, ``argparse.Namespace`` allowed)."""

    def decode(self, data: bytes):
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    def encode(self, tree) -> bytes:
        buffer = io.BytesIO()
        torch.save(tree, buffer)
        return buffer.getvalue()


class Npz(Codec):
    def decode(self, data: bytes) -> dict:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}

    def encode(self, tree: dict) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, **tree)
        return buffer.getvalue()


class Json(Codec):
    def decode(self, data: bytes):
        return json.loads(data.decode())

    def encode(self, tree) -> bytes:
        return json.dumps(tree, indent=2).encode()


class Yaml(Codec):
    def decode(self, data: bytes):
        return yaml.safe_load(data)

    def encode(self, tree) -> bytes:
        return yaml.safe_dump(tree, sort_keys=False).rstrip("\n").encode()


class Idx(Codec):
    """Gzipped IDX (MNIST's format): ``{"type": 8 (uint8), "dims": [N, ...], "data": uint8 array}``."""

    def decode(self, data: bytes) -> dict:
        raw = gzip.decompress(data)
        if len(raw) < 4 or raw[:2] != b"\0\0":
            raise ValueError("not an IDX file")
        dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(raw[3])]
        payload = np.frombuffer(raw[4 + 4 * len(dims) :], dtype=np.uint8)
        if payload.size != int(np.prod(dims)):
            raise ValueError("payload and dimensions disagree")
        return {"type": raw[2], "dims": dims, "data": payload}

    def encode(self, tree: dict) -> bytes:
        dims = tree.get("dims", [])
        head = bytes([0, 0, tree.get("type", 8) & 0xFF, len(dims)])
        body = b"".join((d & 0xFFFFFFFF).to_bytes(4, "big") for d in dims)
        return gzip.compress(head + body + np.asarray(tree.get("data", []), np.uint8).tobytes(), mtime=0)

    def wrong_type(self, value):
        return 0x0D if value == 0x08 else None  # float32 where unsigned bytes are expected


# ----------------------------------------------------------------------------- the damages, shared by every format


def wrong_type(value):
    """A value of another type than ``value`` (a tensor or array of another dtype), or None when there is none."""
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return 7
    if isinstance(value, list):
        return {"items": value}
    if isinstance(value, dict):
        return list(value)
    if isinstance(value, torch.Tensor):
        return value.to(torch.int32) if value.is_floating_point() else value.to(torch.float32)
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "US":
            return np.zeros(value.shape, np.int64)
        return value.astype(np.int64 if value.dtype.kind in "fc" else np.float32)
    return None


def out_of_range(value):
    """``value`` outside every range its field may have (-1 for a count, NaN for a number, an unknown name, an empty
    list; one element of a tensor or array NaN, -1 or its dtype's largest), or None when there is no such value."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return -1
    if isinstance(value, float):
        return float("nan")
    if isinstance(value, str):
        return "no-such-" + value[:20]
    if isinstance(value, list | dict):
        return type(value)()
    if isinstance(value, torch.Tensor):
        value = value.clone(memory_format=torch.contiguous_format)  # so that reshape(-1) below is a view
        kind = "f" if value.is_floating_point() else {torch.uint8: "u", torch.bool: "b"}.get(value.dtype, "i")
    elif isinstance(value, np.ndarray):
        value, kind = value.copy(), value.dtype.kind
    else:
        return None
    if kind not in "fiu" or value.reshape(-1).shape[0] == 0:
        return None
    value.reshape(-1)[0] = {"f": float("nan"), "u": 255, "i": -1}[kind]
    return value


def _walk(tree, path: tuple):
    for key in path[:-1]:
        tree = tree[key]
    return tree, path[-1]


def mutate(codec: Codec, kind: str, path: tuple) -> Callable[[bytes], bytes]:
    """The damage ``kind`` (wrong type, missing, out of range) of the field at ``path``, as bytes -> bytes."""

    def damage(data: bytes) -> bytes:
        tree = copy.deepcopy(codec.decode(data))
        parent, key = _walk(tree, path)
        if kind == "missing":
            del parent[key]
        else:
            value = (codec.wrong_type if kind == "wrong type" else codec.out_of_range)(parent[key])
            assert value is not None, f"no {kind} value for {path}"
            parent[key] = value
        damaged = codec.encode(tree)
        assert damaged != data, f"{kind} {path} left the file as it was"
        return damaged

    return damage


def flip(position: Callable[[int], int]) -> Callable[[bytes], bytes]:
    def damage(data: bytes) -> bytes:
        at = position(len(data))
        return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]

    return damage


TRUNCATIONS = {
    "empty": lambda data: b"",
    "first byte": lambda data: data[:1],
    "half": lambda data: data[: len(data) // 2],
    "all but the last byte": lambda data: data[:-1],
}
FLIPS = {
    "flip first byte": flip(lambda n: 0),
    "flip in header": flip(lambda n: min(9, n - 1)),
    "flip middle byte": flip(lambda n: n // 2),
    "flip last byte": flip(lambda n: n - 1),
}
FAST_DAMAGES = ("valid", "empty", "half", "flip in header", "flip middle byte")
"""The damages of the fast part, with the first field of each structured kind and another model's file."""


# ----------------------------------------------------------------------------- the formats


@dataclass(frozen=True)
class Format:
    """A file format the project reads from a user-given path.

    ``make()`` writes, in an empty current folder, every file the command needs, the valid ``target`` among them
    (relative paths), and :data:`OTHER`: another model's file (or another format's) to put in its place. ``argv``
    reads it; ``names``: what its one error line may name besides the file's path and name (its folder or option).
    ``typed``, ``required``, ``ranged``: the fields (paths into the codec's tree) to give the wrong type, remove, put
    out of range. ``setup(monkeypatch)``: what the command needs around it (a data folder, where a judge keeps its
    checkpoint).
    """

    name: str
    codec: Codec
    make: Callable[[], None]
    target: str
    argv: list[str]
    names: tuple[str, ...]
    typed: tuple[tuple, ...] = ()
    required: tuple[tuple, ...] = ()
    ranged: tuple[tuple, ...] = ()
    setup: Callable[[pytest.MonkeyPatch], None] = lambda monkeypatch: None
    slow: bool = False


OTHER = "other"
"""Where each format's ``make`` puts another model's file (or another format's)."""


def _copy(source: Path, to: str) -> None:
    Path(to).parent.mkdir(parents=True, exist_ok=True)
    (shutil.copytree if source.is_dir() else shutil.copyfile)(source, to)


def _run_ok(argv: list[str]) -> None:
    assert main(argv) == 0, argv


def _interrupted(where: str, argv: list[str], setup: Callable[[pytest.MonkeyPatch], None] = lambda patch: None):
    """Run ``goc argv`` and stop it (as Ctrl-C would) when it calls ``where``: its resume file stays behind."""

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        setup(patch)
        patch.setattr(where, stop)
        assert main(argv) == 130, argv


SAMPLE = ["sample", "--steps", "2", "--classes", "0", "--device", "cpu", "--out", "g.png"]


def _make_dit() -> None:
    _copy(paths.TINY_DIGITS_WEIGHTS, "input/dit.safetensors")
    _copy(paths.TINY_FASHION_WEIGHTS, OTHER)


def _make_dit_pt() -> None:
    for source, to in ((paths.TINY_DIGITS_WEIGHTS, "input/dit.pt"), (paths.TINY_FASHION_WEIGHTS, OTHER)):
        state = Safetensors().decode(source.read_bytes())["tensors"]
        Path(to).parent.mkdir(exist_ok=True)
        torch.save({"ema": state, "args": argparse.Namespace(model="tiny-digits")}, to)


def _make_router() -> None:
    _copy(paths.TINY_DIGITS_ROUTER, "input/router.pt")
    _copy(paths.TINY_FASHION_ROUTER, OTHER)


def _make_priors() -> None:
    Path("input").mkdir()
    _small_priors().save("input/priors.safetensors")
    _copy(paths.DATA_DIR / "tcc" / "tiny-digits_ddim20_cfg1.5_fora-50.safetensors", OTHER)  # another format


TCC = "data/tcc/tiny-{}_ddim20_cfg1.5_fora-50.safetensors"


def _make_tcc() -> None:
    _copy(paths.PROJECT_ROOT / TCC.format("digits"), "input/pack.safetensors")
    _copy(paths.PROJECT_ROOT / TCC.format("fashion"), OTHER)


def _images(count: int, side: int, channels: int = 1) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, side, side, channels), dtype=np.uint8)


def _make_samples() -> None:
    Path("input").mkdir()
    np.savez("input/samples.npz", arr_0=_images(8, 8), arr_1=np.arange(8) % 10)
    np.savez("other.npz", arr_0=_images(8, 32), arr_1=np.arange(8) % 10)  # tiny-fashion's size
    Path("other.npz").rename(OTHER)


def _make_reference() -> None:
    _copy(paths.DIGITS_REFERENCE_BATCH, "input/ref.npz")
    np.savez("samples.npz", arr_0=_images(8, 8), arr_1=np.arange(8) % 10)
    _copy(paths.FASHION_REFERENCE_BATCH, OTHER)


def _make_inception() -> None:
    Path("input").mkdir()
    torch.save(random_inception().state_dict(), "input/inception.pth")  # the architecture, random weights
    np.savez("ref.npz", arr_0=_images(8, 16, 3))
    np.savez("samples.npz", arr_0=_images(8, 16, 3)[::-1])
    torch.save(DigitsClassifier().state_dict(), OTHER)  # another network's weights


EVAL_SAMPLE = ["eval-sample", "--num-samples", "2", "--steps", "4", "--device", "cpu", "--out", "out_run"]


def _make_manifest() -> None:
    _run_ok(EVAL_SAMPLE)
    manifest = json.loads(Path("out_run/run.json").read_text())
    vae = str(paths.TINY_FASHION_VAE)
    Path(OTHER).write_text(json.dumps({**manifest, "model": "tiny-fashion", "vae": vae}, indent=2))


def _make_vae() -> None:
    _copy(paths.TINY_FASHION_VAE, "input/vae")
    (Path("input/vae") / "training.json").unlink()
    Path(OTHER).write_text(json.dumps({"_class_name": "AutoencoderKL", **SD_VAE_CONFIG}))  # sd-vae's config


def _make_vae_weights() -> None:
    _make_vae()
    _copy(paths.TINY_DIGITS_WEIGHTS, OTHER)  # a DiT's weights where the VAE's are expected


def _make_matrix() -> None:
    Path("input").mkdir()
    rows = [[1] * 12 if s % 2 == 0 else [0] * 12 for s in range(20)]
    Path("input/matrix.json").write_text(json.dumps(rows))
    Path(OTHER).write_text(json.dumps([[1] * 28 if s % 2 == 0 else [0] * 28 for s in range(20)]))  # DiT-XL/2's


def _make_params() -> None:
    Path("input").mkdir()
    Path("input/params.yaml").write_text(Yaml().encode({"model": "tiny-digits", "steps": 4, "cfg_scale": 1.5}).decode())
    Path(OTHER).write_text(Path(paths.TINY_FASHION_VAE / "config.json").read_text())  # a JSON config


def _no_notebooks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("goc_utils.cli.study.run_notebooks", lambda *args, **kwargs: [])


TRAIN = ["train-tiny", "--batch-size", "4", "--threads", "1", "--run-dir", "run", "--out", "w.safetensors"]


def _make_training() -> None:
    _run_ok([*TRAIN, "--train-steps", "2"])
    for name in ("log.jsonl", "ema_latest.safetensors"):
        Path("run", name).unlink()
    Path("w.safetensors").unlink()
    other = small_dit(depth=2)  # another model's checkpoint, with this run's settings
    state = torch.load("run/checkpoint.pt", weights_only=True)
    opt = torch.optim.AdamW(other.parameters())
    save_training_state(OTHER, "step", 1, torch.Generator(), state["settings"], model=other, ema=other, opt=opt)


ROUTER_RUN = ["train-router", "--steps", "4", "--train-steps", "3", "--batch-size", "2", "--threads", "1",
              "--checkpoint-seconds", "0", "--device", "cpu", "--out", "r.pt"]  # fmt: skip


def _make_router_partial() -> None:
    _interrupted("goc_utils.cli.train.save_router", ROUTER_RUN)
    _copy(paths.TINY_DIGITS_ROUTER, OTHER)  # a finished router where a training checkpoint is expected


PRIORS_RUN = ["priors", "--steps", "4", "--classes", "0,1", "--batch-size", "1", "--checkpoint-seconds", "0",
              "--device", "cpu", "--out", "p.safetensors"]  # fmt: skip


def _make_priors_partial() -> None:
    def extract_then_stop(*args, **kwargs):
        extract_priors(*args, **kwargs)
        raise KeyboardInterrupt

    for argv in (PRIORS_RUN, [*PRIORS_RUN[:4], "2,3", *PRIORS_RUN[5:-1], "other.safetensors"]):  # other classes
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("goc_utils.cli.priors.extract_priors", extract_then_stop)
            assert main(argv) == 130, argv
    Path("other.safetensors.partial").rename(OTHER)  # the checkpoint of another extraction


FASHION = "input/fashion"


def _write_idx(path: str, array: np.ndarray) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(Idx().encode({"type": 8, "dims": list(array.shape), "data": array.reshape(-1)}))


def _make_fashion() -> None:
    """A Fashion-MNIST of 16 training and 16 test images (``$GOC_FASHION_MNIST_DIR``)."""
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        _write_idx(f"{FASHION}/{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (16, 28, 28), dtype=np.uint8))
        _write_idx(f"{FASHION}/{prefix}-labels-idx1-ubyte.gz", (np.arange(16) % 10).astype(np.uint8))
    _write_idx("other.gz", rng.integers(0, 17, (16, 8, 8), dtype=np.uint8))  # the digits' size
    Path("other.gz").rename(OTHER)


def _fashion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOC_FASHION_MNIST_DIR", FASHION)
    monkeypatch.setattr(paths, "RUNS_DIR", Path("runs").absolute())  # where the judge keeps its checkpoint


JUDGE = ["train-classifier", "--model", "tiny-fashion", "--out", "judge.safetensors"]


def _make_judge() -> None:
    _make_fashion()
    _interrupted("goc_utils.training.judges.classifier_accuracy", [*JUDGE, "--epochs", "1"], _fashion)
    state = torch.load("runs/train_fashion_judge/checkpoint.pt", weights_only=True)
    other = DigitsClassifier()  # another model's checkpoint (the digits judge), with this run's settings
    opt = torch.optim.AdamW(other.parameters())
    save_training_state(OTHER, "epoch", 1, torch.Generator(), state["settings"], model=other, opt=opt)


FASHION_TRAIN = ["train-tiny", "--model", "tiny-fashion", "--train-steps", "1", "--batch-size", "4", "--threads", "1",
                 "--run-dir", "run", "--out", "w.safetensors"]  # fmt: skip


def _make_latents() -> None:
    _make_fashion()
    with pytest.MonkeyPatch.context() as patch:
        _fashion(patch)
        _run_ok(FASHION_TRAIN)
    Path("run/checkpoint.pt").rename(OTHER)  # a training checkpoint where the latents are expected
    for name in ("log.jsonl", "ema_latest.safetensors"):
        Path("run", name).unlink()
    Path("w.safetensors").unlink()


def _make_diffusers() -> None:
    _run_ok(["export-diffusers", "--model", "tiny-digits", "--out", "input/dit"])
    _run_ok(["export-diffusers", "--model", "tiny-fashion", "--out", "fashion"])  # a pipeline: transformer/, vae/


def _make_diffusers_config() -> None:
    _make_diffusers()
    Path("fashion/transformer/config.json").rename(OTHER)
    shutil.rmtree("fashion")


def _make_diffusers_weights() -> None:
    _make_diffusers()
    Path("fashion/transformer/diffusion_pytorch_model.safetensors").rename(OTHER)
    shutil.rmtree("fashion")


FORMATS = [
    Format(
        "DiT checkpoint (.safetensors)", Safetensors(), _make_dit, "input/dit.safetensors",
        [*SAMPLE, "--ckpt", "input/dit.safetensors"], ("input/dit.safetensors", "--ckpt"),
        typed=(("tensors", "x_embedder.proj.weight"), ("tensors", "t_embedder.mlp.0.bias")),
        required=(("tensors", "final_layer.linear.weight"), ("tensors", "blocks.11.mlp.fc2.bias")),
        ranged=(("tensors", "x_embedder.proj.weight"), ("tensors", "blocks.5.attn.qkv.weight")),
    ),
    Format(
        "DiT checkpoint (.pt)", Torch(), _make_dit_pt, "input/dit.pt",
        [*SAMPLE, "--ckpt", "input/dit.pt"], ("input/dit.pt", "--ckpt"),
        typed=(("ema", "x_embedder.proj.weight"), ("ema",)), required=(("ema", "pos_embed"), ("ema",)),
        ranged=(("ema", "final_layer.linear.bias"), ("ema",)), slow=True,
    ),
    Format(
        "L2C router", Torch(), _make_router, "input/router.pt",
        ["sample", "--steps", "20", "--classes", "0", "--device", "cpu", "--out", "g.png", "--cache", "l2c",
         "--router", "input/router.pt"], ("input/router.pt", "--router"),
        typed=(("routers", "0.prob"), ("routers",)), required=(("routers", "0.prob"), ("routers",)),
        ranged=(("routers", "7.prob"), ("routers",)),
    ),
    Format(
        "priors file", Safetensors("goc_priors"), _make_priors, "input/priors.safetensors",
        ["inflections", "input/priors.safetensors"], ("input/priors.safetensors",),
        typed=(("goc_priors", "steps"), ("tensors", "sum_feature"), ("goc_priors", "classes"),
               ("goc_priors", "cfg_scale"), ("goc_priors", "model")),
        required=(("goc_priors", "count"), ("tensors", "sum_gram"), ("goc_priors", "seeds"), ("goc_priors", "model")),
        ranged=(("goc_priors", "depth"), ("tensors", "sum_l2"), ("goc_priors", "cfg_scale"), ("goc_priors", "classes")),
    ),  # fmt: skip
    Format(
        "TCC pack", Safetensors("goc_tcc"), _make_tcc, "input/pack.safetensors",
        ["sample", "--steps", "20", "--cfg-scale", "1.5", "--classes", "0", "--device", "cpu", "--out", "g.png",
         "--cache", "fora-50", "--compensator", "tcc", "--tcc-pack", "input/pack.safetensors"],
        ("input/pack.safetensors", "--tcc-pack"),
        typed=(("goc_tcc", "targets"), ("tensors", "R"), ("tensors", "host_mask"), ("goc_tcc", "model"),
               ("goc_tcc", "cfg_scale")),
        required=(("goc_tcc", "hidden"), ("tensors", "mu_a"), ("goc_tcc", "host")),
        ranged=(("goc_tcc", "steps"), ("tensors", "s"), ("tensors", "host_mask"), ("goc_tcc", "model"),
                ("goc_tcc", "fit_alpha")),
    ),  # fmt: skip
    Format(
        "sample batch (.npz)", Npz(), _make_samples, "input/samples.npz",
        ["fid", str(paths.DIGITS_REFERENCE_BATCH), "input/samples.npz", "--features", "digits", "--device", "cpu"],
        ("input/samples.npz", "samples.npz"),
        typed=(("arr_0",), ("arr_1",)), required=(("arr_0",),), ranged=(("arr_1",),),
    ),
    Format(
        "reference batch (.npz)", Npz(), _make_reference, "input/ref.npz",
        ["fid", "input/ref.npz", "samples.npz", "--features", "digits", "--device", "cpu"],
        ("input/ref.npz", "ref.npz"),
        typed=(("mu",), ("sigma",), ("features",), ("arr_0",)), required=(("sigma_s",), ("arr_0",)),
        ranged=(("mu",), ("sigma_s",), ("arr_1",)), slow=True,
    ),
    Format(
        "Inception weights (--inception-weights)", Torch(), _make_inception, "input/inception.pth",
        ["fid", "ref.npz", "samples.npz", "--features", "inception", "--inception-weights", "input/inception.pth",
         "--device", "cpu"], ("input/inception.pth",),
        typed=(("Conv2d_1a_3x3.conv.weight",),), required=(("Mixed_7c.branch_pool.conv.weight",),),
        ranged=(("Mixed_6a.branch3x3.bn.running_var",),), slow=True,
    ),
    Format(
        "run manifest (run.json)", Json(), _make_manifest, "out_run/run.json", EVAL_SAMPLE, ("out_run",),
        typed=(("seed",), ("model",), ("samples",), ("steps",)), required=(("seed",), ("model",), ("cfg_scale",)),
        ranged=(("steps",), ("model",), ("samples", "count")),
    ),
    Format(
        "VAE config (config.json)", Json(), _make_vae, "input/vae/config.json",
        [*SAMPLE, "--model", "tiny-fashion", "--vae", "input/vae"], ("input/vae", "--vae"),
        typed=(("scaling_factor",), ("latent_channels",), ("block_out_channels",)),
        required=(("block_out_channels",), ("up_block_types",)),
        ranged=(("scaling_factor",), ("latent_channels",), ("block_out_channels",)),
    ),
    Format(
        "VAE weights (.safetensors)", Safetensors(), _make_vae_weights, "input/vae/diffusion_pytorch_model.safetensors",
        [*SAMPLE, "--model", "tiny-fashion", "--vae", "input/vae"], ("input/vae", "--vae"),
        typed=(("tensors", "decoder.conv_in.weight"),), required=(("tensors", "decoder.conv_out.bias"),),
        ranged=(("tensors", "decoder.conv_in.weight"),), slow=True,
    ),
    Format(
        "schedule matrix (.json)", Json(), _make_matrix, "input/matrix.json",
        ["sample", "--steps", "20", "--classes", "0", "--device", "cpu", "--out", "g.png", "--cache", "matrix",
         "--matrix", "input/matrix.json"], ("input/matrix.json", "--matrix"),
        typed=((0, 0), (1,)), required=((0,), (3, 5)), ranged=((1, 0),),
    ),
    Format(
        "notebook parameters (--params YAML)", Yaml(), _make_params, "input/params.yaml",
        ["notebooks", "--only", "01", "--params", "input/params.yaml"], ("input/params.yaml", "--params"),
        typed=(("steps",), ("model",), ("cfg_scale",)), ranged=(("model",), ("steps",)), setup=_no_notebooks,
    ),
    Format(
        "training checkpoint (checkpoint.pt)", Torch(), _make_training, "run/checkpoint.pt",
        [*TRAIN, "--train-steps", "3"], ("run/checkpoint.pt", "--run-dir"),
        typed=(("step",), ("model",), ("generator",), ("settings",)),
        required=(("step",), ("ema",), ("torch_rng",)),
        ranged=(("step",), ("model", "x_embedder.proj.weight")), slow=True,
    ),
    Format(
        "router training checkpoint (OUT.partial)", Torch(), _make_router_partial, "r.pt.partial", ROUTER_RUN,
        ("r.pt.partial",),
        typed=(("logits",), ("step",), ("config",)), required=(("logits",), ("opt",), ("weights",)),
        ranged=(("step",), ("logits",)), slow=True,
    ),
    Format(
        "priors checkpoint (OUT.partial)", Safetensors("goc_priors", "resume"), _make_priors_partial,
        "p.safetensors.partial", PRIORS_RUN, ("p.safetensors.partial",),
        typed=(("resume", "done"), ("goc_priors", "count"), ("resume", "pairs")),
        required=(("resume", "done"), ("resume", "weights"), ("tensors", "sum_abs")),
        ranged=(("resume", "done"), ("goc_priors", "count"), ("tensors", "sum_feature")), slow=True,
    ),
    Format(
        "Fashion-MNIST images (idx3-ubyte.gz)", Idx(), _make_fashion, f"{FASHION}/train-images-idx3-ubyte.gz",
        [*JUDGE, "--epochs", "1"], (f"{FASHION}/train-images-idx3-ubyte.gz", FASHION),
        typed=(("type",),), required=(("dims", 1),), ranged=(("dims", 0),), setup=_fashion, slow=True,
    ),
    Format(
        "judge training checkpoint", Torch(), _make_judge, "runs/train_fashion_judge/checkpoint.pt",
        [*JUDGE, "--epochs", "2"], ("train_fashion_judge/checkpoint.pt",),
        typed=(("epoch",), ("settings",)), required=(("epoch",), ("opt",)), ranged=(("epoch",),), setup=_fashion,
        slow=True,
    ),
    Format(
        "latents cache (latents.pt)", Torch(), _make_latents, "run/latents.pt", FASHION_TRAIN, ("run/latents.pt",),
        typed=(("mean",), ("scale",)), required=(("std",), ("vae_sha256",)), ranged=(("scale",), ("mean",)),
        setup=_fashion, slow=True,
    ),
    Format(
        "diffusers DiT config (config.json)", Json(), _make_diffusers_config, "input/dit/config.json",
        [*SAMPLE, "--ckpt", "input/dit"], ("input/dit", "--ckpt"),
        typed=(("num_layers",), ("patch_size",)), required=(("num_layers",), ("in_channels",)),
        ranged=(("num_layers",), ("sample_size",)), slow=True,
    ),
    Format(
        "diffusers DiT weights (.safetensors)", Safetensors(), _make_diffusers_weights,
        "input/dit/diffusion_pytorch_model.safetensors", [*SAMPLE, "--ckpt", "input/dit"], ("input/dit", "--ckpt"),
        typed=(("tensors", "pos_embed.proj.weight"),), required=(("tensors", "proj_out_2.bias"),),
        ranged=(("tensors", "transformer_blocks.0.attn1.to_q.weight"),), slow=True,
    ),
]  # fmt: skip


# ----------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    format: Format
    label: str
    damage: Callable[[bytes], bytes] | None  # None: another model's file
    strict: bool  # exit 2 whatever the container reads

    @property
    def id(self) -> str:
        return f"{self.format.name}: {self.label}"


def cases(fmt: Format, every: bool) -> list[Case]:
    """Every damage of ``fmt`` (``every``), or the fast part's."""
    made = [Case(fmt, "valid", lambda data: data, False)]
    made += [Case(fmt, label, damage, False) for label, damage in (TRUNCATIONS | FLIPS).items()]
    for kind, fields in (("wrong type", fmt.typed), ("missing", fmt.required), ("out of range", fmt.ranged)):
        for index, path in enumerate(fields):
            if every or index == 0:
                made.append(Case(fmt, f"{kind} {'.'.join(map(str, path))}", mutate(fmt.codec, kind, path), True))
    made.append(Case(fmt, "another model's file", None, True))
    return [c for c in made if every or c.label in FAST_DAMAGES or c.strict]


def _params(slow: bool) -> list:
    if slow:
        fast = {c.id for f in FORMATS if not f.slow for c in cases(f, every=False)}
        chosen = [c for f in FORMATS for c in cases(f, every=True) if c.id not in fast]
    else:
        chosen = [c for f in FORMATS if not f.slow for c in cases(f, every=False)]
    return [pytest.param(c, id=c.id) for c in chosen]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """``built(fmt)``: a folder holding the valid files of ``fmt`` (made once per module)."""
    made: dict[str, Path] = {}

    def build(fmt: Format) -> Path:
        if fmt.name not in made:
            folder = tmp_path_factory.mktemp("valid")
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                with pytest.MonkeyPatch.context() as patch:
                    patch.chdir(folder)
                    _quiet(patch)
                    fmt.make()
            finally:
                torch.set_num_threads(threads)
            made[fmt.name] = folder
        return made[fmt.name]

    return build


def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """No progress bars: stderr holds only what the command says."""
    init = tqdm_std.tqdm.__init__

    def quiet(self, *args, **kwargs):
        init(self, *args, **{**kwargs, "disable": True})

    monkeypatch.setattr(tqdm_std.tqdm, "__init__", quiet)


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` (lock files aside) with its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file() and not p.name.endswith(".lock")
    }


def _decodes(codec: Codec, data: bytes) -> bool:
    try:
        codec.decode(data)
    except Exception:  # noqa: BLE001 - whatever the container raises
        return False
    return True


def check(case: Case, built, tmp_path: Path, capsys, monkeypatch) -> None:
    fmt = case.format
    work = tmp_path / "work"
    shutil.copytree(built(fmt), work, symlinks=True)
    target = work / fmt.target
    if case.damage is None:
        data = (work / OTHER).read_bytes()
    else:
        data = case.damage(target.read_bytes())
    target.write_bytes(data)
    strict = case.strict or (case.label != "valid" and not _decodes(fmt.codec, data))
    monkeypatch.chdir(work)
    _quiet(monkeypatch)
    fmt.setup(monkeypatch)
    before = _files(work)
    capsys.readouterr()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is fastest, and no spinning when the cores are shared
    try:
        code = main(fmt.argv)
    except SystemExit as exc:
        code = exc.code
    except Exception as exc:  # noqa: BLE001 - the failure this test exists for
        pytest.fail(f"{case.id}: {type(exc).__name__} escaped goc: {str(exc)[:300]}")
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) <= 1, f"{case.id}: {err[-2000:]}"
    if case.label == "valid":
        assert code == 0, f"{case.id}: a valid file is refused: {err}"
        return
    assert code in ((2,) if strict else (0, 2)), f"{case.id}: exit {code}, expected 2: {err or '(nothing on stderr)'}"
    if code == 2:
        names = (fmt.target, Path(fmt.target).name, *fmt.names)
        assert len(lines) == 1 and any(name in lines[0] for name in names), f"{case.id}: does not name the file: {err}"
        assert _files(work) == before, f"{case.id}: written despite the refusal: {set(_files(work)) - set(before)}"


@pytest.mark.parametrize("case", _params(slow=False))
def test_a_damaged_file_is_refused_in_one_line(case, built, tmp_path, capsys, monkeypatch):
    check(case, built, tmp_path, capsys, monkeypatch)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # FID of a handful of Inception features
@pytest.mark.parametrize("case", _params(slow=True))
def test_every_damage_of_every_format_is_refused_in_one_line(case, built, tmp_path, capsys, monkeypatch):
    check(case, built, tmp_path, capsys, monkeypatch)


def test_every_format_is_damaged_in_every_way():
    """Each format gets every truncation and flip, each structured damage its fields have, and another file."""
    for fmt in FORMATS:
        labels = [c.label for c in cases(fmt, every=True)]
        kinds = ("wrong type", "missing", "out of range", "another model")
        missing = [k for k in kinds if not any(label.startswith(k) for label in labels)]
        assert not missing or (fmt.name.startswith("notebook") and missing == ["missing"]), (fmt.name, missing)
        assert {*TRUNCATIONS, *FLIPS} <= set(labels)
