"""Paired bootstrap intervals for base-vs-tuned metrics (pure numpy, no Prefect).

Every metric is a ratio of sums over items, ``sum(values) / sum(weights)``: a plain
mean has weight 1 per item, held-out loss is summed NLL over summed tokens per row,
instruction-level accuracy is passed instructions over instructions per prompt. Both
models answered the same items, so one resample of item indices is applied to both
sides (a *paired* bootstrap): the spread of ``tuned - base`` then reflects only how
much the per-item differences vary, not how hard the items are. Resamples are drawn
as a (resamples x items) matrix of multinomial counts, so each statistic is one
matrix product. Intervals are percentile intervals at ``LEVEL``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

LEVEL = 0.95
from sft_pipeline.verdicts import BETTER, HIGHER, LOWER, NEUTRAL, NO_CHANGE, WORSE  # noqa: F401  (LOWER: doctests)


@dataclass(frozen=True)
class Interval:
    """Point estimates, the delta and its interval; per-side intervals for error bars."""

    base: float
    tuned: float
    delta: float
    low: float
    high: float
    base_low: float
    base_high: float
    tuned_low: float
    tuned_high: float
    n: int  # items resampled
    resamples: int


def resample_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """How often each of ``n`` items is drawn in each resample: shape (resamples, n), rows sum to n.

    >>> c = resample_counts(5, 3, seed=0)
    >>> c.shape, c.sum(axis=1).tolist()
    ((3, 5), [5, 5, 5])
    >>> bool((resample_counts(5, 3, seed=0) == c).all())
    True
    """
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)


def ratio(values: Sequence[float], weights: Sequence[float]) -> float:
    """``sum(values) / sum(weights)`` (nan when the weights sum to 0).

    >>> ratio([2.0, 6.0], [1, 3]), ratio([1.0, 0.0, 1.0], [1, 1, 1])
    (2.0, 0.6666666666666666)
    """
    total = float(np.sum(weights))
    return float(np.sum(values)) / total if total else math.nan


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    low, high = np.nanpercentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def paired_interval(base: Sequence[float], tuned: Sequence[float], weights: Sequence[float] | None = None, *,
                    resamples: int, seed: int, level: float = LEVEL,
                    transform: Callable[[np.ndarray], np.ndarray] | None = None) -> Interval | None:
    """Paired bootstrap interval of ``stat(tuned) - stat(base)``, ``stat`` = ratio of sums (then ``transform``).

    None when there are no items. With identical per-item differences the interval is that difference:

    >>> iv = paired_interval([1.0, 2.0, 3.0], [1.5, 2.5, 3.5], resamples=200, seed=0)
    >>> round(iv.delta, 6), round(iv.low, 6), round(iv.high, 6), iv.n
    (0.5, 0.5, 0.5, 3)
    """
    b, t = np.asarray(base, dtype=float), np.asarray(tuned, dtype=float)
    w = np.ones_like(b) if weights is None else np.asarray(weights, dtype=float)
    if not len(b):
        return None
    f = transform or (lambda x: x)
    counts = resample_counts(len(b), resamples, seed).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = counts @ w
        rb, rt = f((counts @ b) / denom), f((counts @ t) / denom)
    point_b, point_t = float(f(np.float64(ratio(b, w)))), float(f(np.float64(ratio(t, w))))
    return Interval(point_b, point_t, point_t - point_b, *_percentiles(rt - rb, level),
                    *_percentiles(rb, level), *_percentiles(rt, level), n=len(b), resamples=resamples)


def verdict(low: float | None, high: float | None, direction: int) -> str | None:
    """better / worse / no significant change, from the interval of ``tuned - base``; None without a direction.

    >>> verdict(0.1, 0.3, HIGHER), verdict(0.1, 0.3, LOWER), verdict(-0.1, 0.3, HIGHER), verdict(0.1, 0.3, NEUTRAL)
    ('better', 'worse', 'no significant change', None)
    """
    if direction == NEUTRAL or low is None or high is None:
        return None
    if low > 0 or high < 0:
        return BETTER if (low > 0) == (direction == HIGHER) else WORSE
    return NO_CHANGE


def samples_needed(n: int, low: float, high: float, margin: float) -> int | None:
    """Items needed for the interval's half-width to fall below ``margin`` (it shrinks as 1/sqrt(n)).

    ``margin`` is the distance of the observed delta from the tolerance; None when it is 0
    (no sample size decides) or the interval is empty.

    >>> samples_needed(40, -0.2, 0.1, 0.05)  # half-width 0.15 -> 3x narrower -> 9x the items
    360
    >>> samples_needed(40, -0.2, 0.1, 0.0) is None
    True
    """
    half = (high - low) / 2
    if margin <= 0 or n <= 0 or not math.isfinite(half):
        return None
    return max(n, math.ceil(round(n * (half / margin) ** 2, 9)))
