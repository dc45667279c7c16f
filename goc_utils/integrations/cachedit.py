"""cache-dit's Dual Block Cache (``vipshop/cache-dit``, PyPI ``cache-dit``) on our diffusers transformer, as a peer.

``cachedit:dbcache[:key=value...]`` method strings run cache-dit's DBCache, with or without one of its
calibrators, on the same ``DiTTransformer2DModel``, sampler and per-sample noise as every other method of
``--backend diffusers`` (:class:`~goc_utils.integrations.diffusers.peers.HookRunner` drives it)::

    cachedit:dbcache:fn=1:bn=0:threshold=0.08:warmup=4
    cachedit:dbcache:fn=1:threshold=0.12:warmup=4:calibrator=taylorseer:order=1
    cachedit:dbcache:fn=1:threshold=0.12:warmup=4:separate_cfg=true

Options left out take cache-dit's own defaults (:class:`DBCacheOptions`). cache-dit is an optional extra
(``pip install -e '.[peers]'``, done by ``make setup``): it is imported only when a ``cachedit:`` method runs.

How it runs here: transformer-only mode (``cache_dit.enable_cache(transformer, ...)``: our sampler calls the
transformer, not a pipeline), with fresh configs at every apply (cache-dit mutates them) and the context
refreshed at each run's first step (:func:`refresh`). DBCache calls the blocks it computes and never calls
those it skips, so our unit hooks (innermost) count what really ran.

Classifier-free guidance: our batch is ``[cond; uncond]`` in one call. With ``separate_cfg=false`` (the
default, as cache-dit resolves it for DiT) one decision covers the whole batch. With ``separate_cfg=true``
cache-dit expects the two branches as two transformer calls per step, so :func:`call` splits the batch into
its halves and calls them in cache-dit's order (cond first; uncond first with ``cfg_compute_first=true``):
each branch then has its own residuals, decisions and calibrator, and ``cfg_diff_separate=false`` makes the
second call reuse the first call's residual difference.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from goc_utils.errors import InvalidArgumentError, shorten
from goc_utils.lists import PLAIN, key_values

PREFIX = "cachedit:"
INSTALL = "pip install -e '.[peers]' (or make setup)"
CACHES = ("dbcache",)
"""cache-dit's caches that run on DiT. DBPrune does not (cache-dit 1.5.3 fails on DiT's block pattern)."""
CALIBRATORS = ("none", "taylorseer", "foca", "dmd")


@dataclass(frozen=True)
class DBCacheOptions:
    """The options of ``cachedit:dbcache`` method strings (defaults: cache-dit 1.5.3's ``DBCacheConfig``).

    Attributes:
        fn: ``Fn_compute_blocks``, blocks always computed first (>= 1; default 8). Their output's residual
            decides whether the middle blocks are skipped.
        bn: ``Bn_compute_blocks``, blocks always computed last (>= 0; default 0). ``fn + bn`` must be below
            the model's depth (else nothing could be skipped).
        threshold: ``residual_diff_threshold``: the middle blocks are skipped at a step when
            mean|R_prev - R| / mean|R_prev| of the first blocks' residual R is below it (default 0.08;
            0 never skips, >= 1 always skips after warmup).
        warmup: ``max_warmup_steps``, first steps never skipped (default 8).
        warmup_interval: ``warmup_interval``, only every N-th warmup step is protected (>= 1; default 1).
        max_cached: ``max_cached_steps``, at most this many skipped steps per run (-1: no limit, the default).
        max_continuous: ``max_continuous_cached_steps``, at most this many skipped steps in a row (-1: no limit).
        separate_cfg: ``enable_separate_cfg``: the guidance branches decide separately (the batch is run as
            two calls, cond then uncond); needs cfg != 1 (default false: one decision for the whole batch).
        cfg_compute_first: ``cfg_compute_first``: with ``separate_cfg``, the uncond half is called first
            (needs ``cfg_diff_separate=false``, as cache-dit requires; default false).
        cfg_diff_separate: ``cfg_diff_compute_separate``: with ``separate_cfg``, the uncond branch measures its
            own residual difference (default true) or reuses the cond branch's (false).
        mask: ``steps_computation_mask`` as one digit per step (``1`` compute, ``0`` may skip), e.g.
            ``11110101``; its length is the run's steps (default none: no mask).
        policy: ``steps_computation_policy``: ``dynamic`` (a masked ``0`` step still needs the threshold) or
            ``static`` (a masked ``0`` step is skipped); default dynamic.
        calibrator: ``none`` (reuse the residual of the last computed step), ``taylorseer``, ``foca`` or
            ``dmd`` (forecast the skipped residual); default none.
        order: TaylorSeer's ``taylorseer_order`` (>= 0; default 1); only with ``calibrator=taylorseer``.
        history: DMD's ``dmd_history``, snapshots it fits (>= 2; default 6); only with ``calibrator=dmd``.
    """

    fn: int = 8
    bn: int = 0
    threshold: float = 0.08
    warmup: int = 8
    warmup_interval: int = 1
    max_cached: int = -1
    max_continuous: int = -1
    separate_cfg: bool = False
    cfg_compute_first: bool = False
    cfg_diff_separate: bool = True
    mask: str | None = None
    policy: str = "dynamic"
    calibrator: str = "none"
    order: int = 1
    history: int = 6


def _flag(text: str) -> bool:
    return {"true": True, "false": False}[text]


def _mask(text: str) -> str:
    if not text or set(text) - {"0", "1"}:
        raise ValueError(text)
    return text


def _choice(allowed: tuple[str, ...]) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if text not in allowed:
            raise ValueError(text)
        return text

    return convert


OPTIONS: dict[str, tuple[Callable[[str], object], Callable[[object], bool], str]] = {
    "fn": (int, lambda v: v >= 1, "a whole number >= 1 (cache-dit computes at least one first block)"),
    "bn": (int, lambda v: v >= 0, "a whole number >= 0"),
    "threshold": (float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "warmup": (int, lambda v: v >= 0, "a whole number of steps >= 0"),
    "warmup_interval": (int, lambda v: v >= 1, "a whole number >= 1"),
    "max_cached": (int, lambda v: v >= -1, "a whole number of steps >= 0, or -1 for no limit"),
    "max_continuous": (int, lambda v: v >= -1, "a whole number of steps >= 0, or -1 for no limit"),
    "separate_cfg": (_flag, lambda v: True, "true or false"),
    "cfg_compute_first": (_flag, lambda v: True, "true or false"),
    "cfg_diff_separate": (_flag, lambda v: True, "true or false"),
    "mask": (_mask, lambda v: True, "one digit 0 or 1 per step, e.g. 11110101"),
    "policy": (_choice(("dynamic", "static")), lambda v: True, "dynamic or static"),
    "calibrator": (_choice(CALIBRATORS), lambda v: True, " or ".join(CALIBRATORS)),
    "order": (int, lambda v: v >= 0, "a whole number >= 0"),
    "history": (int, lambda v: v >= 2, "a whole number >= 2"),
}
"""Each option of :class:`DBCacheOptions`: its converter from text, its check and what it must be."""

DEPENDENT_OPTIONS = {"order": "calibrator=taylorseer", "history": "calibrator=dmd",
                     "cfg_compute_first": "separate_cfg=true", "cfg_diff_separate": "separate_cfg=true"}  # fmt: skip
"""Options that mean something only with another option's value."""


