"""DiT's weights in the diffusers layout, both ways (pure state dicts: reading a diffusers folder needs no
diffusers import; :mod:`goc_utils.integrations.diffusers.transformer` builds diffusers objects on top).

diffusers ships DiT as ``DiTTransformer2DModel`` (``facebook/DiT-XL-2-256``: a pipeline folder with
``model_index.json``, ``transformer/``, ``vae/`` and ``scheduler/``). The weights are DiT's, laid out
differently:

=============================================  ===================================================
ours (facebookresearch/DiT)                    diffusers (``B`` = ``transformer_blocks.{i}``)
=============================================  ===================================================
``x_embedder.proj``                            ``pos_embed.proj``
``pos_embed`` (fixed sin-cos parameter)        recomputed by diffusers (not stored)
``t_embedder.mlp.{0,2}``                       ``B.norm1.emb.timestep_embedder.linear_{1,2}``
``y_embedder.embedding_table``                 ``B.norm1.emb.class_embedder.embedding_table``
``blocks.{i}.adaLN_modulation.1``              ``B.norm1.linear``
``blocks.{i}.attn.qkv`` (rows q, k, v)         ``B.attn1.to_{q,k,v}``
``blocks.{i}.attn.proj``                       ``B.attn1.to_out.0``
``blocks.{i}.mlp.fc{1,2}``                     ``B.ff.net.{0.proj,2}``
``final_layer.adaLN_modulation.1`` / linear    ``proj_out_1`` / ``proj_out_2``
=============================================  ===================================================

diffusers keeps one copy of the timestep / class embedders per block (all equal after conversion;
only block 0's feeds the final layer); reading collapses them and refuses checkpoints whose copies
disagree.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from goc_utils.errors import CheckpointError, first_line
from goc_utils.model.dit import get_2d_sincos_pos_embed

EMBEDDER_KEYS = {
    "t_embedder.mlp.0.weight": "norm1.emb.timestep_embedder.linear_1.weight",
    "t_embedder.mlp.0.bias": "norm1.emb.timestep_embedder.linear_1.bias",
    "t_embedder.mlp.2.weight": "norm1.emb.timestep_embedder.linear_2.weight",
    "t_embedder.mlp.2.bias": "norm1.emb.timestep_embedder.linear_2.bias",
    "y_embedder.embedding_table.weight": "norm1.emb.class_embedder.embedding_table.weight",
}
"""Our embedder keys -> their per-block suffix in diffusers."""


BLOCK_KEYS = {
    "adaLN_modulation.1": "norm1.linear",
    "attn.proj": "attn1.to_out.0",
    "mlp.fc1": "ff.net.0.proj",
    "mlp.fc2": "ff.net.2",
}
"""Per-block linear layers (``.weight`` and ``.bias``): ours -> diffusers (``qkv`` is split separately)."""


TOP_KEYS = {
    "x_embedder.proj": "pos_embed.proj",
    "final_layer.adaLN_modulation.1": "proj_out_1",
    "final_layer.linear": "proj_out_2",
}
"""Top-level layers (``.weight`` and ``.bias``): ours -> diffusers."""


QKV = ("to_q", "to_k", "to_v")


def folder_kind(path: str | Path) -> str | None:
    """``"pipeline"`` (``model_index.json`` + ``transformer/``), ``"transformer"`` (``config.json`` of a
    DiT transformer) or None for anything else."""
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / "model_index.json").is_file() and (path / "transformer").is_dir():
        return "pipeline"
    if (path / "config.json").is_file():
        return "transformer"
    return None


def transformer_folder(path: str | Path) -> Path:
    """The ``transformer/`` folder of a pipeline folder, or the folder itself."""
    path = Path(path)
    return path / "transformer" if folder_kind(path) == "pipeline" else path


def pipeline_vae_folder(path: str | Path | None) -> Path | None:
    """A pipeline folder's ``vae/`` (with its config), else None."""
    if path is None or folder_kind(path) != "pipeline":
        return None
    vae = Path(path) / "vae"
    return vae if (vae / "config.json").is_file() else None


