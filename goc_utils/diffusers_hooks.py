"""The cache engine on diffusers transformers, as diffusers hooks.

Two entry points, in the style of diffusers' own caches (``HookRegistry`` / ``ModelHook``)::

    from diffusers import DiTPipeline
    from goc_utils.diffusers_hooks import apply_cache, remove_cache

    pipe = DiTPipeline.from_pretrained("path/to/DiT-XL-2-256")
    apply_cache(pipe.transformer, "fora-50+goc", steps=20)
    images = pipe(class_labels=[207, 360], num_inference_steps=20).images
    remove_cache(pipe.transformer)

:func:`apply_cache` registers one hook on every block's ``attn1`` and ``ff`` (the two branches the
block gates: attention unit 0 and MLP unit 1, as in our ``DiT``) and one on the transformer's forward,
which advances the step and resets the state at the start of a run. The hooks call the very
:class:`~goc_utils.cache.engine.CacheEngine` (schedule + compensator) that samples our own ``DiT``,
through its step / unit API: there is no second implementation of any schedule or compensator.

One transformer call is one sampling step (classifier-free guidance batched, as ``DiTPipeline`` and
``PixArtAlphaPipeline`` do). A run of another length than ``steps`` is refused with one line as soon as
it shows: at the call after the last step if the timesteps keep falling, or when a new run starts
early. A run interrupted inside the transformer (Ctrl-C, an error) starts afresh next time.

:class:`DiffusersDiT` wraps a ``DiTTransformer2DModel`` in our ``DiT`` sampling interface
(``model(x, t, y, unit_fn=None)``, ``depth``, ``blocks``...), so our sampler, priors extraction and
evaluation run on it through the same unit hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import torch
from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

from goc_utils.cache.engine import CacheEngine
from goc_utils.cache.method import CacheMethod
from goc_utils.errors import InvalidArgumentError

UNIT_HOOK = "goc_unit"
STEP_HOOK = "goc_step"
UNIT_MODULES = ("attn1", "ff")
"""The two gated branches of a diffusers ``BasicTransformerBlock``: unit 0 and unit 1."""


class UnitRouter:
    """State shared by a transformer's unit hooks: where a branch call goes.

    ``unit_fn`` (a :data:`~goc_utils.models.UnitFn`) receives every branch call while set; with it
    None the branches run plainly and ``on_compute(block, unit)`` (optional) sees each real call.
    """

    def __init__(self) -> None:
        self.unit_fn: Callable | None = None
        self.on_compute: Callable[[int, int], None] | None = None


class UnitHook(ModelHook):
    """Hands one branch (``attn1`` or ``ff`` of block ``block``) to the router's ``unit_fn``."""

    def __init__(self, router: UnitRouter, block: int, unit: int) -> None:
        super().__init__()
        self.router, self.block, self.unit = router, block, unit

    def new_forward(self, module: nn.Module, *args, **kwargs):
        original = self.fn_ref.original_forward
        unit_fn = self.router.unit_fn
        if unit_fn is not None:
            return unit_fn(self.block, self.unit, lambda: original(*args, **kwargs))
        if self.router.on_compute is not None:
            self.router.on_compute(self.block, self.unit)
        return original(*args, **kwargs)


class StepHook(ModelHook):
    """Counts the transformer's calls as sampling steps and runs the engine's step around each."""

    _is_stateful = True

    def __init__(self, engine: CacheEngine, router: UnitRouter) -> None:
        super().__init__()
        self.engine, self.router = engine, router
        self.calls, self.last_t = 0, None

    def reset_state(self, module: nn.Module) -> nn.Module:
        self.calls, self.last_t = 0, None
        return module

    def _step(self, args: tuple, kwargs: dict) -> int:
        steps = self.engine.schedule.steps
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        t = None if t is None else float(torch.as_tensor(t).reshape(-1)[0])
        rising = t is not None and self.last_t is not None and t > self.last_t
        if self.calls == steps:
            if t is not None and self.last_t is not None and t < self.last_t:
                self.calls = 0
                raise InvalidArgumentError(
                    f"the cache was applied for {steps} steps but this run goes on past step {steps}; "
                    "call apply_cache(transformer, method, steps=<the pipeline's num_inference_steps>)"
                )
            self.calls = 0
        elif self.calls > 0 and rising:
            ran, self.calls = self.calls, 0
            raise InvalidArgumentError(
                f"the cache was applied for {steps} steps but the last run stopped after {ran}; "
                f"call apply_cache(transformer, method, steps={ran}) (or steps=<num_inference_steps>)"
            )
        self.last_t = t
        step, self.calls = self.calls, self.calls + 1
        return step

    def new_forward(self, module: nn.Module, *args, **kwargs):
        step = self._step(args, kwargs)
        engine = self.engine
        if engine.plain:
            return self.fn_ref.original_forward(*args, **kwargs)
        engine.begin_step(step)
        self.router.unit_fn = engine.unit
        try:
            out = self.fn_ref.original_forward(*args, **kwargs)
        except BaseException:
            self.calls, self.last_t = 0, None  # an interrupted run starts afresh next time
            raise
        finally:
            self.router.unit_fn = None
        engine.end_step()
        return out