def is_cachedit(text: str) -> bool:
    return text.strip().startswith(PREFIX)


def parse_method(text: str, steps: int | None = None, cfg_scale: float | None = None) -> tuple[str, dict]:
    """``"cachedit:dbcache:fn=1:threshold=0.1"`` -> ``("dbcache", {"fn": 1, "threshold": 0.1})``: the given
    options (:class:`DBCacheOptions`), checked, with one-line errors naming the bad part and the fix.

    With the run's ``steps`` / ``cfg_scale`` also what must agree with them (a mask's length is the steps;
    ``separate_cfg`` needs guidance). Fails with one line saying how to install cache-dit when it is absent.
    """
    name, *parts = text.strip()[len(PREFIX) :].split(":")
    shown = repr(shorten(text))
    if name not in CACHES:
        raise InvalidArgumentError(
            f"unknown cache-dit cache in {shown}; choose one of: {', '.join(CACHES)} (DBPrune does not run on DiT)"
        )
    options: dict = {}
    for key, value in key_values(parts, list(OPTIONS), shown, f"cachedit:{name}").items():
        convert, check, rule = OPTIONS[key]
        convert = PLAIN.get(convert, convert)  # no 1_0, no other scripts' digits
        try:
            options[key] = convert(value)
        except (ValueError, KeyError):
            raise InvalidArgumentError(f"bad value {key}={shorten(value)} in {shown}: it must be {rule}") from None
        if not check(options[key]):
            raise InvalidArgumentError(f"bad value {key}={shorten(value)} in {shown}: it must be {rule}")
    settings = DBCacheOptions(**options)
    for key, needs in DEPENDENT_OPTIONS.items():
        field, value = needs.split("=")
        if key in options and str(getattr(settings, field)).lower() != value:
            raise InvalidArgumentError(f"{key}= in {shown} is an option of {needs}; add {needs} or drop {key}")
    if settings.cfg_compute_first and settings.cfg_diff_separate:
        raise InvalidArgumentError(
            f"cfg_compute_first=true in {shown} needs cfg_diff_separate=false (cache-dit measures the uncond "
            "difference separately only when cond runs first)"
        )
    if steps is not None and settings.mask is not None and len(settings.mask) != steps:
        raise InvalidArgumentError(
            f"mask={shorten(settings.mask)} in {shown} has {len(settings.mask)} digits; give one per step ({steps})"
        )
    if cfg_scale is not None and cfg_scale == 1 and settings.separate_cfg:
        raise InvalidArgumentError(
            f"{shown} caches the guidance branches separately: use a cfg scale other than 1 or separate_cfg=false"
        )
    library()
    return name, options


