"""Rates measured over windows of a run, and their spread: every benchmark figure has at least three.

A training run logs (step, time, cumulative tokens) at each optimizer step; after the warm-up the
steps are cut into windows of ``size`` steps and each window gives one tokens/s figure. A batched
generation gives one figure per batch. :func:`spread` reports the median with the minimum and maximum.
"""

from __future__ import annotations

import statistics

MIN_WINDOWS = 3


def window_rates(marks: list, warmup: int, size: int) -> list[float]:
    """Tokens/s of each whole window of ``size`` steps after step ``warmup`` (marks: (step, time, tokens)).

    >>> window_rates([(s, float(s), 10.0 * s) for s in range(1, 10)], warmup=3, size=2)
    [10.0, 10.0, 10.0]
    >>> window_rates([(1, 0.0, 10.0), (2, 1.0, 20.0)], warmup=3, size=2)
    []
    """
    steady = [m for m in marks if m[0] >= warmup]
    rates = []
    for start in range(0, len(steady) - size, size):
        (_, t0, n0), (_, t1, n1) = steady[start], steady[start + size]
        rates.append((n1 - n0) / (t1 - t0))
    return rates


def spread(values: list[float]) -> dict:
    """Median, minimum, maximum and count of ``values`` (empty: count 0, the rest None).

    >>> spread([3.0, 1.0, 2.0])
    {'median': 2.0, 'min': 1.0, 'max': 3.0, 'n': 3}
    """
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def spread_text(s: dict | None, pattern: str = "{:.0f}") -> str:
    """``median [min-max] (n)``, a dash when there is none; a count below MIN_WINDOWS is flagged.

    >>> spread_text({"median": 2.0, "min": 1.0, "max": 3.0, "n": 3})
    '2 [1-3] (3)'
    >>> spread_text({"median": 2.0, "min": 2.0, "max": 2.0, "n": 1})
    '2 [2-2] (1, too few)'
    """
    if not s or not s.get("n"):
        return "–"
    note = "" if s["n"] >= MIN_WINDOWS else ", too few"
    return f"{pattern.format(s['median'])} [{pattern.format(s['min'])}-{pattern.format(s['max'])}] ({s['n']}{note})"
