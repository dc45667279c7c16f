"""Methods on a diffusers transformer in our harness: ours through the hooks, and diffusers' own caches.

``goc bench`` / ``goc eval-sample`` / ``goc eval`` with ``--backend diffusers`` sample a
``DiTTransformer2DModel`` (our weights, :class:`~goc_utils.integrations.diffusers.hooks.DiffusersDiT`) with our
sampler and the same per-sample noise as the native backend. A method string is resolved once
(:func:`resolve_any`) and sampled by a :class:`Runner` (:func:`make_runner`):

* our method strings (``fora-50+goc``, ``l2c+goc:auto``...): :class:`EngineRunner` drives the transformer through
  :func:`~goc_utils.integrations.diffusers.hooks.attach_engine`'s hooks (one engine per runner);
* ``diffusers:<cache>[:key=value...]``: :class:`DiffusersCacheRunner` applies one of diffusers' caches
  (:data:`PEERS`); options are the fields of its config (``diffusers:fbc:threshold=0.05``,
  ``diffusers:taylorseer:cache_interval=2``; ranges as ``lo..hi``);
* ``cachedit:dbcache[:key=value...]``: :class:`CacheDitRunner` runs cache-dit's DBCache.

What each method really computes is counted by the unit hooks
(:class:`~goc_utils.integrations.diffusers.hooks.UnitCounter`), so the MACs columns of
diffusers' caches are measured, not assumed.

How each diffusers cache is made to run on DiT (diffusers 0.42):

* ``taylorseer``: its default module patterns (``^transformer_blocks.*attn``, full match) hook nothing on
  DiT (``attn1``), so the branches are named (``transformer_blocks.N.attn1`` / ``.ff``); Taylor factors in
  float32 (default bfloat16); needs a cache context (set around each call).
* ``fbc`` (First Block Cache): needs a cache context.
* ``magcache``: needs per-model ``mag_ratios``; without them one un-cached calibration run (diffusers'
  ``calibrate=True`` mode) on 16 fixed samples of the run's seed measures them first.
* ``pab`` (Pyramid Attention Broadcast): attention only (about a third of a DiT block's MACs, so at most
  ~1.47x); needs the current timestep (given by the runner).
* ``fastercache``: expects the batch as ``[uncond; cond]`` (ours is ``[cond; uncond]``: the runner swaps the
  halves around the call), ``class_labels`` among the split inputs, ``tensor_format="BCHW"``; needs
  classifier-free guidance (cfg != 1), or ``is_guidance_distilled=true`` at cfg 1 (attention caching only).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Protocol

import torch
from diffusers.hooks import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    HookRegistry,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
    apply_faster_cache,
    apply_first_block_cache,
    apply_mag_cache,
    apply_pyramid_attention_broadcast,
    apply_taylorseer_cache,
)
from diffusers.models.cache_utils import CacheMixin

from goc_utils.cache.method import ResolvedMethod, resolve_method
from goc_utils.cache.run import Resources, RunShape
from goc_utils.errors import InvalidArgumentError, shorten
from goc_utils.integrations import cachedit
from goc_utils.integrations.diffusers.hooks import STEP_HOOK, DiffusersDiT, UnitCounter, attach_engine, unit_dispatch
from goc_utils.integrations.diffusers.transformer import to_transformer
from goc_utils.lists import key_values, plain_float, plain_int

PREFIX = "diffusers:"
CALIBRATION_SAMPLES = 16
"""MagCache calibration: one un-cached run of this many samples (the run's seed, indices 0..15)."""


@dataclass(frozen=True)
class PeerSpec:
    """One of diffusers' caches: its config class, apply function, hook names and what it needs."""

    config_cls: type
    apply: Callable
    hooks: tuple[str, ...]
    defaults: dict = field(default_factory=dict)
    context: bool = False
    timestep: bool = False
    swap_cfg: bool = False
    calibrate: bool = False


PEERS: dict[str, PeerSpec] = {
    "taylorseer": PeerSpec(
        TaylorSeerCacheConfig, apply_taylorseer_cache, ("taylorseer_cache",),
        {"cache_identifiers": [r"transformer_blocks\.\d+\.(attn1|ff)"], "taylor_factors_dtype": torch.float32},
        context=True,
    ),
    "fbc": PeerSpec(FirstBlockCacheConfig, apply_first_block_cache, ("fbc_leader_block_hook", "fbc_block_hook"),
                    context=True),
    "magcache": PeerSpec(
        MagCacheConfig, apply_mag_cache, ("mag_cache_leader_block_hook", "mag_cache_block_hook"), calibrate=True
    ),
    "pab": PeerSpec(
        PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast, ("pyramid_attention_broadcast",),
        {"spatial_attention_block_skip_range": 2}, timestep=True,
    ),
    "fastercache": PeerSpec(
        FasterCacheConfig, apply_faster_cache, ("faster_cache_denoiser", "faster_cache_block"),
        {
            "tensor_format": "BCHW",
            "is_guidance_distilled": False,
            "_unconditional_conditional_input_kwargs_identifiers": ("hidden_states", "timestep", "class_labels"),
            "attention_weight_callback": lambda _: 0.5,
        },
        timestep=True, swap_cfg=True,
    ),
}  # fmt: skip
"""diffusers' caches by the name used in ``diffusers:<name>`` method strings."""


def is_peer(text: str) -> bool:
    """Whether ``text`` is another library's cache: ``diffusers:*`` or ``cachedit:*``."""
    return text.strip().startswith(PREFIX) or cachedit.is_cachedit(text)


def _range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("..")
    if not sep:
        raise ValueError(text)
    return plain_int(low), plain_int(high)


CONVERTERS: dict[str, Callable[[str], object]] = {
    "int": plain_int,
    "float": plain_float,
    "int | None": lambda v: None if v == "none" else plain_int(v),
    "float | None": lambda v: None if v == "none" else plain_float(v),
    "bool": lambda v: {"true": True, "false": False}[v],
    "tuple[int, int]": _range,
}
"""Config field types settable from a method string (ranges as ``lo..hi``; ``none`` for optional numbers)."""


OPTION_KINDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "interval": (lambda v: v >= 1, "an interval N (compute once every N calls) must be >= 1"),
    "range": (lambda v: v[0] < v[1], "a timestep range lo..hi needs lo < hi (the hooks act where lo < t < hi)"),
    "threshold": (lambda v: math.isfinite(v) and v >= 0, "a threshold must be a finite number >= 0"),
    "ratio": (lambda v: 0 <= v <= 1, "a ratio must be in [0, 1]"),
    "order": (lambda v: v >= 0, "a Taylor order must be >= 0"),
    "step": (lambda v: v >= 0, "a step index or number of steps must be >= 0"),
    "number": (lambda v: isinstance(v, int) or math.isfinite(v), "it must be a finite number"),
    "flag": (lambda v: True, ""),
}
"""What each kind of option of diffusers' caches may be: its check on the converted value and the rule it states."""


