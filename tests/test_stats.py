"""Paired bootstrap on synthetic data: covers a known difference, flags no difference at the stated rate."""

import math

import numpy as np
import pytest

from sft_pipeline.evaluate.stats import (BETTER, HIGHER, LOWER, NO_CHANGE, WORSE, paired_interval, samples_needed,
                                         verdict)

SEEDS = 200
RESAMPLES = 1000
ALPHA = 0.05
# A rate measured on SEEDS independent trials may exceed its nominal value by 3 binomial standard deviations.
SLACK = 3 * math.sqrt(ALPHA * (1 - ALPHA) / SEEDS)


def test_identical_differences_give_that_difference():
    iv = paired_interval([0.1, 0.7, 0.3, 0.9], [0.3, 0.9, 0.5, 1.1], resamples=300, seed=0)
    assert iv.delta == pytest.approx(0.2)
    assert iv.low == pytest.approx(0.2) and iv.high == pytest.approx(0.2)
    assert iv.base_low <= iv.base <= iv.base_high and iv.tuned_low <= iv.tuned <= iv.tuned_high


def test_seeded_and_repeatable():
    rng = np.random.default_rng(3)
    base, tuned = rng.normal(size=50), rng.normal(size=50)
    first = paired_interval(base, tuned, resamples=500, seed=7)
    assert paired_interval(base, tuned, resamples=500, seed=7) == first
    assert paired_interval(base, tuned, resamples=500, seed=8) != first
    assert paired_interval([], [], resamples=500, seed=7) is None


def test_known_mean_difference_is_covered_at_the_stated_rate():
    """Tuned = base + 0.3 + noise: the 95 % interval covers 0.3 in >= 95 % - slack of 200 seeds, and
    excludes 0 (a real change is detected) in all of them."""
    covered = detected = 0
    for seed in range(SEEDS):
        rng = np.random.default_rng(seed)
        base = rng.normal(1.0, 1.0, size=120)
        tuned = base + 0.3 + rng.normal(0, 0.5, size=120)
        iv = paired_interval(base, tuned, resamples=RESAMPLES, seed=seed)
        covered += iv.low <= 0.3 <= iv.high
        detected += iv.low > 0
    assert covered / SEEDS >= 1 - ALPHA - SLACK
    assert detected == SEEDS


def test_no_difference_is_flagged_at_no_more_than_the_stated_rate():
    """Both models pass each prompt with the same probability (independently): an interval that
    excludes 0 is a false alarm; it must happen in about 5 % of seeds, not more."""
    flagged = 0
    for seed in range(SEEDS):
        rng = np.random.default_rng(seed)
        base, tuned = rng.random(150) < 0.4, rng.random(150) < 0.4
        iv = paired_interval(base, tuned, resamples=RESAMPLES, seed=seed)
        flagged += verdict(iv.low, iv.high, HIGHER) != NO_CHANGE
    assert flagged / SEEDS <= ALPHA + SLACK
    assert flagged > 0  # it is a 95 % interval, not a 100 % one


def population(rng, size=100_000):
    """Held-out rows: token counts, per-token NLL of the base, and a tuned model 3 % better on average."""
    tokens = rng.integers(5, 200, size=size).astype(float)
    base_per_token = rng.gamma(4.0, 0.4, size=size)
    tuned_per_token = base_per_token * rng.normal(0.97, 0.05, size=size)
    return tokens, base_per_token * tokens, tuned_per_token * tokens


def test_ratio_metric_covers_the_population_delta():
    """Held-out loss resampled by row as sum(NLL) / sum(tokens): the interval from 100 rows covers the
    whole population's token-weighted delta at the stated rate."""
    tokens, base_nll, tuned_nll = population(np.random.default_rng(0))
    truth = tuned_nll.sum() / tokens.sum() - base_nll.sum() / tokens.sum()
    covered = 0
    for seed in range(SEEDS):
        rows = np.random.default_rng(seed + 1000).choice(len(tokens), size=100, replace=False)
        iv = paired_interval(base_nll[rows], tuned_nll[rows], tokens[rows], resamples=RESAMPLES, seed=seed)
        covered += iv.low <= truth <= iv.high
    assert covered / SEEDS >= 1 - ALPHA - SLACK


def test_pairing_removes_item_difficulty():
    """Items differ a lot in difficulty, the models barely differ: the paired interval is far narrower
    than resampling the two sides independently would give, and it detects the small change."""
    rng = np.random.default_rng(5)
    base = rng.normal(0, 3.0, size=80)
    tuned = base - 0.2 + rng.normal(0, 0.1, size=80)
    iv = paired_interval(base, tuned, resamples=2000, seed=0)
    unpaired_half = 1.96 * math.sqrt(base.var(ddof=1) / 80 + tuned.var(ddof=1) / 80)
    assert (iv.high - iv.low) / 2 < unpaired_half / 10
    assert verdict(iv.low, iv.high, LOWER) == BETTER and verdict(iv.low, iv.high, HIGHER) == WORSE


def test_samples_needed_is_enough_to_decide():
    """An inconclusive 40-prompt comparison: with the predicted number of items drawn from the same
    per-item differences (the sample repeated), the half-width falls below the margin; with a
    quarter of them it does not."""
    rng = np.random.default_rng(11)
    base = rng.random(40) < 0.5
    tuned = np.where(rng.random(40) < 0.7, base, rng.random(40) < 0.4)
    iv = paired_interval(base, tuned, resamples=2000, seed=0)
    tolerance = -0.05
    assert iv.low < tolerance < iv.high  # inconclusive
    margin = abs(iv.delta - tolerance)
    needed = samples_needed(iv.n, iv.low, iv.high, margin)
    assert needed > 40

    def half_width(n_items: int) -> float:
        copies = math.ceil(n_items / 40)
        big = paired_interval(np.tile(base, copies), np.tile(tuned, copies), resamples=2000, seed=1)
        return (big.high - big.low) / 2

    assert half_width(needed) <= margin * 1.05
    assert half_width(needed // 4) > margin
