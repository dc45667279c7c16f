"""Paired differences between two methods sampled from the same noise, with their bootstrap spread.

Two cached methods that share their noise share most of their sampling error: the spread of their *difference*
is far smaller than either method's own spread. The bootstrap here resamples the images with replacement and
uses the same resample for both methods, so what they share cancels. A difference beyond twice its spread is
reported as resolved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from goc_utils.errors import InvalidArgumentError


@dataclass(frozen=True)
class PairedDifference:
    """One metric of two methods on the same noise, and the spread of their difference.

    Attributes:
        metric: its name (``PSNR vs reference``, ``FID``); unit: ``dB`` or ``""``.
        a, b: the metric of each method on all images.
        difference: ``a - b``.
        std: paired bootstrap standard deviation of ``difference`` (the same resample for both methods).
        count: images per method; resamples: bootstrap resamples.
    """

    metric: str
    unit: str
    a: float
    b: float
    difference: float
    std: float
    count: int
    resamples: int

    @property
    def resolved(self) -> bool:
        """True when the difference is more than twice its spread."""
        return abs(self.difference) > 2 * self.std

    def report(self, name_a: str = "A", name_b: str = "B") -> str:
        unit = f" {self.unit}" if self.unit else ""
        verdict = "resolved" if self.resolved else "within 2 spreads: not resolved"
        return (
            f"{self.metric}: {name_a} {self.a:.2f}{unit}, {name_b} {self.b:.2f}{unit}; {name_a} - {name_b} = "
            f"{self.difference:+.2f} +- {self.std:.2f}{unit} (paired bootstrap std, {self.resamples} resamples of "
            f"{self.count} images; {verdict})"
        )


def paired_bootstrap(
    metric: Callable[[np.ndarray], tuple[float, float]], count: int, resamples: int, seed: int = 0
) -> tuple[float, float, float]:
    """``(a, b, std of a - b)``: ``metric(index) -> (a, b)`` on all ``count`` images and on ``resamples`` paired
    resamples (one index array for both methods, drawn one at a time so memory stays O(count))."""
    if resamples < 2:
        raise InvalidArgumentError(f"resamples must be >= 2 to give a spread (got {resamples})")
    rng = np.random.default_rng(seed)
    spread = np.empty(resamples)
    for r in range(resamples):
        a, b = metric(rng.integers(0, count, size=count))
        spread[r] = a - b
    a, b = metric(np.arange(count))
    return float(a), float(b), float(spread.std(ddof=1))


__all__ = ["PairedDifference", "paired_bootstrap"]
