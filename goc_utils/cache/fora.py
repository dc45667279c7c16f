"""FORA: recompute every unit at refresh steps, reuse everything in between.

Interval N refreshes at steps with ``s % N == 0`` inside an optional step range
``[start, stop)``; outside the range every step recomputes. The paper's DDIM-20 reference
matrices: ``fora-25`` reuses all blocks at steps 1, 3, 5, 7, 9 ("matrix3", 25% of
block-steps) and ``fora-50`` at every odd step (50%). Their published GOC correction steps
are attached for DDIM-20 only; other step counts correct at every reused step by default.
"""

from __future__ import annotations

import numpy as np

from goc_utils.cache.schedule import CacheSchedule, ScheduleError, register_schedule
from goc_utils.lists import plain_int

FORA_25_CORRECTION_STEPS = (3, 5, 7, 9)
FORA_50_CORRECTION_STEPS = (3, 5, 7, 9, 11, 13, 15, 19)


def parse_range(text: str) -> dict:
    """``"2-18"`` (or ``2:18``, ``2-``) -> ``{"start": 2, "stop": 18}``: the method-string form of a step range."""
    start, sep, stop = text.replace(":", "-").partition("-")
    if not sep:
        raise ScheduleError(f"malformed step range {text!r}; use a-b, e.g. 2-18")
    try:
        return {"start": plain_int(start or "0"), "stop": plain_int(stop) if stop else None}
    except ValueError:
        raise ScheduleError(f"malformed step range {text!r}; use a-b, e.g. 2-18") from None


@register_schedule("fora", options={"range": parse_range})
def fora(steps: int, depth: int, interval: int = 2, start: int = 0, stop: int | None = None) -> CacheSchedule:
    """Refresh when ``s % interval == 0`` for ``start <= s < stop``; recompute everywhere else.

    Args:
        steps: sampling steps N.
        depth: model blocks.
        interval: refresh interval (1 = never reuse).
        start, stop: the step range in which caching happens (default: all steps).
    """
    stop = steps if stop is None else stop
    if interval < 1:
        raise ScheduleError(f"FORA interval must be >= 1 (got {interval})")
    if not 0 <= start <= stop <= steps:
        raise ScheduleError(f"FORA range {start}:{stop} is not inside 0:{steps}; use a:b with 0 <= a <= b <= {steps}")
    recompute = np.ones(steps, dtype=bool)
    in_range = np.arange(start, stop)
    recompute[in_range] = in_range % interval == 0
    recompute[0] = True
    mask = np.repeat(recompute[:, None, None], depth, axis=1).repeat(2, axis=2)
    suffix = "" if (start, stop) == (0, steps) else f"[{start}:{stop}]"
    return CacheSchedule(mask, name=f"fora-N{interval}{suffix}")


@register_schedule("fora-50")
def fora_50(steps: int, depth: int) -> CacheSchedule:
    """Reuse all blocks at every odd step (GOC's 50% FORA experiment on DDIM-20)."""
    schedule = fora(steps, depth, interval=2)
    return CacheSchedule(schedule.mask, "fora-50", FORA_50_CORRECTION_STEPS if steps == 20 else None)


@register_schedule("fora-25")
def fora_25(steps: int, depth: int) -> CacheSchedule:
    """Reuse all blocks at odd steps of the first half (1, 3, 5, 7, 9 for DDIM-20: "matrix3", 25%)."""
    schedule = fora(steps, depth, interval=2, start=0, stop=steps // 2)
    return CacheSchedule(schedule.mask, "fora-25", FORA_25_CORRECTION_STEPS if steps == 20 else None)
