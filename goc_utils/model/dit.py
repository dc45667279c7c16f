"""Diffusion Transformer (DiT) with separately addressable attention / MLP units.

The architecture, module names and initialisation follow facebookresearch/DiT (adaLN-Zero
blocks built from timm's ``PatchEmbed``, ``Attention`` and ``Mlp``), so the official
``DiT-XL-2-256x256.pt`` state dict loads key for key. One thing is added: a block computes
its two branches, the attention branch and the MLP branch, through an optional
``unit_fn`` so that a cache engine can replace either branch output (before gating) at any
step without touching the sampler.

Units are numbered per block: unit 0 is the attention branch, unit 1 the MLP branch.
Shapes: images / latents ``(N, C, H, W)``; tokens ``(N, T, D)`` with ``T = (H / p) ** 2``.
"""

from __future__ import annotations

import argparse
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import Attention, Mlp, PatchEmbed
from torch import nn

from goc_utils import paths
from goc_utils.errors import CheckpointError, InvalidArgumentError, UnknownPresetError, first_line
from goc_utils.integrations.diffusers import transformer as diffusers_dit
from goc_utils.model.macs import model_macs

UnitFn = Callable[[int, int, Callable[[], torch.Tensor]], torch.Tensor]
"""``unit_fn(block_index, unit, compute) -> branch output``.

``unit`` is 0 (attention) or 1 (MLP); ``compute()`` evaluates the branch and returns its
output ``(N, T, D)`` before the adaLN gate. A cache engine either calls ``compute`` or
returns a stored / corrected tensor of the same shape.
"""

