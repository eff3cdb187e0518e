"""Regression gate: the tuned model is promoted only when no enabled check fails.

Each rule compares ``tuned - base`` for one metric with a limit from
:class:`~sft_pipeline.config.GateConfig`; a limit of ``None`` disables the rule, and a
metric that could not be measured (e.g. no held-out rows) is *skipped*, not failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from sft_pipeline.config import GateConfig

MAX_INCREASE = "max_increase"  # passes when delta <= limit
MIN_DELTA = "min_delta"  # passes when delta >= limit
PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


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


def check(rule: Rule, base: float | None, tuned: float | None, limit: float) -> dict:
    """One check's record.

    >>> r = Rule("max_heldout_loss_increase", "heldout_loss", MAX_INCREASE)
    >>> check(r, 2.0, 2.3, 0.1)["status"], check(r, 2.0, 1.9, 0.0)["status"]
    ('failed', 'passed')
    >>> check(Rule("x", "stop_rate", MIN_DELTA), 0.5, None, -0.1)["status"]
    'skipped'
    """
    op = "<=" if rule.kind == MAX_INCREASE else ">="
    record = {"metric": rule.metric, "setting": rule.setting, "base": base, "tuned": tuned,
              "limit": limit, "condition": f"tuned - base {op} {limit:g}", "delta": None}
    if base is None or tuned is None:
        return {**record, "status": SKIPPED}
    delta = tuned - base
    ok = delta <= limit if rule.kind == MAX_INCREASE else delta >= limit
    return {**record, "delta": delta, "status": PASSED if ok else FAILED}


def run_gate(base: Mapping[str, float | None], tuned: Mapping[str, float | None],
             gate: GateConfig) -> dict:
    """All enabled checks, the verdict and the names of the metrics that failed."""
    checks = [
        check(rule, base.get(rule.metric), tuned.get(rule.metric), getattr(gate, rule.setting))
        for rule in RULES
        if getattr(gate, rule.setting) is not None
    ]
    failed = [c["metric"] for c in checks if c["status"] == FAILED]
    return {"promoted": not failed, "failed_checks": failed, "checks": checks}
