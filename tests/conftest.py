"""Shared fixtures: small random DiTs."""

from __future__ import annotations

import pytest
import torch

from goc_utils.models import DiT


def small_dit(in_channels: int = 1, depth: int = 3, input_size: int = 8, num_classes: int = 10, seed: int = 0) -> DiT:
    """A few-block DiT with random, non-zero adaLN / output layers (so every unit matters)."""
    torch.manual_seed(seed)
    model = DiT(
        input_size=input_size,
        patch_size=2,
        in_channels=in_channels,
        hidden_size=32,
        depth=depth,
        num_heads=4,
        num_classes=num_classes,
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "adaLN_modulation" in name or "final_layer.linear" in name:
                param.normal_(0, 0.05)
    return model.eval()


@pytest.fixture
def tiny_random() -> DiT:
    return small_dit()
