"""The statistics behind every verdict: effects with 95% intervals, and a three-valued verdict.

    REPRODUCED       the interval of the effect excludes "no effect", in the claimed direction
    NOT REPRODUCED   the interval excludes the claimed effect (or lies on the other side of 0)
    INCONCLUSIVE     the interval contains both "no effect" and the claimed effect

A tie is not a pass: "A >= B" is tested as "A - B > 0". Intervals are percentile bootstraps
(Efron & Tibshirani 1993) over paired units -- evaluation problems, with each problem's
outcome averaged over seeds first -- or over seeds when that is the only unit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "REPRODUCED", "NOT REPRODUCED", "INCONCLUSIVE"
N_BOOT = 10_000


@dataclass
class Effect:
    name: str  # what is compared, e.g. "OREO - RFT greedy accuracy"
    estimate: float
    low: float  # 95% interval
    high: float
    claimed: float = 0.0  # the smallest effect the claim asserts (0: "better", any margin)
    direction: int = 1  # +1: the claim says the effect is > claimed; -1: < -claimed
    unit: str = ""  # what the interval resamples (problems, seeds)

    @property
    def outcome(self) -> str:
        lo, hi = (self.low, self.high) if self.direction > 0 else (-self.high, -self.low)
        if lo > self.claimed:  # the whole interval on the claimed side
            return REPRODUCED
        if hi <= self.claimed:  # no value in the interval satisfies "> claimed"
            return NOT_REPRODUCED
        return INCONCLUSIVE

    def line(self) -> str:
        sign = ">" if self.direction > 0 else "<"
        target = f"{sign} {self.claimed:+.3g}" if self.claimed else f"{sign} 0"
        return (f"{self.name}: {self.estimate:+.4f} [95% CI {self.low:+.4f}, {self.high:+.4f}] "
                f"(claimed {target}; {self.unit}) -> {self.outcome}")


def bootstrap_interval(samples: np.ndarray, statistic=np.mean, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of `statistic` over rows of `samples` resampled with replacement."""
    samples = np.asarray(samples, dtype=float)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(samples), size=(n_boot, len(samples)))
    stats = np.array([statistic(samples[i]) for i in index]) if statistic is not np.mean else samples[index].mean(1)
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def paired_effect(name: str, a: np.ndarray, b: np.ndarray, claimed: float = 0.0, direction: int = 1,
                  seed: int = 0) -> Effect:
    """mean(a - b) over paired units; `a` and `b` are [units] or [seeds, units] (averaged over
    seeds per unit before resampling units)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have the same shape, got {a.shape} and {b.shape}")
    d = (a - b).mean(0) if a.ndim == 2 else a - b
    low, high = bootstrap_interval(d, seed=seed)
    unit = f"paired bootstrap over {len(d)} problems" + (f", {a.shape[0]} seeds averaged" if a.ndim == 2 else "")
    return Effect(name, float(d.mean()), low, high, claimed, direction, unit)


def seed_effect(name: str, a, b, claimed: float = 0.0) -> Effect:
    """mean over seeds of a - b (b per seed, paired by seed, or one constant) with a 95% bootstrap
    over the seeds: for claims whose only unit is the seed (one number per run)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    low, high = bootstrap_interval(d)
    paired = "paired by seed, " if np.ndim(b) else ""
    return Effect(name, float(d.mean()), low, high, claimed, 1, f"{paired}bootstrap over {len(d)} seeds")


def correlation_effect(name: str, x: np.ndarray, y: np.ndarray, claimed: float, seed: int = 0) -> Effect:
    """Pearson r of paired (x, y) with a bootstrap interval over pairs; claim: r > claimed."""
    xy = np.stack([np.asarray(x, float), np.asarray(y, float)], 1)

    def r(rows):
        if rows[:, 0].std() == 0 or rows[:, 1].std() == 0:
            return 0.0
        return float(np.corrcoef(rows[:, 0], rows[:, 1])[0, 1])

    low, high = bootstrap_interval(xy, r, n_boot=2000, seed=seed)
    return Effect(name, r(xy), low, high, claimed, 1, f"bootstrap over {len(xy)} problems")


def combine(outcomes: list[str]) -> str:
    """All parts reproduced -> REPRODUCED; any part refuted -> NOT REPRODUCED; else INCONCLUSIVE."""
    if outcomes and all(o == REPRODUCED for o in outcomes):
        return REPRODUCED
    if any(o == NOT_REPRODUCED for o in outcomes):
        return NOT_REPRODUCED
    return INCONCLUSIVE
