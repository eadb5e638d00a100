"""Confidence intervals for the report's shares and means.

- :func:`wilson_interval`: the Wilson score interval of a binomial share ``k / n`` (good at small
  ``n`` and at shares near 0 or 1, where the normal approximation breaks: IP of an aligned model is
  often 0 of 100, and Wilson still says "up to 3.7 %").
- :func:`mean_interval`: mean ± z·s/√n of per-image values (CLIPScore, pixel distances).
- :func:`bootstrap_interval`: percentile bootstrap of any statistic, seeded (optional cross-check).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Z_95 = 1.959963984540054  # two-sided 95 %: the normal quantile 0.975


@dataclass(frozen=True)
class Share:
    """``count`` of ``n`` with its Wilson interval ``[low, high]`` at level ``confidence``."""

    count: int
    n: int
    low: float
    high: float
    confidence: float = 0.95

    @property
    def value(self) -> float:
        return self.count / self.n if self.n else float("nan")

    def to_json(self) -> dict:
        return {
            "value": _round(self.value),
            "count": self.count,
            "n": self.n,
            "ci": [_round(self.low), _round(self.high)],
        }

    @classmethod
    def of(cls, flags: Sequence[bool], confidence: float = 0.95) -> Share:
        flags = list(flags)
        count = int(sum(bool(f) for f in flags))
        low, high = wilson_interval(count, len(flags), confidence)
        return cls(count, len(flags), low, high, confidence)


def z_value(confidence: float) -> float:
    """The two-sided normal quantile for ``confidence`` (0.95 -> 1.96)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(count: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the share ``count / n``; ``(nan, nan)`` when ``n == 0``.

    ``centre = (p + z²/2n) / (1 + z²/n)``, ``half = z·√(p(1-p)/n + z²/4n²) / (1 + z²/n)``.
    """
    if not 0 <= count <= n:
        raise ValueError(f"need 0 <= count <= n, got count={count}, n={n}")
    if n == 0:
        return float("nan"), float("nan")
    z = z_value(confidence)
    p = count / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean, sample standard deviation and the normal-approximation interval of the mean."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return {"value": None, "std": None, "n": 0, "ci": [None, None]}
    mean = float(array.mean())
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    half = z_value(confidence) * std / math.sqrt(array.size)
    return {
        "value": _round(mean),
        "std": _round(std),
        "n": int(array.size),
        "ci": [_round(mean - half), _round(mean + half)],
    }


def bootstrap_interval(
    values: Sequence[float],
    statistic: Callable[[np.ndarray], float] = np.mean,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over ``values`` (seeded, reproducible)."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, array.size, size=(resamples, array.size))
    stats = np.array([statistic(array[row]) for row in draws])
    tail = (1.0 - confidence) / 2.0
    return float(np.quantile(stats, tail)), float(np.quantile(stats, 1.0 - tail))


def _round(value: float | None, digits: int = 6) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(value), digits)
