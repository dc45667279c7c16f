"""A caching method = a schedule with its options + a compensator with its options.

:class:`CacheMethod` is what the CLI flags, notebooks and (later) method strings build;
:meth:`CacheMethod.engine` turns it into a :class:`~goc_utils.cache.engine.CacheEngine`
for a model and step count, filling the published defaults (GOC's w = 1.2 with FORA and
0.8 with Learning-to-Cache; the schedule's reference correction steps).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from goc_utils.cache.compensator import COMPENSATORS, build_compensator
from goc_utils.cache.engine import CacheEngine
from goc_utils.cache.schedule import SCHEDULES, CacheSchedule, ScheduleError, build_schedule
from goc_utils.errors import InvalidArgumentError
from goc_utils.models import DiT


@dataclass
class CacheMethod:
    """Schedule + compensator, by name with options.

    Attributes:
        schedule: ``none``, ``fora``, ``fora-25``, ``fora-50``, ``matrix`` or ``l2c``.
        schedule_options: builder options (``interval``, ``start``, ``stop``, ``path``, ``router``, ``thres``).
        compensator: ``none`` (plain reuse), ``goc`` or ``taylor``.
        compensator_options: config options (``weight``, ``correction_steps``, ``order``); GOC's
            missing ``weight`` / ``correction_steps`` take the published values for the schedule.
    """

    schedule: str = "none"
    schedule_options: dict = field(default_factory=dict)
    compensator: str = "none"
    compensator_options: dict = field(default_factory=dict)

    def build_schedule(self, steps: int, depth: int) -> CacheSchedule:
        return build_schedule(self.schedule, steps, depth, **self.schedule_options)

    def engine(self, model: DiT, steps: int, priors=None) -> CacheEngine:
        """A fresh engine for ``model`` sampling ``steps`` steps.

        ``priors`` (a :class:`~goc_utils.priors.PriorStats`) resolves GOC's ``"auto"``
        correction steps and weight.
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
            if "auto" in (options["weight"], options["correction_steps"]):
                if priors is None:
                    raise InvalidArgumentError(
                        "GOC 'auto' steps / weight need a priors file: create one with `goc priors` (or pass --priors)"
                    )
                from goc_utils.priors import auto_goc

                auto = auto_goc(
                    priors, schedule, options["correction_steps"], options["weight"], options.get("coupling", "block")
                )
                options.update(correction_steps=auto.steps, weight=auto.weight)
            bad = [s for s in options["correction_steps"] or () if not 0 <= int(s) < steps]
            if bad:
                raise ScheduleError(f"GOC correction step {bad[0]} is outside the run's steps 0..{steps - 1}")
        return CacheEngine(model, schedule, build_compensator(self.compensator, **options))

    @classmethod
    def parse(cls, text: str, router: str | None = None, thres: float = 0.1) -> CacheMethod:
        """``"schedule[+compensator[:option...]]"`` -> method.

        Examples: ``"none"``, ``"fora-50+goc"`` (the paper's w and steps), ``"fora-50+goc:auto"``
        (inflection-aware steps and least-squares w from priors), ``"l2c+goc:w=0.8:steps=auto"``,
        ``"l2c+goc:coupling=unit"`` (correct each reused unit on its own instead of whole reused blocks),
        ``"fora-25+taylor:k=2"``. ``l2c`` takes its router file and threshold from the arguments
        unless the string names them: ``"l2c:data/routers/x.pt@0.1+goc:w=0.8"``, ``"l2c@0.2"``.
        """
        from goc_utils.cache import fora, goc, l2c, matrix, taylor  # noqa: F401 - registration side effect

        parts = text.strip().split("+")
        if len(parts) > 2 or not parts[0]:
            raise InvalidArgumentError(f"malformed method {text!r}; use schedule[+compensator], e.g. fora-50+goc")
        spec = parts[0]
        schedule = spec.split(":")[0].split("@")[0]
        argument = spec[len(schedule) :]  # "", ":PATH", ":PATH@T" or "@T"
        compensator, *opts = (parts[1] if len(parts) == 2 else "none").split(":")
        options: dict = {}
        if schedule not in SCHEDULES or compensator not in COMPENSATORS:
            raise InvalidArgumentError(
                f"unknown method {text!r}; schedules: {', '.join(SCHEDULES)}; compensators: {', '.join(COMPENSATORS)}"
            )
        if argument and schedule != "l2c":
            raise InvalidArgumentError(
                f"schedule {spec!r} in method {text!r} takes no argument; only l2c:ROUTER[@THRES] does"
            )
        if schedule == "l2c":
            path_text, _, thres_text = argument.removeprefix(":").rpartition("@")
            if "@" not in argument:
                path_text, thres_text = argument.removeprefix(":"), ""
            router = path_text or router
            if thres_text:
                thres = _number(thres_text, text)
                if not 0.0 <= thres <= 1.0:
                    raise InvalidArgumentError(f"router threshold {thres} in method {text!r} must be in [0, 1]")
            if router is None:
                raise InvalidArgumentError(
                    f"method {text!r} needs a Learning-to-Cache router: pass --router PATH or write l2c:PATH@THRES"
                )
            options = {"router": router, "thres": thres}
        comp: dict = {}
        for opt in opts:
            key, _, value = opt.partition("=")
            if (compensator, key) == ("goc", "auto") and not value:
                comp.update(weight="auto", correction_steps="auto")
            elif (compensator, key) == ("goc", "w"):
                comp["weight"] = value if value == "auto" else _number(value, text)
            elif (compensator, key) == ("goc", "steps") and value == "auto":
                comp["correction_steps"] = "auto"
            elif (compensator, key) == ("goc", "coupling"):
                if value not in goc.COUPLINGS:
                    raise InvalidArgumentError(
                        f"GOC coupling must be one of {', '.join(goc.COUPLINGS)} (got {value!r} in method {text!r})"
                    )
                comp["coupling"] = value
            elif (compensator, key) == ("taylor", "k"):
                comp["order"] = int(_number(value, text))
            else:
                raise InvalidArgumentError(
                    f"unknown option {opt!r} in method {text!r}; use goc:auto, goc:w=W|auto, goc:steps=auto, "
                    "goc:coupling=block|unit, taylor:k=K"
                )
        return cls(schedule, options, compensator, comp)

    def label(self) -> str:
        """Short name such as ``fora-50+goc`` (``+goc:unit`` for the per-unit coupling)."""
        if self.compensator == "none":
            return self.schedule
        suffix = ":unit" if self.compensator_options.get("coupling") == "unit" else ""
        return f"{self.schedule}+{self.compensator}{suffix}"


def _number(value: str, text: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise InvalidArgumentError(f"option value {value!r} in method {text!r} is not a number") from None
