"""The three-valued verdict (rlhf.reproduce.stats): intervals decide, a tie is not a pass."""
import numpy as np

from rlhf.reproduce.stats import (INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Effect, bootstrap_interval, combine,
                                  correlation_effect, paired_effect)


def test_outcome_from_the_interval():
    assert Effect("x", 0.1, 0.02, 0.2).outcome == REPRODUCED
    assert Effect("x", 0.0, -0.05, 0.05).outcome == INCONCLUSIVE
    assert Effect("x", -0.1, -0.2, -0.01).outcome == NOT_REPRODUCED
    assert Effect("tie", 0.0, 0.0, 0.0).outcome == NOT_REPRODUCED  # a certain tie excludes "better"
    assert Effect("r", 0.5, 0.35, 0.6, claimed=0.3).outcome == REPRODUCED
    assert Effect("r", 0.3, 0.1, 0.5, claimed=0.3).outcome == INCONCLUSIVE
    assert Effect("r", 0.1, 0.0, 0.25, claimed=0.3).outcome == NOT_REPRODUCED
    assert Effect("smaller", -0.1, -0.2, -0.05, direction=-1).outcome == REPRODUCED
    # a tolerance ("no worse than 2 points below"): an interval below 0 but reaching above -0.02
    # contains values that satisfy the claim, so it is undecided, not a failure
    assert Effect("tol", -0.014, -0.021, -0.007, claimed=-0.02).outcome == INCONCLUSIVE
    assert Effect("tol", -0.01, -0.015, 0.02, claimed=-0.02).outcome == REPRODUCED
    assert Effect("tol", -0.05, -0.08, -0.03, claimed=-0.02).outcome == NOT_REPRODUCED
    assert Effect("edge", 0.02, -0.01, 0.05, claimed=0.05).outcome == NOT_REPRODUCED  # "> 0.05" excluded


def test_paired_bootstrap_uses_pairs_and_averages_seeds():
    rng = np.random.default_rng(0)
    base = rng.random(200)
    a, b = base + 0.05, base  # a constant paired gain: tiny interval despite large spread
    e = paired_effect("gain", a, b)
    assert abs(e.estimate - 0.05) < 1e-12
    assert e.high - e.low < 1e-9 and e.outcome == REPRODUCED
    two_seeds = paired_effect("gain", np.stack([a, a + 0.1]), np.stack([b, b]))
    assert abs(two_seeds.estimate - 0.1) < 1e-9 and "2 seeds averaged" in two_seeds.unit
    low, high = bootstrap_interval(rng.normal(0, 1, 400))
    assert low < 0 < high and 0.15 < high - low < 0.25  # ~ 2 * 1.96 / sqrt(400)


def test_correlation_and_combination():
    x = np.linspace(0, 1, 100)
    assert correlation_effect("r", x, x + 0.01 * np.sin(40 * x), 0.3).outcome == REPRODUCED
    assert combine([REPRODUCED, REPRODUCED]) == REPRODUCED
    assert combine([REPRODUCED, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine([INCONCLUSIVE, NOT_REPRODUCED]) == NOT_REPRODUCED
