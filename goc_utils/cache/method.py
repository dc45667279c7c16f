"""A caching method = a schedule with its options + a compensator with its options.

A method is resolved once, at the edge (the CLI, a notebook helper, the Python API): :func:`resolve_method` parses
the text (:meth:`CacheMethod.parse`) and resolves it for a run (:meth:`CacheMethod.resolve`: a
:class:`~goc_utils.cache.run.RunShape` and the caller's :class:`~goc_utils.cache.run.Resources`) into one
:class:`ResolvedMethod`: the built schedule, the compensator's options with every resource in them (GOC's published
w and steps from the schedule or ``auto`` ones from priors, TCC's pack: each compensator's resolve hook), its label
and its cost. That object is what sampling, eval, bench, the hooks and the notebooks take; its
:meth:`ResolvedMethod.engine` is a fresh :class:`~goc_utils.cache.engine.CacheEngine` per run.

Method strings: ``schedule[:option...][+compensator[:option...]]``, options as ``key=value`` (or a
flag), mapped onto the schedule builder's keyword arguments and the compensator config's fields
(:mod:`goc_utils.cache.options`). Examples::

    none   fora-50   fora:interval=3   fora:interval=2:range=2-18   matrix:path=m.csv
    l2c:router=r.pt:thres=0.2   l2c:r.pt@0.2 (short form)   l2c@0.2 (router from the caller)
    fora-50+goc   fora-50+goc:auto   l2c+goc:w=0.8:steps=3,5,7   l2c+goc:coupling=unit   fora-25+taylor:k=2
    fora-50+tcc   l2c+tcc   fora-50+tcc:alpha=1.0   fora-50+tcc:pack=my_pack.safetensors
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from goc_utils.cache.compensator import COMPENSATORS, build_compensator
from goc_utils.cache.engine import CacheEngine, method_cost
from goc_utils.cache.l2c import check_router_model
from goc_utils.cache.options import parse_options, path_parameters
from goc_utils.cache.plugins import load_plugins
from goc_utils.cache.run import MethodContext, Resources, RunShape
from goc_utils.cache.schedule import SCHEDULES, CacheSchedule, build_schedule
from goc_utils.errors import InvalidArgumentError, shorten
from goc_utils.lists import plain_float, refuse_repeats, split_items
from goc_utils.model.macs import MACs

AUTO = "auto"


@dataclass
class CacheMethod:
    """A method as written: schedule + compensator, by registered name with options (no resources yet).

    Attributes:
        schedule: a name in :data:`~goc_utils.cache.schedule.SCHEDULES` (``none``, ``fora``, ``fora-25``,
            ``fora-50``, ``matrix``, ``l2c``, ...).
        schedule_options: builder keyword arguments (``interval``, ``start``, ``stop``, ``path``, ``router``,
            ``thres``...) as the string gave them.
        compensator: a name in :data:`~goc_utils.cache.compensator.COMPENSATORS` (``none``, ``goc``, ``taylor``...).
        compensator_options: config fields (``weight``, ``correction_steps``, ``coupling``, ``order``...) as the
            string gave them; :meth:`resolve` fills the rest from the run (the compensator's resolve hook).
    """

    schedule: str = "none"
    schedule_options: dict = field(default_factory=dict)
    compensator: str = "none"
    compensator_options: dict = field(default_factory=dict)

    @property
    def needs_priors(self) -> bool:
        """Whether a compensator option is ``"auto"`` (resolved from a priors file)."""
        return AUTO in self.compensator_options.values()

    @property
    def needs_router(self) -> bool:
        """Whether the schedule takes a Learning-to-Cache router that the string does not name."""
        return "router" in SCHEDULES[self.schedule].options and self.schedule_options.get("router") is None

    def resolve(self, run: RunShape, resources: Resources | None = None, text: str | None = None) -> ResolvedMethod:
        """This method for one run: the schedule built, every resource found and checked (router, the model it was
        trained for and threshold, GOC's published or ``auto`` w and steps, TCC's pack), the compensator's options
        validated; one line for whatever is missing or does not fit, before any sampling. ``text``: the string it was
        written as (default :meth:`label`)."""
        resources = resources or Resources()
        options = dict(self.schedule_options)
        label = self.label()
        if "router" in SCHEDULES[self.schedule].options:
            options = {"router": resources.router, "thres": resources.thres} | options
            if options["router"] is None:
                raise InvalidArgumentError(
                    f"method {label!r} needs a Learning-to-Cache router: pass --router PATH or write "
                    f"{self.schedule}:router=PATH (short: {self.schedule}:PATH@THRES)"
                )
            _check_thres(options["thres"], label)
            if resources.model is not None:
                check_router_model(options["router"], resources.model)
        schedule = build_schedule(self.schedule, run.steps, run.depth, **options)
        if self.compensator != "none" and schedule.reused_units == 0:
            raise InvalidArgumentError(
                f"compensator {self.compensator!r} needs a schedule that reuses units; "
                f"schedule {schedule.name!r} recomputes everything (choose fora-50, l2c, ...)"
            )
        hook = COMPENSATORS[self.compensator].resolve
        compensator = dict(self.compensator_options)
        if hook is not None:
            compensator = hook(compensator, MethodContext(run, schedule, resources, label, self.schedule))
        build_compensator(self.compensator, **compensator)  # its config's own checks, now
        return ResolvedMethod(text or label, self, run, schedule, options, compensator)

    @classmethod
    def parse(cls, text: str) -> CacheMethod:
        """``"schedule[:option...][+compensator[:option...]]"`` -> method (see the module docstring).

        Only the text: resources it does not name (an ``l2c`` router, priors, packs) are the caller's, found by
        :meth:`resolve`. Every error is one line naming the known options. Callers go through
        :func:`resolve_method` (text -> resolved method, once, at the edge).
        """
        shown = repr(shorten(text))
        parts = text.strip().split("+")
        if len(parts) > 2 or not parts[0]:
            raise InvalidArgumentError(f"malformed method {shown}; use schedule[+compensator], e.g. fora-50+goc")
        schedule, *schedule_parts = parts[0].split(":")
        schedule, _, at_thres = schedule.partition("@")
        compensator, *compensator_parts = (parts[1] if len(parts) == 2 else "none").split(":")
        if schedule not in SCHEDULES or compensator not in COMPENSATORS:
            load_plugins()  # a name from another installed package (entry points), imported on first use
        if schedule not in SCHEDULES or compensator not in COMPENSATORS:
            raise InvalidArgumentError(
                f"unknown method {shown}; schedules: {', '.join(SCHEDULES)}; compensators: {', '.join(COMPENSATORS)}"
            )
        spec = SCHEDULES[schedule]
        if "router" in spec.options:  # short forms: l2c:PATH[@THRES], l2c@THRES
            if schedule_parts and "=" not in schedule_parts[0]:
                path, sep, at = schedule_parts.pop(0).rpartition("@")
                path, at = (path, at) if sep else (at, "")
                schedule_parts.insert(0, f"router={path}")
                at_thres = at or at_thres
            given = {"thres": _number(at_thres, text)} if at_thres else {}
        elif at_thres:
            raise InvalidArgumentError(f"schedule {schedule!r} in method {shown} takes no @threshold")
        else:
            given = {}
        options = given | parse_options(schedule_parts, spec.options, {}, f"schedule {schedule!r}", text)
        if "thres" in options:
            _check_thres(options["thres"], text)
        comp_spec = COMPENSATORS[compensator]
        what = f"compensator {compensator!r}"
        comp = parse_options(compensator_parts, comp_spec.options, comp_spec.flags, what, text)
        try:  # validate the values now (before any sampling), "auto" aside
            comp_spec.config_cls(**{k: v for k, v in comp.items() if v != AUTO})
        except TypeError as exc:
            raise InvalidArgumentError(f"bad options in method {shown}: {exc}") from None
        return cls(schedule, options, compensator, comp)

    def files(self) -> list[tuple[str, str]]:
        """``(option, path)`` of every file the string names (``l2c:router=PATH``, ``matrix:path=PATH``,
        ``tcc:pack=FILE``): the options their builder or config declares as a ``Path``
        (:func:`~goc_utils.cache.options.path_parameters`). ``goc`` checks them before anything loads.

        Example:
            >>> CacheMethod.parse("l2c:r.pt@0.2+goc").files()
            [('router', 'r.pt')]
        """
        declared = [(self.schedule_options, SCHEDULES[self.schedule].build),
                    (self.compensator_options, COMPENSATORS[self.compensator].config_cls)]  # fmt: skip
        return [
            (key, str(value))
            for options, owner in declared
            for key in sorted(path_parameters(owner) & set(options))
            if isinstance(value := options[key], (str, Path))
        ]

    def label(self) -> str:
        """Short name such as ``fora-50+goc``, with non-default text options (``l2c+goc:coupling=unit``)."""
        if self.compensator == "none":
            return self.schedule
        spec = COMPENSATORS[self.compensator]
        declared = {f.name: f for f in fields(spec.config_cls)}
        options = dict(self.compensator_options)
        shown = ""
        for flag, values in spec.flags.items():  # goc:auto rather than goc:w=auto:steps=auto
            if values.items() <= options.items():
                shown += f":{flag}"
                options = {k: v for k, v in options.items() if k not in values}
        shown += "".join(
            f":{declared[k].metadata.get('option', k)}={v}"
            for k, v in options.items()
            if isinstance(v, str) and k in declared and v != declared[k].default
        )
        return f"{self.schedule}+{self.compensator}{shown}"


def _number(value: str, text: str) -> float:
    try:
        return plain_float(value)
    except ValueError:
        raise InvalidArgumentError(
            f"option value {shorten(value)!r} in method {shorten(text)!r} is not a number"
        ) from None


def _check_thres(value: float, text: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise InvalidArgumentError(f"router threshold {value} in method {shorten(text)!r} must be in [0, 1]")


@dataclass(frozen=True)
class ResolvedMethod:
    """A method ready for one run: what every layer below the edge takes (sampling, eval, bench, the hooks, the
    notebooks). Made by :meth:`CacheMethod.resolve` / :func:`resolve_method`, once.

    Attributes:
        text: the string the method was written as (its row in tables, its folder). method: the parsed
            :class:`CacheMethod`. run: the :class:`~goc_utils.cache.run.RunShape` it was resolved for.
        schedule: the built schedule. schedule_options: the builder's options (router and threshold filled in).
        compensator_options: the compensator config's options (published defaults, ``auto`` and packs resolved).
    """

    text: str
    method: CacheMethod
    run: RunShape
    schedule: CacheSchedule
    schedule_options: dict
    compensator_options: dict

    @property
    def label(self) -> str:
        return self.method.label()

    @property
    def compensator(self) -> str:
        return self.method.compensator

    @property
    def config(self):
        """The compensator's config as this run uses it (its dataclass, defaults and checks applied)."""
        return COMPENSATORS[self.method.compensator].config_cls(**self.compensator_options)

    def engine(self, model=None, compile: bool | str = False):
        """A fresh engine (empty compensator state) for one run; ``model``: the ``DiT`` that
        :meth:`~goc_utils.cache.engine.CacheEngine.forward` drives (None for the diffusers hooks). ``compile``: True
        or a :func:`torch.compile` mode (``"reduce-overhead"``: CUDA graphs) runs the model calls as compiled graphs,
        one per step pattern (:class:`~goc_utils.cache.compiled.CompiledEngine`; same results to float tolerance)."""
        compensator = build_compensator(self.method.compensator, **self.compensator_options)
        engine = CacheEngine(self.schedule, compensator, model=model, tokens=self.run.tokens)
        if not compile:
            return engine
        from goc_utils.cache.compiled import CompiledEngine  # torch.compile's import cost only when asked

        return CompiledEngine(engine, "default" if compile is True else compile)

    def cost(self, macs: MACs) -> dict[str, float]:
        """:func:`~goc_utils.cache.engine.method_cost` of this method (the compensator's own MACs included)."""
        return method_cost(self.schedule, build_compensator(self.method.compensator, **self.compensator_options),
                           self.run.tokens, macs)  # fmt: skip

    def __str__(self) -> str:
        return self.text


def resolve_method(
    method: str | CacheMethod | ResolvedMethod, run: RunShape, resources: Resources | None = None
) -> ResolvedMethod:
    """Text (or a parsed / resolved method) -> the method resolved for ``run`` with ``resources``: the one way
    from what a user wrote to what runs.

    Example:
        >>> from goc_utils.cache.run import RunShape
        >>> resolved = resolve_method("fora-50+goc", RunShape(steps=20, depth=4, hidden=128, tokens=64))
        >>> resolved.compensator_options["weight"], resolved.schedule.cache_ratio
        (1.2, 0.5)
    """
    if isinstance(method, ResolvedMethod):
        if method.run != run:
            raise InvalidArgumentError(f"method {method.text!r} was resolved for {method.run}, not {run}")
        return method
    text = method if isinstance(method, str) else None
    parsed = CacheMethod.parse(method) if isinstance(method, str) else method
    if not isinstance(parsed, CacheMethod):
        raise InvalidArgumentError(f"a method is a method string or a CacheMethod (got {type(method).__name__})")
    return parsed.resolve(run, resources, text)


def split_methods(text: str) -> list[str]:
    """A comma-separated list of method strings; a part that is only digits (or empty) continues the previous
    method's step list (``"none,fora-50+goc:steps=3,5,7,l2c"`` -> 3 methods; the step list itself is checked
    when its method is parsed). One line for an empty list, an empty item or a method given twice
    (:mod:`goc_utils.lists`)."""
    methods: list[str] = []
    for part in (p.strip() for p in str(text).split(",")):
        if (part.isdigit() or not part) and methods and re.search(r"steps=[\d,]*$", methods[-1]):
            methods[-1] += f",{part}"
        else:
            methods.append(part)
    example = "none,fora-50,fora-50+goc"
    if "" in methods:  # the list, or an item outside a step list, is empty
        split_items(text, "method list", example)
    return refuse_repeats(methods, "method list", text, example)


def without_router(methods: list[str], router: str | None, priors: bool = True) -> tuple[list[str], list[str]]:
    """``(kept, skipped)``: the methods that can run: when ``router`` is None those needing a router (an ``l2c``
    schedule without ``router=`` in the string) are skipped, and without ``priors`` those asking for ``auto``; in
    the given order."""
    kept, skipped = [], []
    for text in methods:
        if text.startswith(("diffusers:", "cachedit:")):  # other libraries' caches need neither
            kept.append(text)
            continue
        method = CacheMethod.parse(text)
        needs = (router is None and method.needs_router) or (not priors and method.needs_priors)
        (skipped if needs else kept).append(text)
    return kept, skipped
