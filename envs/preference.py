"""Preference oracles for the text task: P(y > y' | x), the judge of DNO (Rosset et al. 2024)
and of win-rate evaluation; `reward.labels=<oracle>` also labels reward-model pairs with it.

    gold          P = sig(s * (gold(y) - gold(y')))                       transitive
    intransitive  P = sig(s * (gold(y) - gold(y')) + c * RPS(len(y), len(y')))

`gold` is the text env's gold score (envs/text/gold.py). A Bradley-Terry reward model
can represent the first oracle exactly (r = s * gold), but not the second: its length term
is a rock-paper-scissors cycle over three length classes of a review,

    brief (< 9 words)  <  standard (9-13)  <  long (>= 14)  <  brief

(each class beats the one before it, and brief beats long: the reader who finds long
reviews tiring), so no scalar score orders the classes consistently. The class bounds are
the terciles of the SFT policy's reviews (measured: 25% / 43% / 31% of 1,728 samples, with
equal mean gold 0.49 / 0.51 / 0.49), so every class is reachable from the start.

The oracle is exact (it returns probabilities, never samples), so win rates computed with
it have no label noise; `sample_label` draws a Bernoulli label like a human rater would.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from envs.text.corpus import words
from envs.text.gold import gold_components

ORACLES = ("gold", "intransitive")
LENGTH_CLASSES = ("brief", "standard", "long")
CLASS_BOUNDS = (9, 14)  # word counts where standard and long begin


def length_class(text: str) -> int:
    n = len(words(text))
    return 0 if n < CLASS_BOUNDS[0] else 1 if n < CLASS_BOUNDS[1] else 2


def cycle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rock-paper-scissors: +1 where class a beats class b ((a - b) mod 3 == 1), -1 for the
    reverse, 0 for equal classes."""
    d = (np.asarray(a) - np.asarray(b)) % 3
    return np.where(d == 1, 1.0, np.where(d == 2, -1.0, 0.0))


@dataclass(frozen=True)
class Features:
    gold: float
    length_class: int


@dataclass
class PreferenceOracle:
    kind: str = "intransitive"
    gold_scale: float = 8.0  # s: how sharply a gold difference decides (0.1 gold apart -> P = 0.69)
    cycle_weight: float = 1.5  # c: weight of the length cycle (intransitive only; sig(1.5) = 0.82)

    def __post_init__(self):
        if self.kind not in ORACLES:
            raise ValueError(f"preference oracle {self.kind!r} is not valid; valid choices: {', '.join(ORACLES)}")

    @staticmethod
    def features(text: str) -> Features:
        return Features(gold_components(text)["gold"], length_class(text))

    def logits(self, a: list[Features], b: list[Features]) -> np.ndarray:
        """Pairwise logit of P(a_i > b_j): [len(a), len(b)]."""
        ga, gb = np.array([f.gold for f in a]), np.array([f.gold for f in b])
        out = self.gold_scale * (ga[:, None] - gb[None, :])
        if self.kind == "intransitive":
            ca, cb = np.array([f.length_class for f in a]), np.array([f.length_class for f in b])
            out = out + self.cycle_weight * cycle(ca[:, None], cb[None, :])
        return out

    def prob(self, a: list[Features], b: list[Features]) -> np.ndarray:
        """P(a_i > b_j) for every i, j; P(a > b) + P(b > a) = 1 and P(a > a) = 1/2."""
        return 1.0 / (1.0 + np.exp(-self.logits(a, b)))

    def sample_label(self, a: Features, b: Features, rng: random.Random) -> bool:
        """A rater's noisy judgement: True when a is preferred, with probability P(a > b)."""
        return rng.random() < float(self.prob([a], [b])[0, 0])


def oracle_from_config(cfg_node) -> PreferenceOracle:
    """From a config node with keys oracle, oracle_gold_scale, oracle_cycle_weight."""
    return PreferenceOracle(str(cfg_node.oracle), float(cfg_node.oracle_gold_scale), float(cfg_node.oracle_cycle_weight))
