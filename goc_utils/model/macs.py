"""Multiply-accumulate (MAC) counts of a DiT forward, per branch and per block (a whole run under a cache
schedule: :func:`goc_utils.cache.schedule.schedule_macs`).

Counts follow the DiT paper's "Gflops" (which are MACs): linear layers and the two
attention matmuls; normalisation, activations and elementwise ops are not counted. For one
image with T tokens of width D and MLP ratio r:

* attention branch: qkv ``3TD^2`` + scores ``T^2 D`` + attention x values ``T^2 D`` + proj ``TD^2``;
* MLP branch: ``2 r T D^2``;
* adaLN modulation of a block: ``6 D^2`` (always computed, also when both branches are reused);
* outside the blocks: patch embedding, timestep MLP, final adaLN and projection.

DiT-XL/2 at 256 px: 118.6 G per forward; 1.51 G per attention branch, 2.72 G per MLP branch.
"""

from __future__ import annotations

from dataclasses import dataclass

from goc_utils.model.dit import DiT


@dataclass(frozen=True)
class MACs:
    """MACs of one forward of one image, split by where they are spent."""

    attention_branch: int
    mlp_branch: int
    adaln_per_block: int
    outside_blocks: int
    depth: int

    @property
    def per_block(self) -> int:
        return self.attention_branch + self.mlp_branch + self.adaln_per_block

    @property
    def forward(self) -> int:
        return self.depth * self.per_block + self.outside_blocks

    @property
    def units(self) -> tuple[int, int]:
        """``(attention, MLP)`` branch MACs: the weights of :meth:`CacheSchedule.cache_ratio_macs`."""
        return self.attention_branch, self.mlp_branch


def branch_macs(tokens: int, hidden: int, mlp_ratio: float = 4.0) -> tuple[int, int]:
    """``(attention branch, MLP branch)`` MACs for one image with T tokens of width D."""
    t, d = tokens, hidden
    return 4 * t * d * d + 2 * t * t * d, 2 * t * d * int(d * mlp_ratio)


def model_macs(model: DiT) -> MACs:
    """MAC counts of one forward of one image through ``model`` (works on the meta device)."""
    t, d = model.num_tokens, model.hidden_size
    attention, mlp = branch_macs(t, d, model.mlp_ratio)
    patch_in = model.patch_size**2 * model.in_channels
    patch_out = model.patch_size**2 * model.out_channels
    freq = model.t_embedder.frequency_embedding_size
    outside = t * patch_in * d + (freq * d + d * d) + 2 * d * d + t * d * patch_out
    return MACs(
        attention_branch=attention,
        mlp_branch=mlp,
        adaln_per_block=6 * d * d,
        outside_blocks=outside,
        depth=model.depth,
    )