def library():
    """The ``cache_dit`` module, quiet; one line saying how to install it when it is absent."""
    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")  # cache-dit logs every apply and remove at info level
    try:
        import cache_dit  # optional extra: only cachedit: methods need it
    except ImportError:
        raise InvalidArgumentError(f"cachedit: methods need the optional cache-dit library: {INSTALL}") from None
    for name in list(logging.Logger.manager.loggerDict):  # also when cache_dit was imported before this
        if name.startswith("cache_dit"):
            logging.getLogger(name).setLevel(logging.ERROR)
    return cache_dit


def configs(options: dict, steps: int):
    """Fresh cache-dit configs ``(DBCacheConfig, calibrator config or None)`` for runs of ``steps`` steps (cache-dit
    changes the configs it is given, so every apply builds new ones)."""
    cache_dit = library()
    s = DBCacheOptions(**options)
    cache = cache_dit.DBCacheConfig(
        Fn_compute_blocks=s.fn,
        Bn_compute_blocks=s.bn,
        residual_diff_threshold=s.threshold,
        max_warmup_steps=s.warmup,
        warmup_interval=s.warmup_interval,
        max_cached_steps=s.max_cached,
        max_continuous_cached_steps=s.max_continuous,
        enable_separate_cfg=s.separate_cfg,
        cfg_compute_first=s.cfg_compute_first,
        cfg_diff_compute_separate=s.cfg_diff_separate,
        num_inference_steps=steps,
        steps_computation_mask=None if s.mask is None else [int(c) for c in s.mask],
        steps_computation_policy=s.policy,
    )
    calibrator = {
        "none": lambda: None,
        "taylorseer": lambda: cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=s.order),
        "foca": lambda: cache_dit.FoCaCalibratorConfig(),
        "dmd": lambda: cache_dit.DMDCalibratorConfig(dmd_history=s.history),
    }[s.calibrator]()
    return cache, calibrator