def option_kind(key: str, kind: str) -> str:
    """The kind (:data:`OPTION_KINDS`) of option ``key`` of type ``kind``, from what its name says it is:
    ``cache_interval`` and ``*_block_skip_range`` (every N calls) are intervals, ``*_timestep_skip_range`` ranges,
    ``threshold`` thresholds, ``retention_ratio`` ratios, ``max_order`` orders, ``*_step(s)`` steps."""
    if kind.startswith("tuple"):
        return "range"
    if kind == "bool":
        return "flag"
    for suffix, found in (("interval", "interval"), ("skip_range", "interval"), ("threshold", "threshold"),
                          ("ratio", "ratio"), ("order", "order"), ("step", "step"), ("steps", "step")):  # fmt: skip
        if key.endswith(suffix):
            return found
    return "number"


def peer_options(name: str) -> dict[str, str]:
    """The options of ``diffusers:<name>`` method strings: config field -> type."""
    found = {f.name: _kind(f.type) for f in fields(PEERS[name].config_cls)}
    return {k: v for k, v in found.items() if v in CONVERTERS and not k.startswith("_")}


def _kind(annotation) -> str:
    text = str(annotation)
    return text[len("<class '") : -2] if text.startswith("<class '") else text


def parse_peer(text: str, steps: int | None = None, cfg_scale: float | None = None) -> tuple[str, dict]:
    """``"diffusers:fbc:threshold=0.05"`` -> ``("fbc", {"threshold": 0.05})``; one-line errors for an unknown cache
    or option, an option given twice and a value outside what its kind allows (:data:`OPTION_KINDS`).

    With the run's ``steps`` / ``cfg_scale``, also what must agree with them: MagCache's ``num_inference_steps``
    is the run's steps; FasterCache skips the unconditional branch of a guided run (cfg != 1), so
    ``is_guidance_distilled=true`` (no such branch) needs cfg 1 and the default needs guidance.
    ``cachedit:*`` strings go to :func:`goc_utils.integrations.cachedit.parse_method`.
    """
    if cachedit.is_cachedit(text):
        return cachedit.parse_method(text, steps, cfg_scale)
    name, *parts = text.strip()[len(PREFIX) :].split(":")
    shown = repr(shorten(text))
    if name not in PEERS:
        raise InvalidArgumentError(f"unknown diffusers cache in {shown}; choose one of: {', '.join(PEERS)}")
    declared = peer_options(name)
    options = {}
    for key, value in key_values(parts, list(declared), shown, f"diffusers:{name}").items():
        try:
            options[key] = CONVERTERS[declared[key]](value)
        except (ValueError, KeyError, TypeError):
            raise InvalidArgumentError(
                f"bad value {key}={shorten(value)} in {shown} (expected {declared[key]}; ranges as lo..hi)"
            ) from None
        check, rule = OPTION_KINDS[option_kind(key, declared[key])]
        if options[key] is not None and not check(options[key]):
            raise InvalidArgumentError(f"bad value {key}={shorten(value)} in {shown}: {rule}")
    runs = options.get("num_inference_steps")
    if steps is not None and runs is not None and runs != steps:
        raise InvalidArgumentError(
            f"num_inference_steps={runs} in {shown} differs from the run's {steps} steps; leave it out (it is --steps)"
        )
    if cfg_scale is not None and PEERS[name].swap_cfg:
        distilled = options.get("is_guidance_distilled", PEERS[name].defaults.get("is_guidance_distilled"))
        if distilled and cfg_scale != 1:
            raise InvalidArgumentError(
                f"is_guidance_distilled=true in {shown} says there is no unconditional branch, but cfg {cfg_scale:g} "
                "guides with one; leave it out or use --cfg-scale 1"
            )
        if not distilled and cfg_scale == 1:
            raise InvalidArgumentError(
                f"{shown} skips the unconditional branch of classifier-free guidance: use a cfg scale other than 1"
            )
    return name, options


