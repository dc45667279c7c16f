"""The cache engine on diffusers transformers, as diffusers hooks.

Two entry points, in the style of diffusers' own caches (``HookRegistry`` / ``ModelHook``)::

    from diffusers import DiTPipeline
    from goc_utils.integrations.diffusers import apply_cache, remove_cache

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
from goc_utils.cache.method import CacheMethod, ResolvedMethod, resolve_method
from goc_utils.cache.run import Resources, RunShape
from goc_utils.errors import InvalidArgumentError

UNIT_HOOK = "goc_unit"
STEP_HOOK = "goc_step"
UNIT_MODULES = ("attn1", "ff")
"""The two gated branches of a diffusers ``BasicTransformerBlock``: unit 0 and unit 1."""


class UnitDispatch:
    """State shared by a transformer's unit hooks: where a branch call goes.

    ``unit_fn`` (a :data:`~goc_utils.model.dit.UnitFn`) receives every branch call while set; with it
    None the branches run plainly. ``on_compute(block, unit)`` (optional) sees each branch really
    computed, with the batch it runs on, whoever decides (our engine, a diffusers cache registered after
    the unit hooks, nobody); ``on_block(block, batch)`` and ``on_embed(batch)`` see each block that
    really runs and each patch embedding (one per transformer call that runs).
    """

    def __init__(self) -> None:
        self.unit_fn: Callable | None = None
        self.on_compute: Callable[[int, int, int], None] | None = None
        self.on_block: Callable[[int, int], None] | None = None
        self.on_embed: Callable[[int], None] | None = None


class UnitHook(ModelHook):
    """Hands one branch (``attn1`` or ``ff`` of block ``block``) to the dispatch's ``unit_fn``."""

    def __init__(self, dispatch: UnitDispatch, block: int, unit: int) -> None:
        super().__init__()
        self.dispatch, self.block, self.unit = dispatch, block, unit

    def new_forward(self, module: nn.Module, *args, **kwargs):
        original, dispatch, block, unit = self.fn_ref.original_forward, self.dispatch, self.block, self.unit

        def compute():
            if dispatch.on_compute is not None:
                dispatch.on_compute(block, unit, _batch(args, kwargs))
            return original(*args, **kwargs)

        if dispatch.unit_fn is not None:
            return dispatch.unit_fn(block, unit, compute)
        return compute()


def _batch(args: tuple, kwargs: dict) -> int:
    first = args[0] if args else kwargs.get("hidden_states")
    return int(first.shape[0]) if isinstance(first, torch.Tensor) else 0


class CountHook(ModelHook):
    """Reports that a block (``block`` >= 0) or the patch embedding (``block`` = -1) really runs."""

    def __init__(self, dispatch: UnitDispatch, block: int) -> None:
        super().__init__()
        self.dispatch, self.block = dispatch, block

    def pre_forward(self, module: nn.Module, *args, **kwargs):
        if self.block < 0:
            if self.dispatch.on_embed is not None:
                self.dispatch.on_embed(_batch(args, kwargs))
        elif self.dispatch.on_block is not None:
            self.dispatch.on_block(self.block, _batch(args, kwargs))
        return args, kwargs


class StepHook(ModelHook):
    """Counts the transformer's calls as sampling steps and runs the engine's step around each."""

    _is_stateful = True

    def __init__(self, engine: CacheEngine, dispatch: UnitDispatch) -> None:
        super().__init__()
        self.engine, self.dispatch = engine, dispatch
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
        self.dispatch.unit_fn = engine.unit
        try:
            out = self.fn_ref.original_forward(*args, **kwargs)
        except BaseException:
            self.calls, self.last_t = 0, None  # an interrupted run starts afresh next time
            raise
        finally:
            self.dispatch.unit_fn = None
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


def unit_dispatch(transformer: nn.Module) -> UnitDispatch:
    """The transformer's :class:`UnitDispatch`, registering the unit hooks on first use."""
    dispatch = getattr(transformer, "_goc_dispatch", None)
    if dispatch is not None:
        return dispatch
    dispatch = UnitDispatch()
    for index, block in enumerate(_blocks(transformer)):
        HookRegistry.check_if_exists_or_initialize(block).register_hook(CountHook(dispatch, index), UNIT_HOOK)
        for unit, name in enumerate(UNIT_MODULES):
            HookRegistry.check_if_exists_or_initialize(getattr(block, name)).register_hook(
                UnitHook(dispatch, index, unit), UNIT_HOOK
            )
    if isinstance(getattr(transformer, "pos_embed", None), nn.Module):
        embed = HookRegistry.check_if_exists_or_initialize(transformer.pos_embed)
        embed.register_hook(CountHook(dispatch, -1), UNIT_HOOK)
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
    transformer._goc_dispatch = dispatch
    return dispatch