def read_config(folder: str | Path) -> dict:
    """The transformer's ``config.json`` (one-line error if it is not a DiT transformer)."""
    folder = transformer_folder(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {str(folder / 'config.json')!r} ({first_line(exc)})") from None
    name = config.get("_class_name", "")
    if name and name not in ("DiTTransformer2DModel", "Transformer2DModel"):
        raise CheckpointError(
            f"{str(folder)!r} holds a {name}, not a DiT transformer; pass a DiT pipeline folder "
            "(e.g. a local copy of facebook/DiT-XL-2-256) or its transformer/ folder"
        )
    if config.get("norm_type", "ada_norm_zero") != "ada_norm_zero" or not config.get("patch_size"):
        raise CheckpointError(f"{str(folder)!r} is not a class-conditional DiT (norm_type ada_norm_zero, patch_size)")
    return config


def read_diffusers_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """The transformer weights of a diffusers folder (single or sharded ``.safetensors``, or ``.bin``)."""
    folder = transformer_folder(folder)
    files = sorted(folder.glob("diffusion_pytorch_model*.safetensors"))
    loader = load_file
    if not files:
        files = sorted(folder.glob("diffusion_pytorch_model*.bin"))

        def loader(path: str) -> dict:
            return torch.load(path, map_location="cpu", weights_only=True)

    if not files:
        raise CheckpointError(
            f"{str(folder)!r} has no diffusion_pytorch_model*.safetensors or .bin weights; "
            "pass a complete diffusers DiT folder"
        )
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            state.update(loader(str(file)))
        except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file for the user
            raise CheckpointError(f"cannot read {str(file)!r} ({first_line(exc, 160)})") from None
    return state


def from_diffusers(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """A diffusers DiT state dict -> ours (the ``pos_embed`` is recomputed as DiT stores it)."""
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("transformer_blocks.")}
    depth = int(config.get("num_layers") or 1 + max(blocks, default=-1))
    out: dict[str, torch.Tensor] = {}
    missing = []

    def take(key: str) -> torch.Tensor:
        if key not in state:
            missing.append(key)
            return torch.empty(0)
        return state[key]

    for ours, suffix in EMBEDDER_KEYS.items():
        first = take(f"transformer_blocks.0.{suffix}")
        for i in range(1, depth):
            other = take(f"transformer_blocks.{i}.{suffix}")
            if not missing and not torch.equal(first, other):
                raise CheckpointError(
                    f"the per-block copies of {suffix.rsplit('.', 2)[0]} differ (block 0 vs block {i}); DiT has one "
                    "timestep / class embedder, so this transformer cannot be mapped onto it"
                )
        out[ours] = first
    for ours, theirs in TOP_KEYS.items():
        for kind in ("weight", "bias"):
            out[f"{ours}.{kind}"] = take(f"{theirs}.{kind}")
    for i in range(depth):
        prefix = f"transformer_blocks.{i}."
        for ours, theirs in BLOCK_KEYS.items():
            for kind in ("weight", "bias"):
                out[f"blocks.{i}.{ours}.{kind}"] = take(f"{prefix}{theirs}.{kind}")
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([take(f"{prefix}attn1.{n}.{kind}") for n in QKV])
    if missing:
        raise CheckpointError(
            f"diffusers DiT weights lack {len(missing)} keys ({', '.join(missing[:3])}); "
            "pass a complete DiTTransformer2DModel folder"
        )
    hidden = out["x_embedder.proj.weight"].shape[0]
    grid = int(config["sample_size"]) // int(config["patch_size"])
    out["pos_embed"] = torch.from_numpy(get_2d_sincos_pos_embed(hidden, grid)).float().unsqueeze(0)
    known = set(_diffusers_keys(depth))
    extra = [k for k in state if k not in known]
    if extra:
        raise CheckpointError(
            f"diffusers DiT weights have {len(extra)} keys DiT does not ({', '.join(extra[:3])}); "
            "this is not a class-conditional DiT transformer"
        )
    return out


def _diffusers_keys(depth: int) -> list[str]:
    keys = [f"{t}.{k}" for t in TOP_KEYS.values() for k in ("weight", "bias")]
    for i in range(depth):
        keys += [f"transformer_blocks.{i}.{s}" for s in EMBEDDER_KEYS.values()]
        keys += [f"transformer_blocks.{i}.{t}.{k}" for t in BLOCK_KEYS.values() for k in ("weight", "bias")]
        keys += [f"transformer_blocks.{i}.attn1.{n}.{k}" for n in QKV for k in ("weight", "bias")]
    return keys


def to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our DiT state dict -> diffusers' (``pos_embed`` dropped: diffusers recomputes the same values)."""
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in TOP_KEYS.items():
        for kind in ("weight", "bias"):
            out[f"{theirs}.{kind}"] = state[f"{ours}.{kind}"]
    for i in range(depth):
        prefix = f"transformer_blocks.{i}."
        for ours, suffix in EMBEDDER_KEYS.items():
            out[prefix + suffix] = state[ours].clone()
        for ours, theirs in BLOCK_KEYS.items():
            for kind in ("weight", "bias"):
                out[f"{prefix}{theirs}.{kind}"] = state[f"blocks.{i}.{ours}.{kind}"]
        for kind in ("weight", "bias"):
            for name, part in zip(QKV, state[f"blocks.{i}.attn.qkv.{kind}"].chunk(3, dim=0), strict=True):
                out[f"{prefix}attn1.{name}.{kind}"] = part.contiguous()
    return out
