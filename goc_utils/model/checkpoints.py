"""Checkpoint reading, in one place: DiT's ``.pt`` (plain state dict or ``train.py`` checkpoint),
``.safetensors`` and diffusers DiT folders, checked key for key against a preset (:func:`load_model`)."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import torch

from goc_utils.errors import CheckpointError, InvalidArgumentError, shorten
from goc_utils.files import load_safetensors, load_torch
from goc_utils.model import diffusers_format
from goc_utils.model.dit import DiT
from goc_utils.model.presets import DiT_models, create_model, preset_info


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read DiT weights from ``path``.

    Accepts the official DiT ``.pt`` (a plain state dict of EMA weights), checkpoints of
    DiT's ``train.py`` (a dict with an ``ema`` key, whose ``args`` entry is an
    ``argparse.Namespace``), ``.safetensors`` files and diffusers DiT folders (a pipeline folder
    such as ``facebook/DiT-XL-2-256`` or its ``transformer/``; see :mod:`goc_utils.integrations.diffusers.transformer`).
    Pickles are read with ``weights_only=True`` (``argparse.Namespace`` allow-listed), never unrestricted.
    """
    path = Path(path)
    if path.is_dir():
        if diffusers_format.folder_kind(path) is None:
            raise CheckpointError(
                f"folder {str(path)!r} is not a diffusers DiT (no model_index.json + transformer/, no config.json); "
                "pass a DiT .pt / .safetensors file or a diffusers DiT folder"
            )
        config = diffusers_format.read_config(path)
        state = diffusers_format.read_diffusers_state_dict(path)
        return diffusers_format.from_diffusers(state, config, f"the weights in {shorten(path)!r}")
    fix = "pass --ckpt PATH to a DiT .pt or .safetensors file or a diffusers DiT folder"
    if path.suffix != ".safetensors":
        obj = load_torch(path, "checkpoint", fix, error=CheckpointError, allowed=[argparse.Namespace])
        return _state_dict_in(obj, path)
    return load_safetensors(path, "checkpoint", fix, error=CheckpointError)


def _state_dict_in(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The DiT state dict in what a ``.pt`` checkpoint held: the dict itself, or a train.py checkpoint's EMA."""
    if isinstance(obj, dict) and "ema" in obj and isinstance(obj["ema"], dict):
        obj = obj["ema"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds no state dict of tensors (found {type(obj).__name__}); "
            "expected a DiT .pt state dict or a train.py checkpoint with an 'ema' entry"
        )
    return obj


def _shape_signature(name: str, input_size: int | None) -> dict[str, tuple[int, ...]]:
    kwargs = {} if input_size is None else {"input_size": input_size}
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def guess_preset(state_dict: dict[str, torch.Tensor]) -> tuple[str, int] | None:
    """``(preset, input_size)`` whose keys and shapes best match ``state_dict``, or None."""
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    tokens = shapes.get("pos_embed", (1, 0, 0))[1]
    best, best_score = None, 0.0
    for name in DiT_models:
        patch = 2 if name.startswith("tiny-") else int(name.rsplit("/", 1)[1])
        side = int(round(math.sqrt(tokens))) * patch if tokens else None
        try:
            expected = _shape_signature(name, side)
        except Exception:  # noqa: BLE001 - an impossible size for this preset
            continue
        matched = sum(1 for k, s in expected.items() if shapes.get(k) == s)
        score = matched / max(len(expected), len(shapes))
        if score > best_score:
            input_size = side if side else _dit_input_size(expected, patch)
            best, best_score = (name, input_size), score
    return best if best_score > 0.5 else None


def _dit_input_size(shapes: dict[str, tuple[int, ...]], patch: int) -> int:
    return int(round(math.sqrt(shapes["pos_embed"][1]))) * patch


def check_state_dict(model: DiT, state_dict: dict[str, torch.Tensor], source: str, preset: str) -> None:
    """Strict key and shape check (the error lists the differences and the likely preset), then every weight
    floating-point and finite: ``load_state_dict`` would cast integer weights silently, and NaN weights give NaN
    samples."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or wrong):
        _check_values(state_dict, source)
        return

    def _few(items: list[str]) -> str:
        return ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {_few(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {_few(unexpected)}")
    if wrong:
        parts.append(f"{len(wrong)} shape mismatches: {_few(wrong)}")
    guess = guess_preset(state_dict)
    if guess is None:
        hint = "it does not look like any DiT preset"
    elif guess[0] != preset:
        hint = f"it looks like a {guess[0]!r} checkpoint: use --model {guess[0]}"
    else:
        hint = f"it looks like {preset!r} with a {guess[1]}x{guess[1]} input: use the matching --image-size"
    raise CheckpointError(f"checkpoint {source!r} does not fit preset {preset!r} ({'; '.join(parts)}); {hint}")


def _check_values(state_dict: dict[str, torch.Tensor], source: str) -> None:
    """One line naming the first weight that is not floating-point or holds NaN or infinite values."""
    fix = "pass the checkpoint as it was trained (a damaged or hand-edited copy is not one)"
    for key, value in state_dict.items():
        if not value.is_floating_point():
            raise CheckpointError(f"checkpoint {source!r}: {key} holds {value.dtype} values, not weights; {fix}")
        if not torch.isfinite(value).all():
            raise CheckpointError(f"checkpoint {source!r} holds NaN or infinite values in {key}; {fix}")


def load_model(
    name: str,
    ckpt: str | Path | None = None,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
) -> DiT:
    """Build a preset, load its weights and put it in eval mode on ``device``.

    ``ckpt`` defaults to the committed weights of presets that have them
    (``tiny-digits``, ``tiny-fashion``); other presets need a path (the official ``DiT-XL-2-256x256.pt``).

    Example:
        >>> model = load_model("tiny-digits")
        >>> model.training
        False
    """
    info = preset_info(name)
    if ckpt is None:
        if info.checkpoint is None:
            raise CheckpointError(
                f"preset {name!r} has no committed weights; pass --ckpt PATH (e.g. the official DiT-XL-2-256x256.pt)"
            )
        ckpt = info.checkpoint
    state_dict = read_state_dict(ckpt)
    model = create_model(name, image_size)
    check_state_dict(model, state_dict, str(ckpt), name)
    model.load_state_dict(state_dict, strict=True)
    return model.to(device).eval()


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything but cpu / cuda[:i] / auto is one line."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise InvalidArgumentError(f"unknown --device {name!r}; use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidArgumentError(f"--device {name} requested but no CUDA GPU is visible; use --device cpu")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise InvalidArgumentError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) are visible")
    return name
