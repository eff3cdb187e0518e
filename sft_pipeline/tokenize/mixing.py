"""Weighted mixing of sources: how many of the train rows each source gives (``split.mixed`` picks which).

Each source's share is ``weight / sum of weights`` (``ingest.sources[i].weight``). The total is
``tokenize.max_rows`` when set; otherwise the largest total that every source with rows can fill at
its share, so that the shares hold exactly and no row is repeated (LLaMA-Factory's ``interleave_under``).
A source's rows are its quota of the total, apportioned by largest remainder; a source with fewer train
candidates than its quota gives all it has, and the rest is its shortfall (the others keep their quota:
nothing is moved between sources). Within a source the rows with the smallest id hash are taken (the
``max_rows`` subset's hash, under ``run.seed``), so the choice is independent of row order.
Arithmetic is on exact fractions: a share never rounds above what a source has.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Sequence

SHARE_DIGITS = 4


@dataclass(frozen=True)
class Mix:
    """The sources' weights (by source index) and each input row's source index."""

    weights: tuple[float, ...]
    sources: Sequence[int]


@dataclass(frozen=True)
class SourceDraw:
    """What one source was asked for and gave, before encoding (the tokenize stage adds what it kept)."""

    weight: float
    share_asked: float
    rows_available: int  # train candidates of this source (after filtering and the held-out split)
    rows_asked: int
    rows_selected: int

    @property
    def rows_short(self) -> int:
        return self.rows_asked - self.rows_selected


def shares(weights: Sequence[float]) -> list[Fraction]:
    """Each weight's exact share of their sum.

    >>> [str(s) for s in shares([3, 1, 0])]
    ['3/4', '1/4', '0']
    """
    fractions = [Fraction(w) for w in weights]
    total = sum(fractions)
    return [f / total for f in fractions]


def apportion(parts: Sequence[Fraction], total: int) -> list[int]:
    """Whole numbers summing to ``total`` in proportion to ``parts`` (which sum to 1): largest remainder,
    ties to the earlier part.

    >>> apportion(shares([1, 1, 1]), 10), apportion(shares([3, 1]), 6), apportion(shares([1, 0]), 5)
    ([4, 3, 3], [5, 1], [5, 0])
    """
    quotas = [p * total for p in parts]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(parts)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def full_total(parts: Sequence[Fraction], available: Sequence[int]) -> int:
    """The largest total every source with rows can fill at its share (sources without rows cannot fill any).

    >>> full_total(shares([1, 1]), [100, 30]), full_total(shares([4, 1]), [100, 100])
    (60, 125)
    >>> full_total(shares([1, 1]), [8, 0])
    16
    """
    limits = [math.floor(n / p) for p, n in zip(parts, available) if p > 0 and n > 0]
    return min(limits) if limits else 0


def asked_rows(weights: Sequence[float], available: Sequence[int], total: int | None) -> list[int]:
    """Each source's quota of the train rows: ``total`` (None: the largest total the sources fill at their shares)
    apportioned by share.

    >>> asked_rows([1, 1], [4, 2], None), asked_rows([1, 1], [4, 2], 6), asked_rows([1, 0], [4, 2], None)
    ([2, 2], [3, 3], [4, 0])
    """
    parts = shares(weights)
    return apportion(parts, full_total(parts, available) if total is None else total)


def source_draws(weights: Sequence[float], available: Sequence[int], asked: Sequence[int],
                 selected: Sequence[int]) -> list[SourceDraw]:
    """Each source's draw, its share rounded for the summary.

    >>> source_draws([3, 1], [9, 1], [3, 1], [3, 1])[0].share_asked
    0.75
    """
    return [SourceDraw(w, round(float(p), SHARE_DIGITS), n, a, s)
            for w, p, n, a, s in zip(weights, shares(weights), available, asked, selected)]


def mix_summary(draws: Sequence[SourceDraw], names: Sequence[str], kept_sources: Sequence[int],
                kept_supervised: Sequence[int]) -> dict[str, dict]:
    """Per source (``source_<index>``): its path, what it was asked for and what the written train rows hold
    (``train_rows``, ``supervised_tokens`` and their shares; rows the tokenize stage drops after the draw, e.g.
    too long, count against a source here).

    >>> d = [SourceDraw(3.0, 0.75, 9, 3, 3), SourceDraw(1.0, 0.25, 1, 1, 1)]
    >>> s = mix_summary(d, ["a.jsonl", "b.jsonl"], [0, 0, 1], [10, 20, 10])
    >>> s["source_1"]["train_rows"], s["source_1"]["share_obtained"], s["source_1"]["supervised_share"]
    (1, 0.3333, 0.25)
    """
    rows, tokens = Counter(kept_sources), Counter()
    for source, supervised in zip(kept_sources, kept_supervised):
        tokens[source] += supervised
    all_rows, all_tokens = max(1, len(kept_sources)), max(1, sum(kept_supervised))
    return {f"source_{i}": {"source": names[i], **asdict(d), "rows_short": d.rows_short,
                            "train_rows": rows[i], "share_obtained": round(rows[i] / all_rows, SHARE_DIGITS),
                            "supervised_tokens": tokens[i],
                            "supervised_share": round(tokens[i] / all_tokens, SHARE_DIGITS)}
            for i, d in enumerate(draws)}
