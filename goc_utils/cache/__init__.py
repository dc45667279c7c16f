"""Feature caching for DiT: schedules (which units recompute) x compensators (what reuse returns).

* schedules: ``none``, ``fora``, ``fora-25``, ``fora-50`` (:mod:`.fora`), ``matrix`` (:mod:`.matrix`),
  ``l2c`` (:mod:`.l2c`), registered in :data:`SCHEDULES` (:mod:`.schedule`);
* compensators: ``none`` (plain reuse), ``goc`` (:mod:`.goc`), ``taylor`` (:mod:`.taylor`), ``tcc`` (:mod:`.tcc`),
  registered in :data:`COMPENSATORS` (:mod:`.compensator`);
* :func:`resolve_method` (:mod:`.method`) turns a method string, a run (:class:`RunShape`) and the caller's
  :class:`Resources` into one :class:`ResolvedMethod`; its :class:`CacheEngine` combines the schedule and the
  compensator for a sampling run.

A new method is one file with a registration decorator, imported here once.
"""

from goc_utils.cache import fora, goc, l2c, matrix, taylor, tcc  # noqa: F401 - the registrations
from goc_utils.cache.compensator import COMPENSATORS, Compensator, build_compensator, register_compensator
from goc_utils.cache.engine import CacheEngine
from goc_utils.cache.method import CacheMethod, ResolvedMethod, resolve_method, split_methods, without_router
from goc_utils.cache.run import Resources, RunShape
from goc_utils.cache.schedule import SCHEDULES, CacheSchedule, ScheduleError, build_schedule, register_schedule
from goc_utils.cache.tcc import TCCPack

__all__ = [
    "COMPENSATORS",
    "SCHEDULES",
    "CacheEngine",
    "CacheMethod",
    "CacheSchedule",
    "Compensator",
    "ResolvedMethod",
    "Resources",
    "RunShape",
    "ScheduleError",
    "TCCPack",
    "build_compensator",
    "build_schedule",
    "register_compensator",
    "register_schedule",
    "resolve_method",
    "split_methods",
    "without_router",
]
