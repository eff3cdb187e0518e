"""The compared metrics: names, labels, good direction, and their per-item values for the bootstrap.

Prompt-benchmark metrics are named by prefix, ``<benchmark>_<suffix>`` (``ifeval_inst_loose``,
``ifbench_prompt_strict``), so a new benchmark adds its four metrics without a table entry here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from sft_pipeline.evaluate.stats import paired_interval, verdict
from sft_pipeline.verdicts import HIGHER, LOWER, NEUTRAL

HELDOUT_LOSS, HELDOUT_PERPLEXITY = "heldout_loss", "heldout_perplexity"
EXP = "exp"  # transform: perplexity is exp(loss) of each resample
TRANSFORMS = {EXP: np.exp}
# Benchmark metric suffix -> label (all higher-is-better accuracies, lm-eval's four aggregates).
BENCH_SUFFIXES = {
    "prompt_strict": "prompt strict",
    "inst_strict": "instruction strict",
    "prompt_loose": "prompt loose",
    "inst_loose": "instruction loose",
}
# Interval bounds copied into each metric's comparison entry.
INTERVAL_FIELDS = ("low", "high", "base_low", "base_high", "tuned_low", "tuned_high")


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    direction: int  # HIGHER / LOWER is better; NEUTRAL: no verdict
    rate: bool = False  # a fraction in [0, 1] (plotted together)
    items: str | None = None  # metric whose per-item values it resamples (None: its own)
    transform: str | None = None


HELDOUT = (
    Metric(HELDOUT_LOSS, "Held-out loss (assistant tokens)", LOWER),
    Metric(HELDOUT_PERPLEXITY, "Held-out perplexity", LOWER, items=HELDOUT_LOSS, transform=EXP),
)
BEHAVIOUR = (
    Metric("stop_rate", "Stop rate (ended its turn within max_new_tokens)", HIGHER, rate=True),
    Metric("mean_new_tokens", "Mean answer length (tokens)", NEUTRAL),
    Metric("repetition_rate", "Repeated n-gram rate", LOWER, rate=True),
    Metric("mean_words", "Mean words", NEUTRAL),
    Metric("sycophantic_rate", "Sycophantic opener rate", LOWER, rate=True),
    Metric("too_short_rate", "Too-short rate", LOWER, rate=True),
)


def bench_metrics(name: str, title: str) -> tuple[Metric, ...]:
    """The four accuracies of one prompt benchmark.

    >>> [m.name for m in bench_metrics("ifbench", "IFBench")][:2]
    ['ifbench_prompt_strict', 'ifbench_inst_strict']
    >>> bench_metrics("ifeval", "IFEval")[3].label
    'IFEval instruction loose'
    """
    return tuple(Metric(f"{name}_{suffix}", f"{title} {label}", HIGHER, rate=True)
                 for suffix, label in BENCH_SUFFIXES.items())


def metric_table(benchmarks: Sequence[tuple[str, str]]) -> tuple[Metric, ...]:
    """Every compared metric in report order, for ``(name, title)`` benchmarks."""
    return HELDOUT + tuple(m for name, title in benchmarks for m in bench_metrics(name, title)) + BEHAVIOUR


def bench_items(verdicts: Sequence[dict], suffix: str) -> tuple[list[float], list[float]]:
    """Per-prompt (values, weights) of one accuracy: instruction level is passes over instructions.

    >>> v = [{"prompt_strict": True, "inst_strict": [True, False]}, {"prompt_strict": False, "inst_strict": [False]}]
    >>> bench_items(v, "inst_strict"), bench_items(v, "prompt_strict")
    (([1.0, 0.0], [2.0, 1.0]), ([1.0, 0.0], [1.0, 1.0]))
    """
    if suffix.startswith("inst"):
        return [float(sum(v[suffix])) for v in verdicts], [float(len(v[suffix])) for v in verdicts]
    return [float(v[suffix]) for v in verdicts], [1.0] * len(verdicts)


def finite_or_none(value: float | None) -> float | None:
    """JSON-safe float: nan/inf become None.

    >>> finite_or_none(float("nan")), finite_or_none(1.5)
    (None, 1.5)
    """
    return value if value is not None and math.isfinite(value) else None


def compare(metrics: Sequence[Metric], base: dict, tuned: dict, items: dict, *, resamples: int,
            seed: int) -> dict[str, dict]:
    """Per metric: label, direction, base, tuned, delta, its paired 95 % interval and the verdict.

    ``base``/``tuned`` are the point values; ``items[name]`` holds ``{"base", "tuned", "weights"}``
    per-item lists (a metric without them gets no interval and no verdict).
    """
    out = {}
    for m in metrics:
        cell = items.get(m.items or m.name)
        iv = paired_interval(cell["base"], cell["tuned"], cell["weights"], resamples=resamples, seed=seed,
                             transform=TRANSFORMS.get(m.transform)) if cell else None
        b, t = base.get(m.name), tuned.get(m.name)
        entry = {"label": m.label, "direction": m.direction, "rate": m.rate, "base": b, "tuned": t,
                 "delta": t - b if b is not None and t is not None else None}
        bounds = {k: finite_or_none(getattr(iv, k)) for k in INTERVAL_FIELDS} if iv else dict.fromkeys(INTERVAL_FIELDS)
        entry.update(bounds, n=iv.n if iv else None, resamples=iv.resamples if iv else None,
                     verdict=verdict(bounds["low"], bounds["high"], m.direction))
        out[m.name] = entry
    return out
