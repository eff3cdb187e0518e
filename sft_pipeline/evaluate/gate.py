"""Regression gate on the paired 95 % intervals of ``tuned - base``.

Each rule compares one metric's delta with a tolerance from
:class:`~sft_pipeline.config.GateConfig` (``None`` disables it; the primary metric is
always checked, at tolerance 0 when its own rule is disabled). A check is

- *failed* when the whole interval lies on the bad side of the tolerance (significantly worse),
- *passed* when the whole interval lies on the good side,
- *inconclusive* when the interval straddles the tolerance: the data cannot tell; the check
  records how many items would make the interval narrow enough to decide,
- *skipped* when the metric could not be measured (e.g. no held-out rows).

Verdict: ``not_promoted`` if any check failed, else ``inconclusive`` if any check was
inconclusive (an inconclusive gate does **not** promote), else ``promoted``. A metric
without an interval (no per-item data) is judged on its point delta.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from sft_pipeline.config import GateConfig
from sft_pipeline.evaluate.stats import samples_needed

MAX_INCREASE = "max_increase"  # passes when delta <= limit
MIN_DELTA = "min_delta"  # passes when delta >= limit
PASSED, FAILED, INCONCLUSIVE, SKIPPED = "passed", "failed", "inconclusive", "skipped"
PROMOTED, NOT_PROMOTED = "promoted", "not_promoted"
VERDICTS = (PROMOTED, NOT_PROMOTED, INCONCLUSIVE)


@dataclass(frozen=True)
class Rule:
    setting: str  # GateConfig field holding the limit
    metric: str
    kind: str


RULES = (
    Rule("max_heldout_loss_increase", "heldout_loss", MAX_INCREASE),
    Rule("min_ifeval_delta", "ifeval_inst_loose", MIN_DELTA),
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
    'skipped'
    """
    op = "<=" if rule.kind == MAX_INCREASE else ">="
    record = {"metric": rule.metric, "setting": rule.setting, "base": base, "tuned": tuned, "limit": limit,
              "condition": f"tuned - base {op} {limit:g}", "delta": None, "low": None, "high": None,
              "n": None, "needed_n": None}
    if base is None or tuned is None:
        return {**record, "status": SKIPPED}
    delta = tuned - base
    interval = interval if interval and interval.get("low") is not None else None
    low, high = (interval["low"], interval["high"]) if interval else (delta, delta)
    result = status(rule.kind, low, high, limit)
    n = interval.get("n") if interval else None
    needed = samples_needed(n, low, high, abs(delta - limit)) if result == INCONCLUSIVE and n else None
    return {**record, "delta": delta, "low": low, "high": high, "n": n, "needed_n": needed, "status": result}


def _limit(rule: Rule, gate: GateConfig) -> float | None:
    limit = getattr(gate, rule.setting)
    return 0.0 if limit is None and rule.metric == gate.primary_metric else limit


def decide(checks: list[dict]) -> str:
    """The gate's verdict from its checks' statuses.

    >>> decide([{"status": "passed"}, {"status": "inconclusive"}]), decide([{"status": "skipped"}])
    ('inconclusive', 'promoted')
    >>> decide([{"status": "inconclusive"}, {"status": "failed"}])
    'not_promoted'
    """
    found = {c["status"] for c in checks}
    return NOT_PROMOTED if FAILED in found else INCONCLUSIVE if INCONCLUSIVE in found else PROMOTED


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
            "checks": checks}