def apply_cache(
    transformer: nn.Module, method: str | CacheMethod | ResolvedMethod, steps: int, resources: Resources | None = None
) -> CacheEngine:
    """Cache ``transformer``'s units with ``method`` for runs of ``steps`` steps; returns the engine.

    ``method``: a method string (``"fora-50+goc"``, ``"l2c:router=r.pt+goc"``, ``"fora-50+goc:auto"``), a parsed
    :class:`~goc_utils.cache.method.CacheMethod` or one already resolved for this transformer and ``steps``
    (:func:`~goc_utils.cache.method.resolve_method`), as diffusers' ``apply_*(module, Config(...))`` take a config.
    ``steps``: the pipeline's ``num_inference_steps``. ``resources``: what the method may need besides its text
    (:class:`~goc_utils.cache.run.Resources`: an ``l2c`` router, priors for ``goc:auto``, the model and cfg a TCC
    pack is found by, or its file). Applying again replaces the previous cache.
    """
    blocks = _blocks(transformer)
    config = transformer.config
    width = int(config.num_attention_heads) * int(config.attention_head_dim)
    tokens = (int(config.sample_size) // int(config.patch_size)) ** 2 if getattr(config, "patch_size", None) else 0
    run = RunShape(int(steps), len(blocks), width, tokens)
    engine = resolve_method(method, run, resources).engine()
    attach_engine(transformer, engine)
    return engine


def attach_engine(transformer: nn.Module, engine: CacheEngine) -> None:
    """Drive ``transformer`` with an existing engine (what :func:`apply_cache` does after building one)."""
    depth = len(_blocks(transformer))
    if engine.schedule.depth != depth:
        raise InvalidArgumentError(f"the engine's schedule has {engine.schedule.depth} blocks; the transformer {depth}")
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.remove_hook(STEP_HOOK, recurse=False)
    registry.register_hook(StepHook(engine, unit_dispatch(transformer)), STEP_HOOK)
    transformer._goc_engine = engine


def remove_cache(transformer: nn.Module) -> None:
    """Remove every hook :func:`apply_cache` registered; the transformer computes plainly again."""
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is None:
        return
    registry.remove_hook(STEP_HOOK, recurse=False)
    children = [getattr(transformer, "pos_embed", None)]
    for block in getattr(transformer, "transformer_blocks", ()):
        children += [block, *(getattr(block, name, None) for name in UNIT_MODULES)]
    for child in children:
        child_registry = getattr(child, "_diffusers_hook", None)
        if child_registry is not None:
            child_registry.remove_hook(UNIT_HOOK, recurse=False)
    registry.invalidate_child_registries_cache()
    for attr in ("_goc_dispatch", "_goc_engine"):
        if hasattr(transformer, attr):
            delattr(transformer, attr)


class UnitCounter:
    """What a transformer really computes, per step, in images: branches, blocks and patch embeddings.

    ``units[step, block, unit]``, ``blocks[step, block]`` and ``outside[step]`` add up, for every call,
    the fraction of the call's full batch that each part really ran on (a diffusers cache that skips a
    block or a branch never reaches our hooks, which sit innermost; FasterCache runs some calls on half
    the batch). Call :meth:`call` before every transformer call. Works under any cache: ours, or a
    diffusers cache applied after the counter (the unit hooks are registered first).
    """

    def __init__(self, transformer: nn.Module, steps: int) -> None:
        self.dispatch = unit_dispatch(transformer)
        self.depth = len(_blocks(transformer))
        self.units = np.zeros((steps, self.depth, 2))
        self.blocks = np.zeros((steps, self.depth))
        self.outside = np.zeros(steps)
        self.runs = np.zeros(steps, dtype=np.int64)
        self.step, self.full = 0, 1
        self.dispatch.on_compute = self._unit
        self.dispatch.on_block = self._block
        self.dispatch.on_embed = self._embed

    def call(self, step: int, batch: int) -> None:
        """The next transformer call is step ``step`` on a batch of ``batch``."""
        self.step, self.full = step, max(int(batch), 1)
        self.runs[step] += 1

    def _unit(self, block: int, unit: int, batch: int) -> None:
        self.units[self.step, block, unit] += batch / self.full

    def _block(self, block: int, batch: int) -> None:
        self.blocks[self.step, block] += batch / self.full

    def _embed(self, batch: int) -> None:
        self.outside[self.step] += batch / self.full

    def reset(self) -> None:
        for array in (self.units, self.blocks, self.outside, self.runs):
            array[...] = 0

    def fraction(self) -> np.ndarray:
        """``(steps, depth, 2)`` fraction of the images for which each unit was computed."""
        return self.units / np.maximum(self.runs, 1)[:, None, None]

    def cost(self, macs) -> dict:
        """Measured ``cache_ratio`` (units), ``cache_ratio_macs`` and ``macs_speedup`` of one run (per image)."""
        runs = np.maximum(self.runs, 1)
        units = self.units / runs[:, None, None]
        weights = np.asarray(macs.units, dtype=np.float64)
        per_run = (
            (self.outside / runs).sum() * macs.outside_blocks
            + (self.blocks / runs[:, None]).sum() * macs.adaln_per_block
            + (units * weights).sum()
        )
        steps = len(runs)
        return {
            "cache_ratio": float(1 - units.mean()),
            "cache_ratio_macs": float(1 - (units * weights).sum() / (steps * self.depth * weights.sum())),
            "macs_speedup": float(steps * macs.forward / per_run),
        }

    def close(self) -> None:
        self.dispatch.on_compute = self.dispatch.on_block = self.dispatch.on_embed = None


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
        unit_dispatch(transformer)

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
        dispatch = unit_dispatch(self.transformer)
        dispatch.unit_fn = unit_fn
        try:
            return self.transformer(x, timestep=t, class_labels=y).sample
        finally:
            dispatch.unit_fn = None


__all__ = ["apply_cache", "remove_cache"]
