"""Regression gate on the paired 95 % intervals of ``tuned - base``.

Each check compares one metric's delta with a tolerance from
:class:`~sft_pipeline.config.GateConfig`. A tolerance is a **non-inferiority margin**: "the tuned model is
not worse than the base by more than X" (``None`` disables a check; the primary metric is always checked,
at tolerance 0 when its own check is disabled). A check is

- *failed* when the whole interval lies on the bad side of the tolerance (significantly worse than tolerated),
- *passed* when the whole interval lies on the good side (shown not worse than tolerated),
- *inconclusive* when the interval straddles the tolerance: the data cannot tell; the check records how
  many items would make the interval narrow enough to decide,
- *unmeasured* when the metric has no value (e.g. no held-out rows) or most of the tuned model's answers
  behind it were cut by ``max_new_tokens`` (it would score truncation, not the instruction).

Verdict: ``not_promoted`` if any check failed or the primary metric is unmeasured; else ``inconclusive``
(which does **not** promote) if any check is inconclusive or unmeasured; else ``promoted``. A metric
without an interval (no per-item data) is judged on its point delta.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from sft_pipeline.config import GateConfig
from sft_pipeline.evaluate.stats import samples_needed
from sft_pipeline.verdicts import FAILED, INCONCLUSIVE, NOT_PROMOTED, PASSED, PROMOTED, UNMEASURED

MAX_INCREASE = "max_increase"  # passes when delta <= limit
MIN_DELTA = "min_delta"  # passes when delta >= limit


@dataclass(frozen=True)
class Rule:
    setting: str  # GateConfig field holding the limit
    metric: str
    kind: str


RULES = (
    Rule("max_heldout_loss_increase", "heldout_loss", MAX_INCREASE),
    Rule("min_ifeval_delta", "ifeval_inst_loose", MIN_DELTA),
    Rule("min_ifbench_delta", "ifbench_prompt_strict", MIN_DELTA),
    Rule("min_stop_rate_delta", "stop_rate", MIN_DELTA),
    Rule("max_repetition_increase", "repetition_rate", MAX_INCREASE),
)


def status(kind: str, low: float, high: float, limit: float) -> str:
    """Where the interval ``[low, high]`` of the delta lies against the tolerance.

    >>> status(MAX_INCREASE, 0.02, 0.05, 0.0), status(MAX_INCREASE, -0.3, -0.1, 0.0), status(MAX_INCREASE, -0.1, 0.1, 0.0)
    ('failed', 'passed', 'inconclusive')
    >>> status(MIN_DELTA, -0.3, -0.1, -0.05), status(MIN_DELTA, -0.04, 0.2, -0.05)
    ('failed', 'passed')
    """
    bad_low, good_high = (low > limit, high <= limit) if kind == MAX_INCREASE else (high < limit, low >= limit)
    return FAILED if bad_low else PASSED if good_high else INCONCLUSIVE


def check(rule: Rule, base: float | None, tuned: float | None, limit: float, interval: Mapping | None = None) -> dict:
    """One check's record; ``interval`` holds ``low``, ``high`` and ``n`` (None: the point delta alone).

    >>> r = Rule("max_heldout_loss_increase", "heldout_loss", MAX_INCREASE)
    >>> check(r, 2.0, 2.3, 0.1)["status"], check(r, 2.0, 1.9, 0.0)["status"]
    ('failed', 'passed')
    >>> c = check(r, 2.0, 1.95, 0.0, {"low": -0.15, "high": 0.05, "n": 40})
    >>> c["status"], c["needed_n"]
    ('inconclusive', 160)
    >>> check(Rule("x", "stop_rate", MIN_DELTA), 0.5, None, -0.1)["status"]
    'unmeasured'
    >>> check(r, 2.0, 1.9, 0.0, {"low": -0.2, "high": -0.1, "n": 40, "mostly_cut_tuned": True})["status"]
    'unmeasured'
    """
    op = "<=" if rule.kind == MAX_INCREASE else ">="
    record = {"metric": rule.metric, "setting": rule.setting, "base": base, "tuned": tuned, "limit": limit,
              "condition": f"tuned - base {op} {limit:g}", "delta": None, "low": None, "high": None,
              "n": None, "needed_n": None, "passing_delta": None}
    if base is None or tuned is None or (interval or {}).get("mostly_cut_tuned"):
        return {**record, "status": UNMEASURED}
    delta = tuned - base
    interval = interval if interval and interval.get("low") is not None else None
    low, high = (interval["low"], interval["high"]) if interval else (delta, delta)
    result = status(rule.kind, low, high, limit)
    n = interval.get("n") if interval else None
    needed = samples_needed(n, low, high, abs(delta - limit)) if result == INCONCLUSIVE and n else None
    return {**record, "delta": delta, "low": low, "high": high, "n": n, "needed_n": needed, "status": result,
            "passing_delta": passing_delta(rule.kind, delta, low, high, limit)}


def passing_delta(kind: str, delta: float, low: float, high: float, limit: float) -> float:
    """The delta this check would need to pass with the interval's spread as observed: at a small n the
    interval is wide, and a check of ``>= -0.05`` may pass only for a clear gain.

    >>> round(passing_delta(MIN_DELTA, 0.02, -0.066, 0.11, -0.05), 3), passing_delta(MAX_INCREASE, -0.1, -0.2, 0.0, 0.0)
    (0.036, -0.1)
    """
    return limit + (delta - low) if kind == MIN_DELTA else limit - (high - delta)


def _limit(rule: Rule, gate: GateConfig) -> float | None:
    limit = getattr(gate, rule.setting)
    return 0.0 if limit is None and rule.metric == gate.primary_metric else limit


def decide(checks: list[dict]) -> str:
    """The gate's verdict from its checks' statuses: only a gate whose every check passed promotes.

    >>> decide([{"status": "passed"}, {"status": "inconclusive"}]), decide([{"status": "passed"}])
    ('inconclusive', 'promoted')
    >>> decide([{"status": "inconclusive"}, {"status": "failed"}])
    'not_promoted'
    >>> decide([{"status": "unmeasured", "primary": True}]), decide([{"status": "unmeasured"}]), decide([])
    ('not_promoted', 'inconclusive', 'not_promoted')
    """
    found = {c["status"] for c in checks}
    if not checks or FAILED in found or any(c["status"] == UNMEASURED and c.get("primary") for c in checks):
        return NOT_PROMOTED
    return INCONCLUSIVE if found & {INCONCLUSIVE, UNMEASURED} else PROMOTED


def run_gate(base: Mapping[str, float | None], tuned: Mapping[str, float | None], gate: GateConfig,
             intervals: Mapping[str, Mapping | None] | None = None) -> dict:
    """All enabled checks, the verdict, and the metrics that failed / were inconclusive."""
    intervals = intervals or {}
    checks = [
        {**check(rule, base.get(rule.metric), tuned.get(rule.metric), limit, intervals.get(rule.metric)),
         "primary": rule.metric == gate.primary_metric}
        for rule in RULES
        if (limit := _limit(rule, gate)) is not None
    ]
    verdict = decide(checks)
    return {"verdict": verdict, "promoted": verdict == PROMOTED, "primary_metric": gate.primary_metric,
            "failed_checks": [c["metric"] for c in checks if c["status"] == FAILED],
            "inconclusive_checks": [c["metric"] for c in checks if c["status"] == INCONCLUSIVE],
            "unmeasured_checks": [c["metric"] for c in checks if c["status"] == UNMEASURED],
            "checks": checks}