def check_depth(text: str, options: dict, depth: int) -> None:
    """``fn + bn`` must leave middle blocks to skip on a model of ``depth`` blocks."""
    s = DBCacheOptions(**options)
    if s.fn + s.bn >= depth:
        raise InvalidArgumentError(
            f"fn={s.fn} + bn={s.bn} in {shorten(text)!r} covers all {depth} blocks: nothing is left to skip; "
            f"make fn + bn < {depth}"
        )


def apply(transformer: nn.Module, options: dict, steps: int) -> None:
    """Enable cache-dit's DBCache with ``options`` on ``transformer`` (transformer-only mode).

    Example:
        >>> from diffusers import DiTTransformer2DModel
        >>> transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
        ...                                     out_channels=8, num_layers=3, sample_size=8, num_embeds_ada_norm=1000)
        >>> keys = list(transformer.state_dict())
        >>> apply(transformer, {"fn": 1, "bn": 0, "threshold": 0.1, "warmup": 4}, steps=20)
        >>> refresh(transformer, 20)  # before every run
        >>> remove(transformer)
        >>> list(transformer.state_dict()) == keys  # the plain transformer again, key for key
        True
    """
    cache, calibrator = configs(options, steps)
    transformer._goc_module_order = list(transformer._modules)
    library().enable_cache(transformer, cache_config=cache, calibrator_config=calibrator)


def refresh(transformer: nn.Module, steps: int) -> None:
    """A fresh cache context (no residuals, counters at 0) before a run of ``steps`` steps."""
    library().refresh_context(transformer, num_inference_steps=steps)


def account(transformer: nn.Module) -> dict:
    """cache-dit's own account of the current run: ``skipped`` (the steps at which it skipped the middle blocks)
    and ``diffs`` (step -> the relative residual difference it measured) for the whole batch, or its cond half
    with ``separate_cfg``; ``uncond_skipped`` / ``uncond_diffs`` for the uncond half (empty without it)."""
    context = transformer._context_manager.get_context(transformer._context_names[0])
    return {
        "skipped": context.get_cached_steps(),
        "diffs": {int(k): v for k, v in context.get_residual_diffs().items()},
        "uncond_skipped": context.get_cfg_cached_steps(),
        "uncond_diffs": {int(k): v for k, v in context.get_cfg_residual_diffs().items()},
    }


def is_applied(transformer: nn.Module) -> bool:
    return bool(getattr(transformer, "_is_cached", False))


def remove(transformer: nn.Module) -> None:
    """Disable cache-dit on ``transformer`` and undo what ``disable_cache`` leaves: its DiT patch (a forward and a
    ``_norm1_emb`` alias of block 0's embedding) and its reordering of the submodules. The transformer is as
    before, state-dict keys and their order too."""
    if is_applied(transformer):
        library().disable_cache(transformer)
    if getattr(transformer, "_is_patched", False):
        vars(transformer).pop("forward", None)
        transformer._modules.pop("_norm1_emb", None)
        del transformer._is_patched
    order = vars(transformer).pop("_goc_module_order", None)
    if order is not None:
        modules = dict(transformer._modules)
        transformer._modules.clear()
        transformer._modules.update({k: modules.pop(k) for k in order if k in modules} | modules)


def call(
    forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    options: dict,
    x: torch.Tensor,
    t: torch.Tensor,
    y: torch.Tensor,
) -> torch.Tensor:
    """One sampling step of our ``[cond; uncond]`` batch through ``forward(x, t, y)``: one call, or with
    ``separate_cfg`` one call per guidance half in cache-dit's order (see the module docstring)."""
    s = DBCacheOptions(**options)
    if not s.separate_cfg:
        return forward(x, t, y)
    if x.shape[0] % 2:
        raise InvalidArgumentError("cachedit: separate_cfg=true needs classifier-free guidance (cfg scale not 1)")
    half = x.shape[0] // 2
    cond, uncond = slice(0, half), slice(half, None)
    first, second = (uncond, cond) if s.cfg_compute_first else (cond, uncond)
    out = {}
    for part in (first, second):
        out[part.start] = forward(x[part], t[part], y[part])
    return torch.cat([out[0], out[half]])

