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
from itertools import chain, islice
from pathlib import Path

import torch

from goc_utils.errors import CheckpointError, first_line, shorten
from goc_utils.files import check_memory, load_safetensors, load_torch
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


ARCHITECTURE_FIELDS = (
    "num_attention_heads", "attention_head_dim", "in_channels", "num_layers", "sample_size", "patch_size",
    "num_embeds_ada_norm",
)  # fmt: skip
"""The fields of a DiT transformer's ``config.json`` that fix its weights' shapes (each a whole number >= 1)."""


def read_config(folder: str | Path) -> dict:
    """The transformer's ``config.json``, checked (one-line error if it is not a DiT transformer's)."""
    folder = transformer_folder(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {str(folder / 'config.json')!r} ({first_line(exc)})") from None
    return check_config(config, str(folder / "config.json"))


def check_config(config: object, source: str = "config") -> dict:
    """``config`` if it describes a class-conditional DiT transformer, else a one-line :class:`CheckpointError`
    naming the bad field: a JSON object whose :data:`ARCHITECTURE_FIELDS` are whole numbers >= 1, with
    ``sample_size`` a multiple of ``patch_size``, ``out_channels`` (optional) ``in_channels`` or twice it,
    ``norm_type`` ``ada_norm_zero``."""
    fix = "pass a diffusers DiT folder as goc export-diffusers or DiTPipeline.save_pretrained writes it"
    if not isinstance(config, dict):
        raise CheckpointError(f"{source!r} holds a JSON {_json_type(config)}, not an object of DiT settings; {fix}")
    name = config.get("_class_name", "")
    if name and name not in ("DiTTransformer2DModel", "Transformer2DModel"):
        raise CheckpointError(
            f"{source!r} holds a {shorten(name)}, not a DiT transformer; pass a DiT pipeline folder "
            "(e.g. a local copy of facebook/DiT-XL-2-256) or its transformer/ folder"
        )
    if config.get("norm_type", "ada_norm_zero") != "ada_norm_zero":
        raise CheckpointError(f"{source!r} is not a class-conditional DiT (norm_type ada_norm_zero); {fix}")
    for key in ARCHITECTURE_FIELDS:
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            found = "is missing" if key not in config else f"is {shorten(json.dumps(value))}"
            raise CheckpointError(f"{source!r}: {key} {found}, not a whole number >= 1; {fix}")
    if config["sample_size"] % config["patch_size"]:
        raise CheckpointError(
            f"{source!r}: sample_size {config['sample_size']} is not a multiple of patch_size {config['patch_size']}"
        )
    out = config.get("out_channels")
    if out is not None and out not in (config["in_channels"], 2 * config["in_channels"]):
        raise CheckpointError(
            f"{source!r}: out_channels is {shorten(json.dumps(out))}, not in_channels ({config['in_channels']}) or "
            f"twice it; {fix}"
        )
    return config


def _json_type(value: object) -> str:
    names = {list: "list", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def expected_shapes(config: dict) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """``(top-level key -> shape, per-block key suffix -> shape)`` of the weights a diffusers DiT with the
    (checked) ``config`` holds: hidden size D = heads x head dim, MLP 4D, frequency embedding 256, class
    table ``num_embeds_ada_norm + 1`` rows (the null class), output ``patch**2 x out_channels``."""
    hidden = config["num_attention_heads"] * config["attention_head_dim"]
    patch, channels = config["patch_size"], config["in_channels"]
    out = config.get("out_channels") or channels
    top = {
        "pos_embed.proj.weight": (hidden, channels, patch, patch),
        "proj_out_1.weight": (2 * hidden, hidden),
        "proj_out_2.weight": (patch * patch * out, hidden),
    }
    block = {
        EMBEDDER_KEYS["t_embedder.mlp.0.weight"]: (hidden, 256),
        EMBEDDER_KEYS["t_embedder.mlp.2.weight"]: (hidden, hidden),
        EMBEDDER_KEYS["y_embedder.embedding_table.weight"]: (config["num_embeds_ada_norm"] + 1, hidden),
        "norm1.linear.weight": (6 * hidden, hidden),
        "attn1.to_out.0.weight": (hidden, hidden),
        "ff.net.0.proj.weight": (4 * hidden, hidden),
        "ff.net.2.weight": (hidden, 4 * hidden),
    } | {f"attn1.{name}.weight": (hidden, hidden) for name in QKV}
    for shapes in (top, block):  # every linear layer's bias: one value per output
        shapes.update({k[: -len("weight")] + "bias": v[:1] for k, v in list(shapes.items()) if "embedding" not in k})
    return top, block


def check_weights(state: dict[str, torch.Tensor], config: dict, source: str = "diffusers DiT weights") -> None:
    """One line naming the keys of ``state`` that the (checked) ``config`` does not imply, those it lacks and
    the shapes that differ from :func:`expected_shapes` (``num_layers`` blocks ``transformer_blocks.0..``)."""
    top, block = expected_shapes(config)
    depth = config["num_layers"]
    unknown, wrong, found = [], [], 0
    for key, tensor in state.items():
        head, _, rest = key.partition(".")
        index, _, suffix = rest.partition(".")
        if key in top:
            want = top[key]
        elif head == "transformer_blocks" and index.isdigit() and int(index) < depth and suffix in block:
            want = block[suffix]
        else:
            unknown.append(key)
            continue
        found += 1
        shape = tuple(getattr(tensor, "shape", ()))
        if shape != want:
            wrong.append(f"{key} {'x'.join(map(str, shape)) or 'a 0-d value'} (config: {'x'.join(map(str, want))})")
    missing = []
    if found < len(top) + depth * len(block):
        wanted = chain(top, (f"transformer_blocks.{i}.{s}" for i in range(depth) for s in block))
        missing = list(islice((k for k in wanted if k not in state), 2))
    parts = []
    for what, items, count in (
        ("unknown keys", unknown, len(unknown)),
        ("missing keys", missing, len(top) + depth * len(block) - found),
        ("shapes that differ", wrong, len(wrong)),
    ):
        if count:
            parts.append(f"{count} {what} ({', '.join(shorten(k) for k in items[:2])}{', ...' if count > 2 else ''})")
    if parts:
        hidden = config["num_attention_heads"] * config["attention_head_dim"]
        raise CheckpointError(
            f"{source} do not fit its config.json ({depth} layers of width {hidden}, patch {config['patch_size']}): "
            f"{'; '.join(parts)}; pass an unmodified diffusers DiT folder (e.g. a new goc export-diffusers)"
        )


def read_diffusers_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """The transformer weights of a diffusers folder (single or sharded ``.safetensors``, or ``.bin``)."""
    folder = transformer_folder(folder)
    fix = "pass a complete diffusers DiT folder (e.g. a new goc export-diffusers)"
    files = sorted(folder.glob("diffusion_pytorch_model*.safetensors"))
    loader = load_safetensors
    if not files:
        files = sorted(folder.glob("diffusion_pytorch_model*.bin"))
        loader = load_torch  # type: ignore[assignment]
    if not files:
        raise CheckpointError(
            f"{str(folder)!r} has no diffusion_pytorch_model*.safetensors or .bin weights; "
            "pass a complete diffusers DiT folder"
        )
    state: dict[str, torch.Tensor] = {}
    for file in files:
        found = loader(file, "diffusers weights", fix, error=CheckpointError)
        if not isinstance(found, dict):
            raise CheckpointError(f"diffusers weights {shorten(file)!r} hold no state dict; {fix}")
        state.update(found)
    return state


def from_diffusers(
    state: dict[str, torch.Tensor], config: dict, source: str = "diffusers DiT weights"
) -> dict[str, torch.Tensor]:
    """A diffusers DiT state dict -> ours (the ``pos_embed`` is recomputed as DiT stores it); ``config`` and the
    weights are checked first (:func:`check_config`, :func:`check_weights`)."""
    check_weights(state, check_config(config), source)
    depth = config["num_layers"]
    out: dict[str, torch.Tensor] = {}
    for ours, suffix in EMBEDDER_KEYS.items():
        first = state[f"transformer_blocks.0.{suffix}"]
        for i in range(1, depth):
            if not torch.equal(first, state[f"transformer_blocks.{i}.{suffix}"]):
                raise CheckpointError(
                    f"the per-block copies of {suffix.rsplit('.', 2)[0]} differ (block 0 vs block {i}); DiT has one "
                    "timestep / class embedder, so this transformer cannot be mapped onto it"
                )
        out[ours] = first
    for ours, theirs in TOP_KEYS.items():
        for kind in ("weight", "bias"):
            out[f"{ours}.{kind}"] = state[f"{theirs}.{kind}"]
    for i in range(depth):
        prefix = f"transformer_blocks.{i}."
        for ours, theirs in BLOCK_KEYS.items():
            for kind in ("weight", "bias"):
                out[f"blocks.{i}.{ours}.{kind}"] = state[f"{prefix}{theirs}.{kind}"]
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([state[f"{prefix}attn1.{n}.{kind}"] for n in QKV])
    hidden = out["x_embedder.proj.weight"].shape[0]
    grid = config["sample_size"] // config["patch_size"]
    check_memory(12 * hidden * grid**2, f"sample_size {config['sample_size']} of {source}", "pass a DiT's config.json")
    out["pos_embed"] = torch.from_numpy(get_2d_sincos_pos_embed(hidden, grid)).float().unsqueeze(0)
    return out


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
