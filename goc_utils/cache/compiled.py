"""Compiled sampling of static schedules: one graph per distinct step pattern.

FORA and Learning-to-Cache decide from the step alone which units recompute, so every step of a run falls into one of
a few *patterns* (the ``(depth, 2)`` recompute mask, and which computed outputs the schedule reuses later). A
:class:`CompiledEngine` runs each model call as the compiled graph of its pattern (:func:`torch.compile`, inductor;
``mode="reduce-overhead"`` adds CUDA graphs on a GPU): the computed units run inside the graph, the reused ones enter
it as inputs and the kept outputs leave it as outputs. A compensator that plans its reuse
(:meth:`~goc_utils.cache.compensator.Compensator.plan_reuse`: plain reuse, GOC) has its arithmetic traced into the
graph (GOC's ``prev + w * (prev - prev2)`` fuses with the step's kernels); any other keeps its own arithmetic, run
before the graph (what a reused unit returns depends only on earlier steps), TCC and Taylor included. Its state is
updated after the graph (the computed outputs it stores, the values its reuse returned), so the results equal the
eager engine's to float tolerance (``tests/test_compiled.py``).

Graphs are cached on the model, per pattern and input shape (:data:`GRAPHS_ATTRIBUTE`), so methods that share
patterns (``fora-50`` and ``fora-50+goc``) compile them once and the graphs go with the model;
:attr:`CompiledEngine.compile_seconds` is the compilation this engine paid
(first calls, less one run of the same call).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from goc_utils.cache.compensator import REUSE_RECIPES
from goc_utils.cache.engine import CacheEngine
from goc_utils.errors import InvalidArgumentError

MODES = ("default", "reduce-overhead", "max-autotune")
""":func:`torch.compile` modes (``reduce-overhead``: CUDA graphs on a GPU)."""

GRAPHS_ATTRIBUTE = "_goc_compiled_graphs"
"""The model's attribute holding ``{(pattern, mode, shapes...): compiled step function}``: graphs shared by every
engine of the model, freed with it (a dictionary keyed by the model would keep it alive: each graph refers to it)."""


def _pattern(recompute: np.ndarray, keep: np.ndarray, recipes: dict) -> tuple:
    """A hashable step pattern: per unit, block by block, ``(recompute, keep, recipe of its reuse or None)``."""
    depth, units = recompute.shape
    return tuple(
        (bool(recompute[b, u]), bool(keep[b, u]), recipes.get((b, u))) for b in range(depth) for u in range(units)
    )


def _step_function(model, pattern: tuple) -> Callable:
    """``f(x, t, y, inputs) -> (out, kept, reused)`` for one pattern: computed units run in the graph; each reused
    unit is its recipe (:data:`~goc_utils.cache.compensator.REUSE_RECIPES`) applied to its inputs (in unit order,
    flattened), inside the graph; the computed outputs marked kept and every reused value are returned in unit order."""
    units = len(pattern) // model.depth
    slots, kept_order, reused_order, start = {}, [], [], 0
    for index, (computed, keep, recipe) in enumerate(pattern):
        key = divmod(index, units)
        if not computed:
            arity = REUSE_RECIPES[recipe].__code__.co_argcount
            slots[key] = (REUSE_RECIPES[recipe], start, start + arity)
            reused_order.append(key)
            start += arity
        elif keep:
            kept_order.append(key)

    def step(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, inputs: tuple) -> tuple:
        values: dict = {}

        def unit_fn(block: int, unit: int, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
            slot = slots.get((block, unit))
            value = compute() if slot is None else slot[0](*inputs[slot[1] : slot[2]])
            values[(block, unit)] = value
            return value

        out = model(x, t, y, unit_fn=unit_fn)
        return out, tuple(values[k] for k in kept_order), tuple(values[k] for k in reused_order)

    return step


class CompiledEngine:
    """A :class:`~goc_utils.cache.engine.CacheEngine` whose model calls run as compiled graphs (one per pattern).

    Same interface for the sampler (``forward(x, t, y, step)``) and the same results as the eager engine to float
    tolerance. ``mode``: a :data:`MODES` entry.

    Example:
        >>> from goc_utils.cache import RunShape, resolve_method
        >>> from goc_utils.model.checkpoints import load_model
        >>> model = load_model("tiny-digits")
        >>> engine = CompiledEngine(resolve_method("fora-50+goc", RunShape.of(model, 20)).engine(model))
        >>> len(engine.patterns())  # even steps compute all units (the last keeps none), odd steps reuse all
        3
    """

    def __init__(self, engine: CacheEngine, mode: str = "default") -> None:
        # one code object serves every pattern, each a dynamo cache entry: allow as many as a schedule has steps
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * engine.schedule.steps)
        torch._dynamo.config.accumulated_recompile_limit = max(
            torch._dynamo.config.accumulated_recompile_limit, 64 * engine.schedule.steps
        )
        if engine.model is None:
            raise InvalidArgumentError("a compiled engine needs the model it drives (CacheEngine(..., model=model))")
        if mode not in MODES:
            raise InvalidArgumentError(f"compile mode {mode!r} is not one of {', '.join(MODES)}")
        self.engine, self.model, self.mode = engine, engine.model, mode
        self.schedule, self.compensator = engine.schedule, engine.compensator
        self.compile_seconds = 0.0
        """Seconds this engine spent compiling (the first call of each new graph, less one run of it)."""
        self.tokens = engine.tokens

    def patterns(self) -> list[tuple]:
        """The distinct recompute / keep patterns of the schedule, in order of first use (a compensator's recipes may
        split one into several graphs: GOC's corrected and plain reuse steps)."""
        schedule, last = self.schedule, self.engine._last_reuse
        found = [_pattern(schedule.mask[s], last > s, {}) for s in range(schedule.steps)]
        return list(dict.fromkeys(found))

    def cost(self, macs, run=None) -> dict[str, float]:
        """The method's cost (:func:`~goc_utils.cache.engine.method_cost`): compiling changes time, not MACs."""
        return self.engine.cost(macs, run)

    def prepare(self) -> None:
        """Nothing to do before sampling (graphs compile on first use)."""

    def _graph(self, pattern: tuple, args: tuple) -> Callable:
        graphs = self.model.__dict__.setdefault(GRAPHS_ATTRIBUTE, {})
        key = (pattern, self.mode, *(tuple(a.shape) for a in args[:3]), args[0].device, args[0].dtype)
        graph = graphs.get(key)
        if graph is None:
            fn = _step_function(self.model, pattern)
            compiled = torch.compile(fn, mode=None if self.mode == "default" else self.mode, dynamic=False)
            started = time.perf_counter()
            compiled(*args)  # compiles (a first call of the graph)
            first = time.perf_counter() - started
            started = time.perf_counter()
            compiled(*args)
            self.compile_seconds += max(first - (time.perf_counter() - started), 0.0)
            graph = graphs[key] = compiled
        return graph

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        """``forward(x, t, y, step=s)`` for :func:`goc_utils.model.sampler.generate`."""
        engine, compensator = self.engine, self.compensator
        if engine.on_unit is not None:
            raise InvalidArgumentError("a compiled engine runs no per-unit observer (on_unit): use the eager engine")
        engine.begin_step(step)
        recompute, keep = engine._recompute, engine._last_reuse > step
        depth, units = recompute.shape
        keys = [(b, u) for b in range(depth) for u in range(units)]
        recipes, inputs, planned = {}, [], []
        for key in keys:
            if recompute[key]:
                continue
            plan = compensator.plan_reuse(key, step)
            if plan is None:  # this compensator's reuse runs eagerly, its value enters the graph as is
                plan = ("same", (compensator.reuse(key, step),))
            else:
                planned.append(key)
            recipes[key] = plan[0]
            inputs.extend(plan[1])
        pattern = _pattern(recompute, keep, recipes)
        args = (x, t, y, tuple(inputs))
        out, kept, reused = self._graph(pattern, args)(*args)
        if self.mode == "reduce-overhead":  # CUDA graphs reuse their output memory: keep copies across steps
            out, kept, reused = out.clone(), tuple(v.clone() for v in kept), tuple(v.clone() for v in reused)
        reused_keys = [k for k in keys if not recompute[k]]
        values = dict(zip(reused_keys, reused, strict=True))
        for key in planned:
            compensator.commit_reuse(key, step, values[key])
        for key, value in zip([k for k in keys if recompute[k] and keep[k]], kept, strict=True):
            compensator.computed(key, step, value)
        for key in keys:
            if not keep[key]:  # never reused again: its state goes, as the eager engine drops it
                compensator.release(key)
        engine.end_step()
        return out
