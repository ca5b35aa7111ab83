"""A composite reward on `env=text` for constrained RLHF (Moskovitz et al. 2024, "Confronting
Reward Model Overoptimization with Constrained RLHF"), in the spirit of its toy experiment.

The paper's composite reward adds component reward models (METEOR, an intent classifier)
that each track human ratings only up to a point. Here two named components score a
review by its words:

    praise = share of words from the praise lexicon (positive adjectives and verbs)
    detail = share of words from the detail lexicon (the aspects a review talks about:
             food, room, battery, plot, ...), plus the first `overlap` share of the praise
             lexicon (descriptive praise such as "delicious", "comfortable")

`overlap` is the task setting that controls how correlated the two components are: at 0
they share no word, at 1 every praise word also counts as detail.

The evaluation score (the stand-in for human ratings) rewards each component up to a
hidden sweet spot and penalizes it beyond, and wants the review to stay fluent:

    eval = sum_i [min(r_i, s_i) - 1.5 * max(0, r_i - s_i)] + quality_weight * quality

with `quality` the text task's fluency x repetition x length term (envs.text.gold). So
each component is a useful proxy only up to its *proxy point*; the constrained runs must
find those points from training logs (rlhf.proxy_points), never read the sweet spots.
The sweet spots default above what the SFT policy writes (praise ~0.07, detail ~0.18 on
the corpus) and below what fluent reviews can reach (0.25 each).
"""
from __future__ import annotations

from dataclasses import dataclass

from envs.text import corpus
from envs.text.gold import gold_components

COMPONENTS = ("praise", "detail")
OVERSHOOT_PENALTY = 1.5  # eval loses 1.5 per unit a component runs past its sweet spot
# Praise words that also describe: counted as detail first as `overlap` grows.
_DESCRIPTIVE_FIRST = ("delicious", "comfortable", "clean", "fresh", "friendly", "pleasant", "perfect", "lovely")


def praise_lexicon() -> tuple[str, ...]:
    words = list(corpus.ADJECTIVES["pos"]) + list(corpus.VERBS["pos"])
    ordered = [w for w in _DESCRIPTIVE_FIRST if w in words] + [w for w in words if w not in _DESCRIPTIVE_FIRST]
    return tuple(ordered)


def detail_lexicon(overlap: float) -> frozenset[str]:
    if not 0.0 <= overlap <= 1.0:
        raise ValueError(f"reward.overlap={overlap} must lie in [0, 1]")
    aspects = {aspect.split()[-1] for topic in corpus.TOPICS.values() for aspect in topic["aspects"]}
    praise = praise_lexicon()
    return frozenset(aspects | set(praise[:round(overlap * len(praise))]))


@dataclass(frozen=True)
class CompositeScorer:
    """Scores responses by the named components and the hidden evaluation score."""

    overlap: float = 0.25
    sweet_spots: tuple[float, ...] = (0.15, 0.22)
    quality_weight: float = 0.3

    def __post_init__(self):
        if len(self.sweet_spots) != len(COMPONENTS):
            raise ValueError(f"reward.eval_sweet_spots needs one value per component {list(COMPONENTS)}, "
                             f"got {list(self.sweet_spots)}")
        object.__setattr__(self, "_lexicons", (frozenset(praise_lexicon()), detail_lexicon(self.overlap)))

    @classmethod
    def from_config(cls, reward_cfg) -> "CompositeScorer":
        return cls(float(reward_cfg.overlap), tuple(float(s) for s in reward_cfg.eval_sweet_spots),
                   float(reward_cfg.eval_quality_weight))

    def components(self, response: str) -> dict[str, float]:
        """{praise, detail}: shares of the response's words in each lexicon (0 for no words)."""
        words = corpus.words(response)
        return {name: (sum(w in lexicon for w in words) / len(words) if words else 0.0)
                for name, lexicon in zip(COMPONENTS, self._lexicons)}

    def evaluation(self, components: dict[str, float], quality: float) -> float:
        score = self.quality_weight * quality
        for name, spot in zip(COMPONENTS, self.sweet_spots):
            r = components[name]
            score += min(r, spot) - OVERSHOOT_PENALTY * max(0.0, r - spot)
        return score

    def score(self, response: str) -> dict[str, float]:
        """The components, the text's quality and the evaluation score, by name."""
        parts = self.components(response)
        quality = gold_components(response)["quality"]
        return {**parts, "quality": quality, "eval": self.evaluation(parts, quality)}
