"""A scripted teacher for the text task, and a defect detector for its students.

DNO-Prct (Rosset et al. 2024, Algorithm 2) adds a stronger model's output (GPT-4) as an
extra candidate for every prompt. Here the teacher is the review grammar itself: the best,
by the gold scorer, of `draws` reviews it writes for the prompt's topic. The annotator of
the same paper scores degenerate outputs lowest; `degenerate` flags a repeated word n-gram.
"""
from __future__ import annotations

import random

from envs.text import corpus
from envs.text.gold import gold_components


def teacher_response(prompt: str, rng: random.Random, draws: int = 8) -> str:
    """The best-by-gold of `draws` reviews the grammar writes for the prompt's topic (with the
    space that follows the prompt, as a sampled continuation has)."""
    options = [" " + corpus.review(rng, corpus.topic_of(prompt)) for _ in range(draws)]
    return max(options, key=lambda text: gold_components(text)["gold"])


def degenerate(text: str, n: int = 3) -> bool:
    """True when a word n-gram repeats."""
    ws = corpus.words(text)
    grams = [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]
    return len(grams) != len(set(grams))
