"""Shared fixtures: small random DiTs, router files, and the reference files outside the repository."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from goc_utils.model.dit import DiT
from goc_utils.paths import PROJECT_ROOT

REFERENCE_DIR_VARIABLE = "GOC_REFERENCE_DIR"
"""Where the reference files live (default: ``../shared/reference`` beside the checkout, as in CI)."""


def reference_dir() -> Path:
    """The reference folder: ``$GOC_REFERENCE_DIR`` or ``../shared/reference`` next to the checkout."""
    return Path(os.environ.get(REFERENCE_DIR_VARIABLE) or PROJECT_ROOT.parent / "shared" / "reference")


@pytest.fixture
def reference_file():
    """``reference_file("l2c/DDIM20_router.pt")`` -> path, or skip the test with a reason naming the variable.

    The official L2C routers are not redistributed with the project (their repository has no license):
    CI has them in ``../shared/reference``; elsewhere set GOC_REFERENCE_DIR to a folder holding them.
    """

    def find(name: str) -> Path:
        path = reference_dir() / name
        if not path.is_file():
            pytest.skip(f"reference file {name} not found in {reference_dir()} (set {REFERENCE_DIR_VARIABLE})")
        return path

    return find


def router_file(path: Path, logits: np.ndarray) -> Path:
    """Write router logits ``(steps, 2 * depth)`` in Learning-to-Cache's official checkpoint format."""
    routers = {f"{k}.prob": torch.tensor(row, dtype=torch.float32) for k, row in enumerate(logits)}
    torch.save({"routers": routers, "opt": {}, "args": argparse.Namespace(model="x")}, path)
    return path


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


def run_bad_input(argv: list[str], message: str, capsys, out: Path | None = None) -> str:
    """Run ``goc argv`` in-process and assert the promise for a bad input: exit status 2, exactly one line on
    stderr containing ``message``, and (when ``out`` is given) no ``run.json`` written there. Returns stderr."""
    from goc_utils.cli import main

    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    assert code == 2, (captured.out, captured.err)
    assert message in captured.err, captured.err
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    if out is not None:
        assert not (out / "run.json").exists()  # nothing started
    return captured.err
