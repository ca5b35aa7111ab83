"""How a solution splits into reasoning steps: one strategy object shared by OREO's
step-level loss and value-guided step search (Wang et al. 2024, "Offline Reinforcement
Learning for LLM Multi-Step Reasoning", section 3) and MCTS-DPO's tree over steps (Xie et al.
2024, "Monte Carlo Tree Search Boosts Reasoning via Iterative Preference Learning").

A step is the text up to and including the next delimiter; the last step is whatever follows
the last delimiter (it ends with the end-of-sequence token). Three strategies:

    StepSplitter.delimiter(";")     # the built-in chain task: "3+5=8; 8+7=5; ans 5"
    StepSplitter.newline()          # GSM8K-style solutions, one step per line
    StepSplitter.regex(r"\\n|\\. ")   # any pattern (MATH-style: line breaks and sentence ends)
"""
from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("delimiter", "newline", "regex")


@dataclass(frozen=True)
class StepSplitter:
    kind: str
    pattern: str  # the delimiter string (kind delimiter/newline) or a regular expression

    @classmethod
    def delimiter(cls, text: str) -> "StepSplitter":
        if not text:
            raise ValueError("a step delimiter must be a non-empty string")
        return cls("delimiter", text)

    @classmethod
    def newline(cls) -> "StepSplitter":
        return cls("newline", "\n")

    @classmethod
    def regex(cls, pattern: str) -> "StepSplitter":
        compiled = re.compile(pattern)
        if compiled.match(""):
            raise ValueError(f"step regex {pattern!r} matches the empty string; it must match a delimiter")
        return cls("regex", pattern)

    @classmethod
    def from_settings(cls, kind: str, pattern: str | None) -> "StepSplitter":
        if kind not in KINDS:
            raise ValueError(f"step kind '{kind}' unknown; valid choices: {', '.join(KINDS)}")
        if kind == "newline":
            return cls.newline()
        if pattern is None:
            raise ValueError(f"step kind '{kind}' needs a pattern")
        return cls.delimiter(pattern) if kind == "delimiter" else cls.regex(pattern)

    def _ends(self, text: str) -> list[int]:
        """Character offsets just past each delimiter in `text`."""
        if self.kind == "regex":
            return [m.end() for m in re.finditer(self.pattern, text) if m.end() > m.start()]
        ends, start = [], 0
        while (i := text.find(self.pattern, start)) >= 0:
            ends.append(i + len(self.pattern))
            start = i + len(self.pattern)
        return ends

    def split(self, text: str) -> list[str]:
        """The steps of a solution, each keeping its delimiter; "".join(steps) == text."""
        steps, start = [], 0
        for end in self._ends(text):
            steps.append(text[start:end])
            start = end
        if start < len(text):
            steps.append(text[start:])
        return steps

    def count(self, text: str) -> int:
        """Delimiters in `text` (the number of completed, non-final steps)."""
        return len(self._ends(text))

    def step_starts(self, token_texts: list[str]) -> list[int]:
        """1 for each token that starts a step, given the decoded text of each response token
        in order: the first token, and every token after one that completed a delimiter."""
        starts, text, done = [], "", 0
        for i, piece in enumerate(token_texts):
            starts.append(1 if i == 0 or self.count(text) > done else 0)
            done = self.count(text)
            text += piece
        return starts

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """What generation stops at to produce one step (a regex has no fixed string: the
        search then generates token by token up to the pattern, see rlhf.search)."""
        return (self.pattern,) if self.kind != "regex" else ()
