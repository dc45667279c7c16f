"""Our DiT as a diffusers ``DiTTransformer2DModel`` / ``DiTPipeline``: built in memory, exported to a folder,
loaded back (the key mapping lives in :mod:`goc_utils.model.diffusers_format`).

Two numerical differences of diffusers' DiT from the published model, both handled here:

* its sinusoidal timestep features divide the frequency exponent by ``half - 1`` (``Timesteps(...,
  downscale_freq_shift=1)``) where DiT divides by ``half``: up to 1.94 apart on the same timestep.
  :func:`match_dit_timesteps` sets the published convention on a loaded transformer (not stored in
  its config, so it is applied on every load by :func:`load_transformer`);
* its LayerNorm eps defaults to 1e-5 (DiT: 1e-6); :func:`export_diffusers` writes ``norm_eps=1e-6``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from goc_utils.errors import CheckpointError, first_line, shorten
from goc_utils.files import atomic_write_dir
from goc_utils.model.diffusers_format import read_config, to_diffusers, transformer_folder


def diffusers_config(model) -> dict:
    """``DiTTransformer2DModel`` keyword arguments for one of our DiTs (LayerNorm eps as DiT: 1e-6)."""
    return dict(
        num_attention_heads=model.num_heads,
        attention_head_dim=model.hidden_size // model.num_heads,
        in_channels=model.in_channels,
        out_channels=model.out_channels,
        num_layers=model.depth,
        sample_size=model.input_size,
        patch_size=model.patch_size,
        num_embeds_ada_norm=model.num_classes,
        norm_eps=1e-6,
    )


def match_dit_timesteps(transformer) -> None:
    """Give a diffusers DiT the published timestep features (``downscale_freq_shift`` 0, as DiT)."""
    for block in getattr(transformer, "transformer_blocks", ()):
        emb = getattr(getattr(block, "norm1", None), "emb", None)
        if emb is not None and hasattr(emb, "time_proj"):
            emb.time_proj.downscale_freq_shift = 0


def to_transformer(model, dit_timesteps: bool = True):
    """One of our DiTs as an (in-memory) ``DiTTransformer2DModel`` with the same weights."""
    from diffusers import DiTTransformer2DModel  # lazy: heavy

    parameter = next(model.parameters())
    with torch.device("meta"):
        transformer = DiTTransformer2DModel(**diffusers_config(model))
    transformer.load_state_dict(to_diffusers(model.state_dict()), strict=True, assign=True)
    transformer.pos_embed.pos_embed = model.pos_embed.detach().clone()  # buffer: same sin-cos values as DiT's
    if parameter.dtype != torch.float32:
        transformer = transformer.to(dtype=parameter.dtype)
    transformer = transformer.to(parameter.device).eval()
    if dit_timesteps:
        match_dit_timesteps(transformer)
    return transformer


EXPORT_FILES = {
    "transformer": {"config.json", "diffusion_pytorch_model.safetensors"},
    "pipeline": {"model_index.json", "transformer", "vae", "scheduler"},
}


EXPORT_MARK = "_written_by"
"""The ``config.json`` key (private: diffusers drops it on load, so a re-saved folder loses it) that marks a
transformer written by :func:`export_diffusers`, the only folders an export may replace."""


def _written_by_export(folder: Path, kind: str) -> bool:
    """Whether ``folder`` is what :func:`export_diffusers` writes for ``kind``, unchanged in its file names and
    carrying its mark (so it may be replaced): nothing else, however DiT-like, is ever deleted."""
    if folder.is_symlink() or {p.name for p in folder.iterdir()} != EXPORT_FILES[kind]:
        return False
    config = folder / ("config.json" if kind == "transformer" else "model_index.json")
    try:
        found = json.loads(config.read_text())
        name, mark = found.get("_class_name"), found.get(EXPORT_MARK)
    except (OSError, ValueError, AttributeError):
        return False
    if kind == "pipeline":
        return name == "DiTPipeline" and _written_by_export(folder / "transformer", "transformer")
    return name == "DiTTransformer2DModel" and mark == "goc export-diffusers"


def check_export_target(out: Path, kind: str) -> None:
    """One line unless ``out`` may receive an export of ``kind`` (``"transformer"`` / ``"pipeline"``): it does
    not exist, is an empty folder or holds an earlier export of the same kind (:func:`_written_by_export`)."""
    if out.is_symlink() or (
        out.exists() and (not out.is_dir() or (any(out.iterdir()) and not _written_by_export(out, kind)))
    ):
        raise CheckpointError(
            f"--out {shorten(out)!r} exists and is not a DiT {kind} folder written by goc export-diffusers (it would "
            "be replaced with everything in it); choose a new or empty folder"
        )


def export_diffusers(model, out: str | Path, vae=None, class_names: Sequence[str] | None = None) -> Path:
    """Write one of our DiTs as a diffusers folder (``save_pretrained``); returns it.

    Without ``vae``: a ``DiTTransformer2DModel`` folder. With ``vae`` (a diffusers ``AutoencoderKL``): a full
    ``DiTPipeline`` folder (``transformer/``, ``vae/``, ``scheduler/``: DDIM on DiT's linear betas, and
    ``model_index.json``; ``class_names`` become its ``id2label``) that ``DiTPipeline.from_pretrained`` loads.
    The folder is written next to ``out`` and moved into place when complete, so an interrupted export
    leaves no half-written model. An existing ``out`` is replaced only if it is a diffusers folder of the
    same kind written by this function (or an empty folder).
    """
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel  # lazy: heavy
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    out = Path(out)
    kind = "transformer" if vae is None else "pipeline"
    check_export_target(out, kind)
    transformer = DiTTransformer2DModel(**diffusers_config(model))
    transformer.load_state_dict(to_diffusers(model.state_dict()), strict=True)
    with atomic_write_dir(out) as tmp:
        folder = tmp if vae is None else tmp / "transformer"
        if vae is None:
            transformer.save_pretrained(str(tmp), safe_serialization=True)
        else:
            scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                                      clip_sample=False)  # fmt: skip
            DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler).save_pretrained(
                str(tmp), safe_serialization=True
            )
            if class_names:  # DiTPipeline takes id2label from model_index.json (as facebook/DiT-XL-2-256's)
                index = json.loads((tmp / "model_index.json").read_text())
                index["id2label"] = {str(i): name for i, name in enumerate(class_names)}
                (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(config | {EXPORT_MARK: "goc export-diffusers"}, indent=2) + "\n")
    return out


def load_transformer(path: str | Path, device: str | torch.device = "cpu", dit_timesteps: bool = True):
    """A ``DiTTransformer2DModel`` from a pipeline or transformer folder, eval mode on ``device``.

    ``dit_timesteps`` (default) applies :func:`match_dit_timesteps`, so the transformer computes the
    published DiT (and equals our ``DiT`` on the same weights); False keeps diffusers' features.
    """
    from diffusers import DiTTransformer2DModel  # lazy: heavy
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    folder = transformer_folder(path)
    read_config(folder)
    try:
        transformer = DiTTransformer2DModel.from_pretrained(str(folder))
    except Exception as exc:  # noqa: BLE001 - report any reader failure in one line
        raise CheckpointError(f"cannot load the diffusers DiT in {str(folder)!r}: {first_line(exc)}") from None
    if dit_timesteps:
        match_dit_timesteps(transformer)
    return transformer.to(device).eval()
