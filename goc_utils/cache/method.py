"""A caching method = a schedule with its options + a compensator with its options.

:class:`CacheMethod` is what method strings, CLI flags and notebooks build; :meth:`CacheMethod.engine`
turns it into a :class:`~goc_utils.cache.engine.CacheEngine` for a model and step count, filling the
published defaults from the schedule (GOC's w: ``schedule.reference_weight``; its correction steps:
``schedule.reference_correction_steps``).

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

from goc_utils.cache.compensator import COMPENSATORS, build_compensator
from goc_utils.cache.engine import CacheEngine
from goc_utils.cache.options import parse_options
from goc_utils.cache.plugins import load_plugins
from goc_utils.cache.schedule import SCHEDULES, CacheSchedule, ScheduleError, build_schedule
from goc_utils.cache.tcc import PackSource, TCCPack, TCCPackError
from goc_utils.errors import InvalidArgumentError, shorten
from goc_utils.lists import refuse_repeats, split_items
from goc_utils.model.dit import DiT

AUTO = "auto"


@dataclass
class CacheMethod:
    """Schedule + compensator, by registered name with options.

    Attributes:
        schedule: a name in :data:`~goc_utils.cache.schedule.SCHEDULES` (``none``, ``fora``, ``fora-25``,
            ``fora-50``, ``matrix``, ``l2c``, ...).
        schedule_options: builder keyword arguments (``interval``, ``start``, ``stop``, ``path``, ``router``,
            ``thres``...).
        compensator: a name in :data:`~goc_utils.cache.compensator.COMPENSATORS` (``none``, ``goc``, ``taylor``...).
        compensator_options: config fields (``weight``, ``correction_steps``, ``coupling``, ``order``...); GOC's
            missing ``weight`` / ``correction_steps`` take the schedule's published values, ``"auto"`` ones are
            resolved from priors; TCC's pack is found when the engine is built
            (:class:`~goc_utils.cache.tcc.PackSource`).
    """

    schedule: str = "none"
    schedule_options: dict = field(default_factory=dict)
    compensator: str = "none"
    compensator_options: dict = field(default_factory=dict)

    @property
    def needs_priors(self) -> bool:
        """Whether a compensator option is ``"auto"`` (resolved from a priors file)."""
        return AUTO in self.compensator_options.values()

    def build_schedule(self, steps: int, depth: int) -> CacheSchedule:
        return build_schedule(self.schedule, steps, depth, **self.schedule_options)

    def engine(self, model: DiT, steps: int, priors=None, packs: PackSource | None = None) -> CacheEngine:
        """A fresh engine for ``model`` sampling ``steps`` steps.

        ``priors`` (a :class:`~goc_utils.priors.stats.PriorStats`) resolves GOC's ``"auto"`` correction steps and
        weight, through its :meth:`~goc_utils.priors.stats.PriorStats.auto_goc` (the one place ``auto`` is resolved).
        ``packs`` says where TCC finds its pack (a ``tcc:pack=FILE`` option wins); the pack is checked against the
        run (model and cfg from ``packs``; steps, width and the host's reuse pattern from here).
        """
        schedule = self.build_schedule(steps, model.depth)
        options = dict(self.compensator_options)
        if self.compensator != "none" and schedule.reused_units == 0:
            raise InvalidArgumentError(
                f"compensator {self.compensator!r} needs a schedule that reuses units; "
                f"schedule {schedule.name!r} recomputes everything (choose --cache fora-50, l2c, ...)"
            )
        if self.compensator == "goc":
            options.setdefault("weight", schedule.reference_weight)
            options.setdefault("correction_steps", schedule.reference_correction_steps)
        if AUTO in options.values():
            if priors is None:
                raise InvalidArgumentError(
                    "GOC 'auto' steps / weight need a priors file: create one with `goc priors` (or pass --priors)"
                )
            auto = priors.auto_goc(
                schedule, options["correction_steps"], options["weight"], options.get("coupling", "block")
            )
            options.update(correction_steps=auto.steps, weight=auto.weight)
        if self.compensator == "tcc" and not isinstance(options.get("pack"), TCCPack):
            pack, pooling = options.get("pack"), options.get("pooling")
            options["pack"] = self._load_pack(pack, pooling, packs, schedule, steps, model)
        bad = [s for s in options.get("correction_steps") or () if not 0 <= int(s) < steps]
        if bad:
            raise ScheduleError(f"GOC correction step {bad[0]} is outside the run's steps 0..{steps - 1}")
        return CacheEngine(model, schedule, build_compensator(self.compensator, **options))

    def _load_pack(self, path: str | None, pooling: str | None, packs: PackSource | None, schedule: CacheSchedule,
                   steps: int, model: DiT) -> TCCPack:  # fmt: skip
        """TCC's pack for this run: ``path``, else ``packs``' file or default, checked against the run."""
        if path is None and packs is None:
            raise TCCPackError(
                f"{self.label()!r} needs a TCC pack: pass tcc:pack=FILE, or run it through goc sample / eval / bench "
                "(they find data/tcc/<model>_ddim<steps>_cfg<cfg>_<host>.safetensors); fit one with `goc tcc-pack`"
            )
        if path is not None:
            pack, where = TCCPack.load(path), path
        else:
            pack, where = packs.load(self.schedule, steps, pooling or "class")
        pack.check_run(
            schedule.mask, steps, model.depth, getattr(model, "hidden_size", None), where,
            None if packs is None else packs.model, None if packs is None else packs.cfg_scale, pooling,
        )  # fmt: skip
        return pack

    @classmethod
    def parse(cls, text: str, router: str | None = None, thres: float = 0.1) -> CacheMethod:
        """``"schedule[:option...][+compensator[:option...]]"`` -> method (see the module docstring).

        A schedule with a ``router`` option takes ``router`` / ``thres`` from the arguments unless the string
        names them. Every error is one line naming the known options.
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
            defaults = {"router": router, "thres": thres} | ({"thres": _number(at_thres, text)} if at_thres else {})
        elif at_thres:
            raise InvalidArgumentError(f"schedule {schedule!r} in method {shown} takes no @threshold")
        else:
            defaults = {}
        options = defaults | parse_options(schedule_parts, spec.options, {}, f"schedule {schedule!r}", text)
        if "router" in spec.options and options.get("router") is None:
            raise InvalidArgumentError(
                f"method {shown} needs a Learning-to-Cache router: pass --router PATH or write "
                f"{schedule}:router=PATH (short: {schedule}:PATH@THRES)"
            )
        if "thres" in options and not 0.0 <= options["thres"] <= 1.0:
            raise InvalidArgumentError(f"router threshold {options['thres']} in method {shown} must be in [0, 1]")
        comp_spec = COMPENSATORS[compensator]
        what = f"compensator {compensator!r}"
        comp = parse_options(compensator_parts, comp_spec.options, comp_spec.flags, what, text)
        try:  # validate the values now (before any sampling), "auto" aside
            comp_spec.config_cls(**{k: v for k, v in comp.items() if v != AUTO})
        except TypeError as exc:
            raise InvalidArgumentError(f"bad options in method {shown}: {exc}") from None
        return cls(schedule, options, compensator, comp)

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
        return float(value)
    except ValueError:
        raise InvalidArgumentError(
            f"option value {shorten(value)!r} in method {shorten(text)!r} is not a number"
        ) from None


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


def without_router(methods: list[str], router: str | None) -> tuple[list[str], list[str]]:
    """``(kept, skipped)``: the methods that can run when ``router`` is None skip those needing a router
    (an ``l2c`` schedule without ``router=`` in the string), in the given order."""
    if router is not None:
        return list(methods), []
    kept, skipped = [], []
    for text in methods:
        if text.startswith(("diffusers:", "cachedit:")):  # other libraries' caches need no router
            kept.append(text)
            continue
        try:
            CacheMethod.parse(text)
            kept.append(text)
        except InvalidArgumentError:
            if "router" not in SCHEDULES[text.split("+")[0].split(":")[0].split("@")[0]].options:
                raise
            skipped.append(text)
    return kept, skipped
