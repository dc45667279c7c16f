"""Learning-to-Cache (Ma et al., 2024): a learned router per sampling step, thresholded.

Checkpoint format (the official one): ``{'routers': state_dict}`` of a ``ModuleList`` of
routers, keys ``'{k}.prob'``, each a vector of ``2 * depth`` logits (unit ``2i`` = attention
of block i, ``2i + 1`` = MLP). Semantics, as in the reference implementation:

* scores are ``sigmoid(logits)`` (float32, as the router computes them); a unit is recomputed where
  ``score > thres`` and reused otherwise;
* reuse happens only at the second step of each pair of steps (odd ``s``); even steps recompute all;
* router ``k`` belongs to the k-th timestep of the ascending respaced list, so sampling
  step ``s`` (0 = noisiest) uses router ``N - 1 - s``.

The official files also pickle ``opt`` and an ``argparse.Namespace``: they are read with
``weights_only=True`` and that one class allow-listed, never unrestricted.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import torch

from goc_utils.cache.schedule import CacheSchedule, ScheduleError, register_schedule
from goc_utils.errors import shorten
from goc_utils.files import load_torch
from goc_utils.model.presets import DiT_models, preset_info

L2C_CORRECTION_STEPS = (3, 5, 7, 9, 11, 13, 15, 19)
"""GOC's published correction steps with Learning-to-Cache (set by hand in its code, for every step count)."""
L2C_GOC_WEIGHT = 0.8
"""GOC's published w with Learning-to-Cache."""


def _read_router_file(path: str | Path) -> tuple[object, str]:
    """What ``torch.load`` finds in a router file (``weights_only``) and the file's name for messages."""
    fix = "expected Learning-to-Cache's {'routers': state_dict} checkpoint; pass --router PATH (an L2C router .pt)"
    return load_torch(path, "router file", fix, error=ScheduleError, allowed=[argparse.Namespace]), shorten(path)


def check_router_model(path: str | Path, model: str) -> None:
    """One line when the router file was trained for another model than the preset ``model``: the model its
    ``args`` record (as Learning-to-Cache's ``train.py`` and ``goc train-router`` write them). A file that records
    none, or a name that is no preset, is taken as it is; its shape is checked when the schedule is built
    (:func:`l2c`)."""
    obj, name = _read_router_file(path)
    trained = getattr(obj.get("args") if isinstance(obj, dict) else None, "model", None)
    if trained in DiT_models and trained != model:
        raise ScheduleError(
            f"router file {name!r} was trained for model {shorten(trained, 40)!r}, not {model!r}; pass a router "
            f"trained for it (goc train-router --model {model})"
        )


def load_router_logits(path: str | Path) -> np.ndarray:
    """Router logits ``(num_routers, 2 * depth)`` float32 from an official-format checkpoint."""
    obj, name = _read_router_file(path)
    routers = obj.get("routers") if isinstance(obj, dict) else None
    if not isinstance(routers, dict) or not routers:
        raise ScheduleError(f"router file {name!r} has no 'routers' entry with '<k>.prob' tensors")
    bad = [k for k in routers if not re.fullmatch(r"\d+\.prob", str(k))]
    if bad:
        raise ScheduleError(f"router file {name!r}: key {shorten(repr(bad[0]))} is not '<k>.prob' (k = router index)")
    keys = sorted(routers, key=lambda k: int(k.split(".")[0]))
    if [int(k.split(".")[0]) for k in keys] != list(range(len(keys))):
        raise ScheduleError(f"router file {name!r}: router indices are not 0..{len(keys) - 1}")
    if any(not isinstance(routers[k], torch.Tensor) for k in keys):
        raise ScheduleError(f"router file {name!r}: every '<k>.prob' must be a tensor of logits")
    unreal = [k for k in keys if not routers[k].is_floating_point()]
    if unreal:
        raise ScheduleError(
            f"router file {name!r}: router {unreal[0]!r} holds {routers[unreal[0]].dtype} values; logits are real "
            "floating-point numbers: retrain or re-export the router"
        )
    sizes = sorted({routers[k].numel() for k in keys})
    if len(sizes) > 1:
        raise ScheduleError(f"router file {name!r}: routers have different lengths {sizes}; all must be 2 x depth")
    logits = np.stack([routers[k].detach().float().numpy().reshape(-1) for k in keys])
    if not np.isfinite(logits).all():
        raise ScheduleError(f"router file {name!r} holds NaN or infinite logits; retrain or re-export the router")
    return logits


def router_mask(logits: np.ndarray, thres: float) -> np.ndarray:
    """``(steps, depth, 2)`` recompute mask from router logits ``(steps, 2 * depth)``."""
    steps = logits.shape[0]
    # float32 sigmoid and comparison, the published arithmetic (STE: score > thres on the router's tensor)
    scores = torch.sigmoid(torch.as_tensor(np.ascontiguousarray(logits), dtype=torch.float32))
    recompute = (scores > thres).numpy()[::-1].copy()  # sampling step s uses router N - 1 - s
    recompute[0::2] = True  # only the second step of each pair reuses
    return recompute.reshape(steps, -1, 2)


@register_schedule("l2c")
def l2c(steps: int, depth: int, router: str | Path | None = None, thres: float = 0.1) -> CacheSchedule:
    """Learning-to-Cache schedule from an official-format router file at threshold ``thres``."""
    if router is None:
        raise ScheduleError("the l2c schedule needs --router PATH (a Learning-to-Cache router checkpoint)")
    if not 0.0 <= thres <= 1.0:
        raise ScheduleError(f"router threshold must be in [0, 1] (got {thres})")
    logits = load_router_logits(router)
    if logits.shape != (steps, 2 * depth):
        raise ScheduleError(
            f"router {shorten(Path(router).name)!r} has {logits.shape[0]} routers of {logits.shape[1]} units, but the "
            f"run needs {steps} routers of {2 * depth} units ({steps} steps, {depth} blocks): use a router trained "
            "for it"
        )
    # The published L2C + GOC path hard-codes its correction steps whatever the step count (DDIM-50 too).
    reference = tuple(s for s in L2C_CORRECTION_STEPS if s < steps)
    return CacheSchedule(router_mask(logits, thres), f"l2c@{thres:g}", reference, reference_weight=L2C_GOC_WEIGHT)


def default_router(model: str, steps: int) -> str | None:
    """The committed L2C router for a preset and step count (the tiny tiers, DDIM-20), else None."""
    router = preset_info(model).router if model in DiT_models else None
    return str(router) if steps == 20 and router is not None and router.is_file() else None
