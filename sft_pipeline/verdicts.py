"""The names the evaluation writes and everything downstream reads (report, sweep, flows): no torch, no numpy.

* a metric's verdict, from the paired 95 % interval of ``tuned - base``: better, worse, or no significant change;
* a gate check's status: passed, failed, inconclusive (the interval straddles the tolerance), or unmeasured;
* the gate's verdict: promoted, not promoted, or inconclusive (which does not promote either).
"""

BETTER, WORSE, NO_CHANGE = "better", "worse", "no significant change"
HIGHER, LOWER, NEUTRAL = 1, -1, 0  # which direction of a metric is good

PASSED, FAILED, INCONCLUSIVE, UNMEASURED = "passed", "failed", "inconclusive", "unmeasured"
PROMOTED, NOT_PROMOTED = "promoted", "not_promoted"
VERDICTS = (PROMOTED, NOT_PROMOTED, INCONCLUSIVE)

TOLERANCE_MEANING = ("A tolerance is a non-inferiority margin: a check passes when the whole 95 % interval of "
                     "tuned - base lies on the good side of it (the tuned model is shown to be not worse than "
                     "the base by more than the margin), fails when the whole interval lies beyond it, and is "
                     "inconclusive when the interval straddles it; an inconclusive or unmeasured check does not "
                     "promote.")
