"""Feature caching for DiT: schedules (which units recompute) x compensators (what reuse returns).

* schedules: ``none``, ``fora``, ``fora-25``, ``fora-50``, ``matrix``, ``l2c`` (:mod:`.schedule`);
* compensators: ``none`` (plain reuse), ``goc``, ``taylor`` (:mod:`.compensator`);
* :class:`CacheEngine` combines one of each for a sampling run; :mod:`.macs` counts MACs.
"""

from goc_utils.cache.compensator import COMPENSATORS, Compensator, build_compensator
from goc_utils.cache.engine import CacheEngine
from goc_utils.cache.schedule import SCHEDULES, CacheSchedule, ScheduleError, build_schedule

__all__ = [
    "COMPENSATORS",
    "SCHEDULES",
    "CacheEngine",
    "CacheSchedule",
    "Compensator",
    "ScheduleError",
    "build_compensator",
    "build_schedule",
]
