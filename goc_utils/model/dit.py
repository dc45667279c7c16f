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

import math
from collections.abc import Callable

import numpy as np
import torch
from timm.models.vision_transformer import Attention, Mlp, PatchEmbed
from torch import nn

from goc_utils.errors import InvalidArgumentError

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
