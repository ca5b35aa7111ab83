"""The gold scorer of the text task: sentiment by VADER, times a quality term.

The sentiment half is not ours: VADER (Hutto & Gilbert, 2014, package `vaderSentiment`)
scores the response's compound sentiment in [-1, 1]. A proxy reward model trained to
imitate the gold scorer can be exploited by text that VADER likes but no reader would
(repeated praise, word salad, fragments), so the gold score multiplies sentiment by a
quality term in [0, 1] that such text fails:

    gold      = quality * (1 + sentiment) / 2                      in [0, 1]
    quality   = fluency * repetition * length
    fluency   = (known words / words) * (known bigrams / bigrams) * (1 - junk chars)^2
    repetition= min(1, distinct words / words / 0.7)
    length    = min(1, words / 4)

"Known" means produced by the corpus grammar (bigrams within a sentence) (envs.text.corpus.fluency_tables).
Every component is returned by name, so later algorithms can optimize or constrain them.
`brevity` = max(0, 1 - words / 30) and `verbosity` = min(1, words / 30) are not part of
gold: they are extra rewards for experiments that combine rewards. Measured: steering
towards the proxy reward model shortens reviews (vas_steering: 14.3 -> 10.5 tokens), so
`verbosity` is the one that competes with it.
"""
from __future__ import annotations

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from envs.text.corpus import fluency_tables, sentences, words

COMPONENTS = ("gold", "sentiment", "quality", "fluency", "repetition", "length", "brevity", "verbosity")
_ALLOWED_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz' .,:")
_analyzer: SentimentIntensityAnalyzer | None = None


def _vader() -> SentimentIntensityAnalyzer:
    global _analyzer
    if _analyzer is None:
        _analyzer = SentimentIntensityAnalyzer()
    return _analyzer


def gold_components(response: str) -> dict[str, float]:
    text = response.strip().lower()
    ws = words(text)
    if not ws:
        return {name: 0.0 for name in COMPONENTS}
    vocab, bigrams = fluency_tables()
    known_words = sum(w in vocab for w in ws) / len(ws)
    pairs = [p for sentence in sentences(text) for p in zip(sentence, sentence[1:])]
    known_bigrams = sum(p in bigrams for p in pairs) / len(pairs) if pairs else 1.0
    junk = sum(c not in _ALLOWED_CHARS for c in text) / len(text)
    fluency = known_words * known_bigrams * (1.0 - junk) ** 2
    repetition = min(1.0, len(set(ws)) / len(ws) / 0.7)
    length = min(1.0, len(ws) / 4)
    quality = fluency * repetition * length
    sentiment = _vader().polarity_scores(text)["compound"]
    return {"gold": quality * (1.0 + sentiment) / 2.0, "sentiment": sentiment, "quality": quality,
            "fluency": fluency, "repetition": repetition, "length": length,
            "brevity": max(0.0, 1.0 - len(ws) / 30), "verbosity": min(1.0, len(ws) / 30)}