ATTENTION, MLP = 0, 1


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation of tokens ``x (N, T, D)`` by per-sample ``shift, scale (N, D)``."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """Sinusoidal timestep features (256-d, max period 10,000) followed by a 2-layer MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
        """``(N,)`` timesteps (may be fractional) -> ``(N, dim)`` features ``[cos, sin]``."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))


class LabelEmbedder(nn.Module):
    """Class embedding table with one extra "null" row for classifier-free guidance.

    During training each label is replaced by the null class ``num_classes`` with
    probability ``dropout_prob``.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        use_cfg_embedding = dropout_prob > 0
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def forward(self, labels: torch.Tensor, train: bool) -> torch.Tensor:
        if train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels)


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block whose two branches are cacheable units."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(
            in_features=hidden_size,
            hidden_features=int(hidden_size * mlp_ratio),
            act_layer=lambda: nn.GELU(approximate="tanh"),
            drop=0,
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor, unit_fn: UnitFn | None = None, index: int = 0) -> torch.Tensor:
        """Tokens ``x (N, T, D)``, conditioning ``c (N, D)`` -> tokens ``(N, T, D)``."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        if unit_fn is None:
            x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
            return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        attn_out = unit_fn(index, ATTENTION, lambda: self.attn(modulate(self.norm1(x), shift_msa, scale_msa)))
        x = x + gate_msa.unsqueeze(1) * attn_out
        mlp_out = unit_fn(index, MLP, lambda: self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))
        return x + gate_mlp.unsqueeze(1) * mlp_out


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm + linear projection back to patches."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """Class-conditional Diffusion Transformer (Peebles & Xie, 2023).

    Args:
        input_size: spatial size H = W of the model input (latent size for VAE presets).
        patch_size: patch side p; the model sees ``(input_size / p) ** 2`` tokens.
        in_channels: input channels C; with ``learn_sigma`` the output has 2C channels
            (eps, then the variance interpolation values).
        hidden_size: token width D.
        depth: number of blocks (2 x depth cacheable units).
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / D.
        class_dropout_prob: label dropout for classifier-free guidance training; > 0 adds
            the null-class row ``num_classes`` to the embedding table.
        num_classes: number of real classes.
        learn_sigma: predict the variance as well as eps (as DiT does).
    """

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
    ):
        super().__init__()
        if input_size < 1 or input_size % patch_size:
            raise InvalidArgumentError(
                f"model input {input_size}x{input_size} is not a positive multiple of the patch size {patch_size}; "
                "choose another --image-size"
            )
        self.learn_sigma = learn_sigma
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.input_size = input_size
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.num_classes = num_classes

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        num_patches = self.x_embedder.num_patches
        # Fixed sin-cos embedding, stored as a frozen parameter as in the official checkpoints.
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    @property
    def num_tokens(self) -> int:
        """Tokens per image, T."""
        return self.x_embedder.num_patches

    @property
    def null_class(self) -> int:
        """Label of the unconditional ("null") class used by classifier-free guidance."""
        return self.num_classes

    def initialize_weights(self) -> None:
        """DiT's initialisation: xavier linears, zeroed adaLN and output layers."""

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

        self.apply(_basic_init)
        grid = int(self.x_embedder.num_patches**0.5)
        pos_embed = get_2d_sincos_pos_embed(self.hidden_size, grid)
        self.pos_embed.data.copy_(torch.from_numpy(pos_embed).float().unsqueeze(0))
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.proj.bias, 0)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``(N, T, p * p * C_out)`` -> images ``(N, C_out, H, W)``."""
        c, p = self.out_channels, self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, unit_fn: UnitFn | None = None) -> torch.Tensor:
        """``x (N, C, H, W)``, diffusion timesteps ``t (N,)``, labels ``y (N,)`` -> ``(N, C_out, H, W)``.

        ``unit_fn`` (optional) is called for every branch of every block; see :data:`UnitFn`.
        """
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y, self.training)
        for index, block in enumerate(self.blocks):
            x = block(x, c, unit_fn, index)
        return self.unpatchify(self.final_layer(x, c))


# --------------------------------------------------------------------------------------
# Fixed 2D sin-cos positional embedding (MAE / DiT convention)
# --------------------------------------------------------------------------------------


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
    """``(grid_size ** 2, embed_dim)`` float64 embedding; half the width encodes each axis."""
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape(2, 1, grid_size, grid_size)
    emb_h = _sincos_1d(embed_dim // 2, grid[0])
    emb_w = _sincos_1d(embed_dim // 2, grid[1])
    return np.concatenate([emb_h, emb_w], axis=1)


def _sincos_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


# --------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------


def _dit(depth: int, hidden_size: int, patch_size: int, num_heads: int) -> Callable[..., DiT]:
    def factory(**kwargs) -> DiT:
        return DiT(depth=depth, hidden_size=hidden_size, patch_size=patch_size, num_heads=num_heads, **kwargs)

    factory.__name__ = f"DiT_d{depth}_h{hidden_size}_p{patch_size}"
    return factory


def tiny_digits(**kwargs) -> DiT:
    """The embedded model: 8x8 grey digits, patch 2 (16 tokens), width 128, depth 12, 10 classes."""
    config = dict(input_size=8, patch_size=2, in_channels=1, hidden_size=128, depth=12, num_heads=4, num_classes=10)
    config.update(kwargs)
    return DiT(**config)


def tiny_fashion(**kwargs) -> DiT:
    """The real-image tier: DiT-XL/2's pipeline in miniature on Fashion-MNIST.

    8x8x4 latents of the tier's VAE (32x32 images, factor 4), patch 2 (16 tokens, DiT-XL/2's patch
    size on latents), learned sigma (8 output channels), 10 classes + the null class, depth 12 (GOC's
    host schedules address 2 x depth units), width 128 (as tiny-digits): a training step of 128 latents
    takes about 0.45 s on two CPU cores, so 8,000 steps (an hour) fit the tier's training budget (under 3
    hours for VAE, judge, DiT and router together).
    """
    config = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=128, depth=12, num_heads=4, num_classes=10)
    config.update(kwargs)
    return DiT(**config)


DiT_models: dict[str, Callable[..., DiT]] = {
    "DiT-XL/2": _dit(28, 1152, 2, 16),
    "DiT-XL/4": _dit(28, 1152, 4, 16),
    "DiT-XL/8": _dit(28, 1152, 8, 16),
    "DiT-L/2": _dit(24, 1024, 2, 16),
    "DiT-L/4": _dit(24, 1024, 4, 16),
    "DiT-L/8": _dit(24, 1024, 8, 16),
    "DiT-B/2": _dit(12, 768, 2, 12),
    "DiT-B/4": _dit(12, 768, 4, 12),
    "DiT-B/8": _dit(12, 768, 8, 12),
    "DiT-S/2": _dit(12, 384, 2, 6),
    "DiT-S/4": _dit(12, 384, 4, 6),
    "DiT-S/8": _dit(12, 384, 8, 6),
    "tiny-digits": tiny_digits,
    "tiny-fashion": tiny_fashion,
}
"""Model factories by preset name, as in DiT (``DiT_models['DiT-XL/2'](input_size=32)``)."""


@dataclass(frozen=True)
class PresetInfo:
    """How a preset is used by the sampler.

    Attributes:
        latent: True if the model works on VAE latents; False for pixel-space presets such as
            ``tiny-digits``.
        default_image_size: image side in pixels when none is given.
        checkpoint: committed weights for this preset, or None (user supplies ``--ckpt``).
        vae: the VAE used when ``--vae`` is not given: ``"ema"`` (``sd-vae-ft-ema``) for DiT's presets,
            the committed folder for ``tiny-fashion``; None for pixel-space presets. The latent scale
            always comes from the VAE's config (``scaling_factor``).
        vae_factor: pixels per latent cell along a side (8 for sd-vae, 4 for the tier's VAE).
        router: the committed Learning-to-Cache router for DDIM-20, or None.
        judge: the features that score this preset's samples by default (``digits`` / ``fashion``: the
            tiny tiers' classifiers; None: Inception, as the ADM evaluator).
    """

    latent: bool
    default_image_size: int
    checkpoint: Path | None = None
    vae: str | None = None
    vae_factor: int = 8
    router: Path | None = None
    judge: str | None = None


def preset_info(name: str) -> PresetInfo:
    """Usage facts for a preset name (raises :class:`UnknownPresetError`)."""
    check_preset(name)
    if name == "tiny-digits":
        return PresetInfo(
            latent=False,
            default_image_size=8,
            checkpoint=paths.TINY_DIGITS_WEIGHTS,
            router=paths.TINY_DIGITS_ROUTER,
            judge="digits",
        )
    if name == "tiny-fashion":
        return PresetInfo(
            latent=True,
            default_image_size=32,
            checkpoint=paths.TINY_FASHION_WEIGHTS,
            vae=str(paths.TINY_FASHION_VAE),
            vae_factor=4,
            router=paths.TINY_FASHION_ROUTER,
            judge="fashion",
        )
    return PresetInfo(latent=True, default_image_size=256, vae="ema")


def check_preset(name: str) -> None:
    """Raise a one-line :class:`UnknownPresetError` if ``name`` is not a preset."""
    if name not in DiT_models:
        raise UnknownPresetError(f"unknown model preset {name!r}; choose one of: {', '.join(DiT_models)}")


def input_size_for(name: str, image_size: int | None = None) -> int:
    """Model input side for a preset at ``image_size`` pixels (latents are ``vae_factor`` times smaller)."""
    info = preset_info(name)
    image_size = info.default_image_size if image_size is None else image_size
    if image_size < 1:
        raise InvalidArgumentError(f"--image-size must be a positive number of pixels (got {image_size})")
    if info.latent:
        if image_size % info.vae_factor:
            raise CheckpointError(
                f"image size {image_size} is not a multiple of {info.vae_factor} (the VAE factor of {name}); "
                f"use {info.default_image_size}"
            )
        return image_size // info.vae_factor
    return image_size


def create_model(name: str, image_size: int | None = None, **kwargs) -> DiT:
    """Build a preset with random (DiT-initialised) weights.

    Example:
        >>> model = create_model("tiny-digits")
        >>> model.depth, model.num_tokens
        (12, 16)
    """
    check_preset(name)
    kwargs.setdefault("input_size", input_size_for(name, image_size))
    return DiT_models[name](**kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters including the frozen ``pos_embed`` (DiT's reported count)."""
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------


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
        if diffusers_dit.folder_kind(path) is None:
            raise CheckpointError(
                f"folder {str(path)!r} is not a diffusers DiT (no model_index.json + transformer/, no config.json); "
                "pass a DiT .pt / .safetensors file or a diffusers DiT folder"
            )
        config = diffusers_dit.read_config(path)
        return diffusers_dit.from_diffusers(diffusers_dit.read_diffusers_state_dict(path), config)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not exist; pass --ckpt PATH to a DiT .pt or .safetensors file "
            "or a diffusers DiT folder"
        )
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch adds multi-line advice to refused pickles; our line says it
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r} ({first_line(exc, 160)}); expected a DiT .pt state dict, "
            "a DiT train.py checkpoint or a .safetensors file"
        ) from None
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
    """Strict key and shape check; the error lists the differences and the likely preset."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or wrong):
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


def model_info(name: str, image_size: int | None = None) -> dict:
    """Architecture facts of a preset (``goc info``), built on the meta device (no memory, no weights)."""
    info = preset_info(name)
    with torch.device("meta"):
        model = create_model(name, image_size)
    out = {
        "model": name,
        "depth": model.depth,
        "hidden_size": model.hidden_size,
        "num_heads": model.num_heads,
        "patch_size": model.patch_size,
        "input_size": model.input_size,
        "in_channels": model.in_channels,
        "num_classes": model.num_classes,
        "learn_sigma": model.learn_sigma,
        "tokens": model.num_tokens,
        "params": count_parameters(model),
        "latent": info.latent,
        "image_size": image_size or info.default_image_size,
    }
    macs = model_macs(model)
    out.update(
        macs_forward=macs.forward,
        macs_attention_branch=macs.attention_branch,
        macs_mlp_branch=macs.mlp_branch,
        macs_adaln_per_block=macs.adaln_per_block,
    )
    if info.checkpoint is not None:
        out["checkpoint"] = str(info.checkpoint)
    return out
