"""`env=text`: continue a review opening; scored by reward models, judged by a gold scorer.

Single turn: reset(seed) shows an opening ("review: we stayed at the inn last week."),
the policy continues with the review, step() returns the gold components as the
reward dict. What an algorithm *optimizes* is chosen by the `reward` config group (a proxy
reward model by default); the gold score is always logged next to it.
"""
from __future__ import annotations

import random
from typing import Any

from envs.base import TextEnv, register
from envs.text import corpus
from envs.text.gold import COMPONENTS, gold_components

SPLITS = ("train", "eval")


@register("text")
class ReviewEnv(TextEnv):
    max_turns = 1

    def __init__(self, split: str = "train", eval_fraction: float = 0.25, **_: Any):
        if split not in SPLITS:
            raise ValueError(f"env split '{split}' unknown; valid choices: {', '.join(SPLITS)}")
        prompts = corpus.all_prompts()
        random.Random(0).shuffle(prompts)
        n_eval = max(1, round(len(prompts) * eval_fraction))
        self.split = split
        self.eval_fraction = eval_fraction
        self.prompts = prompts[:n_eval] if split == "eval" else prompts[n_eval:]
        self._prompt: str | None = None

    def reset(self, seed: int) -> str:
        self._prompt = self.prompts[random.Random(seed).randrange(len(self.prompts))]
        return self._prompt

    def step(self, action_text: str):
        if self._prompt is None:
            raise RuntimeError("step() called before reset()")
        reward = gold_components(action_text)
        return None, reward, True, {"prompt": self._prompt}

    def demonstrations(self, n: int, seed: int) -> list[tuple[str, str]]:
        return corpus.demonstrations(self.prompts, n, seed)

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "split": self.split, "eval_fraction": self.eval_fraction,
                "components": list(COMPONENTS)}