def _blocks(transformer: nn.Module) -> nn.ModuleList:
    blocks = getattr(transformer, "transformer_blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not all(all(hasattr(b, m) for m in UNIT_MODULES) for b in blocks):
        raise InvalidArgumentError(
            f"{type(transformer).__name__} has no transformer_blocks with attn1 / ff branches; GOC's hooks need "
            "diffusers BasicTransformerBlocks (DiTTransformer2DModel, PixArtTransformer2DModel)"
        )
    return blocks


def unit_router(transformer: nn.Module) -> UnitRouter:
    """The transformer's :class:`UnitRouter`, registering the unit hooks on first use."""
    router = getattr(transformer, "_goc_router", None)
    if router is not None:
        return router
    router = UnitRouter()
    for index, block in enumerate(_blocks(transformer)):
        for unit, name in enumerate(UNIT_MODULES):
            HookRegistry.check_if_exists_or_initialize(getattr(block, name)).register_hook(
                UnitHook(router, index, unit), UNIT_HOOK
            )
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
    transformer._goc_router = router
    return router


def apply_cache(transformer: nn.Module, method: str | CacheMethod, steps: int, priors=None) -> CacheEngine:
    """Cache ``transformer``'s units with ``method`` for runs of ``steps`` steps; returns the engine.

    ``method``: a method string (``"fora-50+goc"``, ``"l2c:router=r.pt+goc"``, ``"fora-50+goc:auto"``) or
    a :class:`~goc_utils.cache.method.CacheMethod`. ``steps``: the pipeline's ``num_inference_steps``.
    ``priors``: a :class:`~goc_utils.priors.PriorStats` for ``goc:auto``. Applying again replaces the
    previous cache.
    """
    blocks = _blocks(transformer)
    if isinstance(method, str):
        method = CacheMethod.parse(method)
    elif not isinstance(method, CacheMethod):
        raise InvalidArgumentError(f"method must be a method string or a CacheMethod (got {type(method).__name__})")
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.remove_hook(STEP_HOOK, recurse=False)
    engine = method.engine(SimpleNamespace(depth=len(blocks)), int(steps), priors)
    router = unit_router(transformer)
    registry.register_hook(StepHook(engine, router), STEP_HOOK)
    transformer._goc_engine = engine
    return engine


def remove_cache(transformer: nn.Module) -> None:
    """Remove every hook :func:`apply_cache` registered; the transformer computes plainly again."""
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is None:
        return
    registry.remove_hook(STEP_HOOK, recurse=False)
    for block in getattr(transformer, "transformer_blocks", ()):
        for name in UNIT_MODULES:
            child = getattr(getattr(block, name, None), "_diffusers_hook", None)
            if child is not None:
                child.remove_hook(UNIT_HOOK, recurse=False)
    registry.invalidate_child_registries_cache()
    for attr in ("_goc_router", "_goc_engine"):
        if hasattr(transformer, attr):
            delattr(transformer, attr)


class UnitCounter:
    """Which units a transformer really computes, per step: ``computed[step, block, unit]`` (runs summed).

    Works under any cache (ours or diffusers' own hooks, registered after the counter): a branch that a
    cache skips never reaches the unit hook. ``step`` is set by the caller before every call.
    """

    def __init__(self, transformer: nn.Module, steps: int) -> None:
        self.router = unit_router(transformer)
        self.depth = len(_blocks(transformer))
        self.computed = np.zeros((steps, self.depth, 2), dtype=np.int64)
        self.runs = np.zeros(steps, dtype=np.int64)
        self.step = 0
        self.router.on_compute = self._count

    def _count(self, block: int, unit: int) -> None:
        self.computed[self.step, block, unit] += 1

    def fraction(self) -> np.ndarray:
        """``(steps, depth, 2)`` fraction of runs in which each unit was computed."""
        return self.computed / np.maximum(self.runs, 1)[:, None, None]

    def close(self) -> None:
        self.router.on_compute = None


class DiffusersDiT(nn.Module):
    """A ``DiTTransformer2DModel`` with our ``DiT``'s sampling interface.

    ``model(x, t, y, unit_fn=None)`` calls the transformer (``timestep=t``, ``class_labels=y``); a
    ``unit_fn`` receives every branch through the unit hooks, exactly as our ``DiT`` hands it its
    branches, so :class:`~goc_utils.cache.engine.CacheEngine`, priors extraction and the sampler run
    unchanged. Attributes mirror ``DiT`` (``depth``, ``hidden_size``, ``num_classes``, ``blocks``...).
    """

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        config = transformer.config
        self.transformer = transformer
        self.depth = int(config.num_layers)
        self.num_heads = int(config.num_attention_heads)
        self.hidden_size = self.num_heads * int(config.attention_head_dim)
        self.in_channels = int(config.in_channels)
        self.out_channels = int(transformer.out_channels)
        self.learn_sigma = self.out_channels == 2 * self.in_channels
        self.input_size = int(config.sample_size)
        self.patch_size = int(config.patch_size)
        self.num_classes = int(config.num_embeds_ada_norm)
        self.mlp_ratio = 4.0
        self.blocks = transformer.transformer_blocks
        unit_router(transformer)

    @property
    def num_tokens(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def t_embedder(self):  # MAC counting reads the frequency embedding size
        return SimpleNamespace(frequency_embedding_size=256)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, unit_fn=None) -> torch.Tensor:
        router = unit_router(self.transformer)
        router.unit_fn = unit_fn
        try:
            return self.transformer(x, timestep=t, class_labels=y).sample
        finally:
            router.unit_fn = None


__all__ = ["apply_cache", "remove_cache"]