@dataclass(frozen=True)
class PeerMethod:
    """Another library's cache as the edge resolved it: ``diffusers:<name>`` or ``cachedit:<name>`` with its
    options, checked against the run's steps and cfg (:func:`parse_peer`).

    Attributes:
        text: the method string (its row in tables). library: ``diffusers`` or ``cachedit``. name: the cache.
        options: its options as converted. run: the :class:`~goc_utils.cache.run.RunShape` it was checked for.
    """

    text: str
    library: str
    name: str
    options: dict
    run: RunShape

    @property
    def label(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.text


Method = ResolvedMethod | PeerMethod
"""What the edge turns a method string into: ours (:class:`~goc_utils.cache.method.ResolvedMethod`) or another
library's cache (:class:`PeerMethod`)."""


def resolve_any(text: str, run: RunShape, resources: Resources | None = None) -> Method:
    """A method string of any library, resolved once for ``run``: ours through
    :func:`~goc_utils.cache.method.resolve_method`, ``diffusers:`` / ``cachedit:`` ones through :func:`parse_peer`
    (checked against the run's steps, ``resources.cfg_scale`` and depth)."""
    resources = resources or Resources()
    if not is_peer(text):
        return resolve_method(text, run, resources)
    name, options = parse_peer(text, run.steps, resources.cfg_scale)
    library = "cachedit" if cachedit.is_cachedit(text) else "diffusers"
    if library == "cachedit":
        cachedit.check_depth(text, options, run.depth)
    return PeerMethod(text, library, name, options, run)


class Runner(Protocol):
    """What samples one method: ``forward(x, t, y, step)`` for the sampler, ``prepare()`` before sampling (MagCache's
    calibration) and ``cost(macs, run)``: the MACs columns (``run(forward)`` samples once, for the caches whose work
    is counted rather than known). :class:`~goc_utils.cache.engine.CacheEngine` is one (our ``DiT``), and so are
    the three runners of a diffusers transformer: :class:`EngineRunner`, :class:`DiffusersCacheRunner`,
    :class:`CacheDitRunner` (:func:`make_runner`)."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor: ...

    def prepare(self) -> None: ...

    def cost(self, macs, run: Callable[[Callable], None] | None = None) -> dict: ...


class _HookRunner:
    """A method on a :class:`~goc_utils.integrations.diffusers.hooks.DiffusersDiT` through hooks on its transformer.

    Several runners may share a transformer: a run's first step applies this runner's hooks (with fresh state) and
    its last step (or an error) removes them, so between runs the transformer computes plainly. Subclasses say how
    their hooks go on (:meth:`_apply`) and how a call runs (:meth:`_call`).
    """

    def __init__(self, model: DiffusersDiT, method: Method) -> None:
        self.model, self.transformer, self.method = model, model.transformer, method
        self.text, self.steps = method.text, method.run.steps
        self.counter: UnitCounter | None = None

    def _apply(self) -> None:
        raise NotImplementedError

    def _remove_all(self) -> None:
        cachedit.remove(self.transformer)
        registry = HookRegistry.check_if_exists_or_initialize(self.transformer)
        registry.remove_hook(STEP_HOOK, recurse=False)
        for spec in PEERS.values():
            for name in spec.hooks:
                registry.remove_hook(name, recurse=True)
        registry.invalidate_child_registries_cache()

    def activate(self) -> None:
        """Make this runner's hooks the transformer's (state reset); called at every run's first step."""
        unit_dispatch(self.transformer)  # our unit hooks stay innermost: they see only what really runs
        registry = HookRegistry.check_if_exists_or_initialize(self.transformer)
        if getattr(self.transformer, "_goc_runner", None) is not self:
            self._remove_all()
            self.transformer._goc_runner = None
            self._apply()
            self.transformer._goc_runner = self
        registry.reset_stateful_hooks()

    def deactivate(self) -> None:
        """Take this runner's hooks off the transformer (done after a run's last step and on errors)."""
        if getattr(self.transformer, "_goc_runner", None) is self:
            self._remove_all()
            self.transformer._goc_runner = None

    def prepare(self) -> None:
        """Run what must precede sampling (nothing, but for MagCache's calibration)."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        if step == 0:
            self.activate()
        try:
            if self.counter is not None:
                self.counter.call(step, x.shape[0])
            out = self._call(x, t, y)
        except BaseException:
            self.deactivate()
            raise
        if step == self.steps - 1:  # outside a run the transformer computes plainly
            self._finish()
            self.deactivate()
        return out

    def _finish(self) -> None:
        """After a run's last step, before the hooks come off."""

    def _call(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model(x, t, y)

    def cost(self, macs, run: Callable[[Callable], None] | None = None) -> dict:
        """The MACs columns, from counting what one run (``run(forward)``) really computes."""
        if run is None:
            raise InvalidArgumentError(f"{self.text!r}: its cost is measured by one sampling run; none was given")
        self.prepare()
        self.counter = UnitCounter(self.transformer, self.steps)
        try:
            run(self.forward)
            return self.counter.cost(macs)
        finally:
            self.counter.close()
            self.counter = None


class EngineRunner(_HookRunner):
    """Our method through :func:`~goc_utils.integrations.diffusers.hooks.attach_engine`'s hooks (one engine per
    runner; its cost is the method's, exactly: tests check the hooks agree)."""

    def __init__(self, model: DiffusersDiT, method: ResolvedMethod) -> None:
        super().__init__(model, method)
        self.engine = method.engine()
        self.schedule, self.compensator = self.engine.schedule, self.engine.compensator

    def _apply(self) -> None:
        attach_engine(self.transformer, self.engine)

    def cost(self, macs, run: Callable[[Callable], None] | None = None) -> dict:
        return self.engine.cost(macs)


class DiffusersCacheRunner(_HookRunner):
    """One of diffusers' caches (:data:`PEERS`), its config built from the method's options and the run."""

    def __init__(self, model: DiffusersDiT, method: PeerMethod, calibration: Callable[[Callable], None] | None = None):
        super().__init__(model, method)
        self.name, self.options = method.name, method.options
        self.spec = PEERS[self.name]
        self._calibration = calibration
        self._ratios = self.options.get("mag_ratios")
        self._t = 0

    def _config(self):
        options = dict(self.spec.defaults) | self.options
        if self.spec.timestep:
            options["current_timestep_callback"] = lambda: self._t
        if self.spec.calibrate:
            options.setdefault("num_inference_steps", self.steps)
            options["mag_ratios"] = self._ratios
        try:
            return self.spec.config_cls(**options)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"diffusers rejects the options of {self.text!r}: {exc}") from None

    def _apply(self) -> None:
        self.prepare()
        self.spec.apply(self.transformer, self._config())
        HookRegistry.check_if_exists_or_initialize(self.transformer).invalidate_child_registries_cache()

    def prepare(self) -> None:
        """MagCache's calibration (when no ``mag_ratios`` were given); the harness calls it before sampling."""
        if self.spec.calibrate and self._ratios is None:
            self._calibrate()

    def _calibrate(self) -> None:
        if self._calibration is None:
            raise InvalidArgumentError(f"{self.text!r} needs mag_ratios=... or a calibration run (none available here)")
        self._remove_all()
        self.transformer._goc_runner = None
        config = MagCacheConfig(calibrate=True, num_inference_steps=self.steps + 1)  # +1: keeps the ratios readable
        self.spec.apply(self.transformer, config)
        HookRegistry.check_if_exists_or_initialize(self.transformer).invalidate_child_registries_cache()
        HookRegistry.check_if_exists_or_initialize(self.transformer).reset_stateful_hooks()
        with contextlib.redirect_stdout(io.StringIO()):  # diffusers prints the ratios
            self._calibration(lambda x, t, y, step: self.model(x, t, y))
        leader = self.transformer.transformer_blocks[0]._diffusers_hook.get_hook(self.spec.hooks[0])
        states = getattr(getattr(leader, "state_manager", None), "_state_cache", {})
        ratios = next((list(s.calibration_ratios) for s in states.values() if len(s.calibration_ratios)), None)
        self._remove_all()
        self.transformer._goc_runner = None
        if ratios is None or len(ratios) != self.steps:
            raise InvalidArgumentError(f"MagCache calibration gave no ratios for {self.steps} steps ({self.text!r})")
        self._ratios = ratios

    def _call(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._t = int(t.reshape(-1)[0])
        if self.spec.swap_cfg and not self.options.get("is_guidance_distilled"):
            if x.shape[0] % 2:
                raise InvalidArgumentError(f"{self.text!r} needs classifier-free guidance (a cfg scale other than 1)")
            half = x.shape[0] // 2
            swap = lambda z: torch.cat([z[half:], z[:half]])  # noqa: E731
            return swap(self._run(swap(x), swap(t), swap(y)))
        return self._run(x, t, y)

    def _run(self, x, t, y):
        if self.spec.context:
            with CacheMixin.cache_context(self.transformer, "goc"):
                return self.model(x, t, y)
        return self.model(x, t, y)


class CacheDitRunner(_HookRunner):
    """cache-dit's DBCache (:mod:`goc_utils.integrations.cachedit`); ``cachedit_account`` holds cache-dit's own
    account of the last run (:func:`goc_utils.integrations.cachedit.account`)."""

    def __init__(self, model: DiffusersDiT, method: PeerMethod) -> None:
        super().__init__(model, method)
        self.cachedit = method.options
        self.cachedit_account: dict | None = None

    def _apply(self) -> None:
        cachedit.apply(self.transformer, self.cachedit, self.steps)

    def activate(self) -> None:
        super().activate()
        cachedit.refresh(self.transformer, self.steps)

    def _finish(self) -> None:
        self.cachedit_account = cachedit.account(self.transformer)

    def _call(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return cachedit.call(self.model, self.cachedit, x, t, y)


def make_runner(model, method: Method, calibration: Callable[[Callable], None] | None = None,
                compile: bool = False) -> Runner:  # fmt: skip
    """What samples ``method`` on ``model``: an engine on our ``DiT``; on a diffusers transformer
    (:class:`~goc_utils.integrations.diffusers.hooks.DiffusersDiT`, ``--backend diffusers``) the runner of its
    library. ``calibration(forward)`` samples once un-cached (MagCache). ``compile``: our methods run as compiled
    graphs (:class:`~goc_utils.cache.compiled.CompiledEngine`, on either backend: the diffusers transformer takes the
    same ``unit_fn``); other libraries' caches are left to their own compile support."""
    if isinstance(method, ResolvedMethod) and compile:
        return method.engine(model, compile=True)
    if isinstance(method, ResolvedMethod):
        return EngineRunner(model, method) if isinstance(model, DiffusersDiT) else method.engine(model)
    if not isinstance(model, DiffusersDiT):
        raise InvalidArgumentError(f"{method.text!r} is another library's cache: it runs with --backend diffusers")
    if method.library == "cachedit":
        return CacheDitRunner(model, method)
    return DiffusersCacheRunner(model, method, calibration)


def diffusers_backend(model) -> DiffusersDiT:
    """Our DiT as a diffusers ``DiTTransformer2DModel`` (same weights, published timestep features) for the harness."""
    return DiffusersDiT(to_transformer(model))
