"""`env=text`: continue a review opening; scored by reward models, judged by a gold scorer.

Single turn: reset(seed) shows an opening ("review: we stayed at the inn last week."),
the policy continues with the review, step() returns the gold components as the
reward dict.

Split: a fixed shuffle of the 576 openings holds out `eval_fraction` as test prompts and,
when `valid_fraction` > 0, the next `valid_fraction` as validation prompts, which then leave
the train split too; the test prompts do not depend on `valid_fraction`. The eval split
draws from the test prompts, or from the validation prompts with `eval_on=valid` (to choose
a setting without reading the test prompts). What an algorithm *optimizes* is chosen by the `reward` config group (a proxy
reward model by default); the gold score is always logged next to it.
"""
from __future__ import annotations

import random
from typing import Any

from envs.base import EnvConfigError, TextEnv, register
from envs.text import corpus
from envs.text.gold import COMPONENTS, gold_components

SPLITS = ("train", "eval")
EVAL_ON = ("test", "valid")


@register("text")
class ReviewEnv(TextEnv):
    max_turns = 1

    def __init__(self, split: str = "train", eval_fraction: float = 0.25, valid_fraction: float = 0.0,
                 eval_on: str = "test", reviews: str = "mixed", **_: Any):
        if reviews not in corpus.REVIEW_STYLES:
            raise EnvConfigError(f"env.reviews={reviews!r} unknown; valid choices: {', '.join(corpus.REVIEW_STYLES)}")
        if split not in SPLITS:
            raise EnvConfigError(f"env split '{split}' unknown; valid choices: {', '.join(SPLITS)}")
        if eval_on not in EVAL_ON:
            raise EnvConfigError(f"env.eval_on={eval_on!r} unknown; valid choices: {', '.join(EVAL_ON)}")
        if not (0.0 <= float(valid_fraction) and float(valid_fraction) + float(eval_fraction) < 1.0):
            raise EnvConfigError(f"env.valid_fraction={valid_fraction} with env.eval_fraction={eval_fraction} "
                                 "must leave train prompts (valid_fraction >= 0, their sum < 1)")
        if eval_on == "valid" and float(valid_fraction) == 0.0:
            raise EnvConfigError("env.eval_on=valid needs validation prompts: set env.valid_fraction > 0 (e.g. 0.1)")
        prompts = corpus.all_prompts()
        random.Random(0).shuffle(prompts)
        n_eval = max(1, round(len(prompts) * eval_fraction))
        n_valid = round(len(prompts) * float(valid_fraction))
        self.split, self.eval_on, self.reviews = split, eval_on, reviews
        self.eval_fraction, self.valid_fraction = eval_fraction, float(valid_fraction)
        test, valid, train = prompts[:n_eval], prompts[n_eval:n_eval + n_valid], prompts[n_eval + n_valid:]
        self.prompts = (valid if eval_on == "valid" else test) if split == "eval" else train
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
        return corpus.demonstrations(self.prompts, n, seed, self.reviews)

    def corpus(self, n: int, seed: int) -> list[str]:
        """The tokenizer learns every review style's words, whichever style the SFT policy imitates."""
        return [p + r for p, r in corpus.demonstrations(self.prompts, n, seed)]

    def fingerprint(self) -> dict[str, Any]:
        extra = {"valid_fraction": self.valid_fraction} if self.valid_fraction else {}  # old cache keys kept
        if self.reviews != "mixed":
            extra["reviews"] = self.reviews
        return {"name": self.name, "split": self.split, "eval_fraction": self.eval_fraction,
                "components": list(COMPONENTS), **extra}
