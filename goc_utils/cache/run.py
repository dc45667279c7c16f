"""What a method is resolved against: the run's shape and the resources the caller gives once.

A method string says *which* cache; a run says *where* it runs (:class:`RunShape`: steps, depth, width, tokens) and
*with what* (:class:`Resources`: the Learning-to-Cache router and threshold, the priors of ``goc:auto``, the run's
model and cfg that a TCC pack must have been fitted for). :meth:`goc_utils.cache.method.CacheMethod.resolve` turns
the three into one :class:`~goc_utils.cache.method.ResolvedMethod`; each compensator's own resources are resolved by
the hook it registered (:class:`MethodContext`), so no compensator has a branch in generic code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from goc_utils.cache.schedule import CacheSchedule


@dataclass(frozen=True)
class RunShape:
    """A sampling run as a method sees it.

    Attributes:
        steps: sampling steps. depth: transformer blocks. hidden: width of a branch output (None: unknown).
        tokens: tokens per image (what a compensator's own MACs scale with; 0: unknown).
    """

    steps: int
    depth: int
    hidden: int | None = None
    tokens: int = 0

    @classmethod
    def of(cls, model, steps: int) -> RunShape:
        """The shape of ``steps``-step runs of ``model`` (our ``DiT``, or anything with ``depth`` /
        ``hidden_size`` / ``num_tokens``)."""
        return cls(int(steps), int(model.depth), getattr(model, "hidden_size", None), getattr(model, "num_tokens", 0))


@dataclass(frozen=True)
class Resources:
    """What methods may need besides their text, given once by the caller (CLI flags, notebook parameters).

    Attributes:
        router: the Learning-to-Cache router file of an ``l2c`` method written without ``router=``.
        thres: its threshold, unless the method string names one (default 0.1).
        priors: a :class:`~goc_utils.priors.stats.PriorStats` for ``goc:auto``, or a callable returning one
            (called only when a method asks for ``auto``), or None.
        model: the run's preset name and cfg_scale its guidance scale (a TCC pack is looked up by them and
            checked against them); None: not checked.
        pack: one TCC pack file for every ``+tcc`` method (None: each host's default pack; ``tcc:pack=FILE`` wins).
    """

    router: str | None = None
    thres: float = 0.1
    priors: object = None
    model: str | None = None
    cfg_scale: float | None = None
    pack: str | Path | None = None

    def load_priors(self):
        """The priors (loading them now if a loader was given), or None."""
        return self.priors() if callable(self.priors) else self.priors


@dataclass(frozen=True)
class MethodContext:
    """What a compensator's resolve hook sees: the run, its built schedule, the resources, the method's label and
    its host schedule's registered name (``fora-50``, ``l2c``)."""

    run: RunShape
    schedule: CacheSchedule
    resources: Resources
    label: str
    host: str


CompensatorResolver = Callable[[dict, MethodContext], dict]
"""A compensator's resolve hook: its options as written -> its options ready for its config (defaults filled,
``auto`` resolved, files loaded and checked against the run); one-line errors for what is missing or does not fit."""
