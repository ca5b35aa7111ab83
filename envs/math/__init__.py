"""`env=math`: problems solved in steps, scored by a verifier (1 correct / 0 otherwise).

Two task sources (`env.tasks`):

* `chain` (default): generated multi-step modular arithmetic, the toy task of MCTS-DPO
  (Xie et al. 2024, "Monte Carlo Tree Search Boosts Reasoning via Iterative Preference
  Learning") and OREO (Wang et al. 2024). A problem is `numbers` operands joined by operators,
  e.g. "3+5+7+2 =", evaluated left to right modulo 10^digits; the reference solution does one
  operation per step:

      prompt    "3+5+7+2 ="
      solution  " 3+5=8; 8+7=5; 5+2=7; ans 7"   (steps end at ';', the answer follows "ans")

  Difficulty grows with `numbers`, `digits` and `ops`. SFT demonstrations are imperfect, so
  that RL has room to improve on SFT: `corruption` is the share with one random wrong
  intermediate result, which propagates to a wrong answer; and the teacher has systematic
  `misconceptions` -- a fixed share of operand pairs with a fixed wrong result, written with
  probability `misconception_rate`. Random corruption alone leaves greedy decoding of a
  well-trained SFT model at 100% (measured: the mode of each step is still right), while a
  misconception written more often than not becomes the SFT model's greedy answer: its greedy
  accuracy starts near (1 - misconceptions)^steps, and sampling still finds the right steps.
* a path to a GSM8K-format JSONL file: rows {"question": ..., "answer": ...} whose answer
  is the worked solution, one step per line, ending with a line "#### <number>". A bad row
  stops with `file:line: reason` before any work.

Splits: held-out problems never appear in training. For `chain` a problem belongs to the
eval split when a hash of its text falls in the eval share; for a file, a seeded shuffle
holds out `eval_fraction` of the rows. The eval split is a fixed list of problems and
`reset(seed)` on it takes problem `seed mod len`, so eval seeds 0..n-1 score n distinct
problems; on the train split a seed draws a problem at random.

The reward dict of a step: {"accuracy": 1.0 or 0.0, "gold": same}; optimize it with
`reward=verifier`. Steps are delimited by `envs.math.steps.StepSplitter` (the env's
`splitter`), shared by OREO's step-level loss, value-guided step search and MCTS-DPO.
"""
from __future__ import annotations

import json
import random
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.base import EnvConfigError, TextEnv, register
from envs.math.steps import StepSplitter

SPLITS = ("train", "eval")
OPS = "+-*"
ANSWER = "ans"
GSM_ANSWER = "####"


@dataclass(frozen=True)
class Problem:
    prompt: str
    answer: str  # the verifier compares the extracted final answer with this, as text
    solution: str  # the reference step-by-step solution (starts with the space after the prompt)


# --- the chain task ---------------------------------------------------------------------------

def chain_problem(rng: random.Random, numbers: int, digits: int, ops: str) -> tuple[list[int], list[str]]:
    top = 10 ** digits
    return [rng.randrange(top) for _ in range(numbers)], [rng.choice(ops) for _ in range(numbers - 1)]


def apply(op: str, a: int, b: int, modulus: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op] % modulus


def misconception(a: int, op: str, b: int, modulus: int, share: float) -> int | None:
    """The teacher's systematic wrong result for `a op b`, or None: a fixed `share` of operand
    pairs (chosen by a hash) has one (a different wrong value per pair)."""
    h = zlib.crc32(f"{a}{op}{b}".encode())
    if h % 1000 >= share * 1000:
        return None
    return (apply(op, a, b, modulus) + 1 + (h // 1000) % (modulus - 1)) % modulus


def chain_text(values: list[int], ops: list[str], digits: int, corrupt_rng: random.Random | None = None,
               corrupt_at: int | None = None, misconceptions: float = 0.0, misconception_rate: float = 0.0) -> Problem:
    """The problem and its solution; with `corrupt_at`, that step's result is replaced by a
    random wrong value, and at a step whose operand pair is a teacher's misconception, by that
    misconception with probability `misconception_rate`. Later steps compute from the wrong
    value (the error propagates)."""
    modulus = 10 ** digits
    prompt = "".join(str(v) + op for v, op in zip(values, ops)) + f"{values[-1]} ="
    acc, steps, true_acc = values[0], [], values[0]
    for i, (op, v) in enumerate(zip(ops, values[1:])):
        result = apply(op, acc, v, modulus)
        true_acc = apply(op, true_acc, v, modulus)
        wrong = misconception(acc, op, v, modulus, misconceptions) if misconceptions else None
        if wrong is not None and corrupt_rng.random() < misconception_rate:
            result = wrong
        elif i == corrupt_at:
            result = (result + corrupt_rng.randrange(1, modulus)) % modulus
        steps.append(f" {acc}{op}{v}={result};")
        acc = result
    solution = "".join(steps) + f" {ANSWER} {acc}"
    return Problem(prompt, str(true_acc), solution)


def final_answer(text: str, marker: str) -> str | None:
    """The answer after the last `marker` ("ans" / "####"), normalized; None if there is none."""
    i = text.rfind(marker)
    if i < 0:
        return None
    match = re.match(r"\s*(-?[\d,]*\.?\d+)", text[i + len(marker):])
    if not match:
        return None
    number = match.group(1).replace(",", "")
    if "." in number:
        number = number.rstrip("0").rstrip(".") or "0"
    return number


# --- GSM8K-format files ------------------------------------------------------------------------

def read_gsm8k(path: str | Path) -> list[Problem]:
    """Rows {"question", "answer"} with the final answer on a "#### n" line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise EnvConfigError(f"env.tasks={path}: no such file; give `chain` or a GSM8K-format JSONL file")
    problems = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise EnvConfigError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise EnvConfigError(f"{path}:{line_no}: a row must be a JSON object with 'question' and 'answer'")
        for key in ("question", "answer"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise EnvConfigError(f"{path}:{line_no}: '{key}' is missing or not a non-empty string")
        answer = final_answer(row["answer"], GSM_ANSWER)
        if answer is None:
            raise EnvConfigError(f"{path}:{line_no}: the answer has no final '#### <number>' line")
        problems.append(Problem(row["question"].strip() + "\n", answer, row["answer"].strip()))
    if not problems:
        raise EnvConfigError(f"{path}: no rows")
    return problems


# --- the environment ------------------------------------------------------------------------------

@register("math")
class MathEnv(TextEnv):
    max_turns = 1
    eval_temperature = 0.0  # held-out accuracy is greedy accuracy, as in the papers
    has_steps = True

    def __init__(self, split: str = "train", tasks: str = "chain", numbers: int = 4, digits: int = 1,
                 ops: str = "+", corruption: float = 0.3, misconceptions: float = 0.0, misconception_rate: float = 0.0,
                 eval_problems: int = 256, eval_seed: int = 0, eval_fraction: float = 0.2,
                 steps: str = "auto", step_pattern: str | None = None, **_: Any):
        if split not in SPLITS:
            raise EnvConfigError(f"env split '{split}' unknown; valid choices: {', '.join(SPLITS)}")
        for key, value in (("corruption", corruption), ("misconceptions", misconceptions),
                           ("misconception_rate", misconception_rate)):
            if not 0.0 <= float(value) <= 1.0:
                raise EnvConfigError(f"env.{key}={value} must lie in [0, 1]")
        self.misconceptions, self.misconception_rate = float(misconceptions), float(misconception_rate)
        self.eval_seed = int(eval_seed)
        if not 0.0 < float(eval_fraction) < 1.0:
            raise EnvConfigError(f"env.eval_fraction={eval_fraction} must lie in (0, 1)")
        self.split, self.tasks = split, str(tasks)
        self.corruption, self.eval_fraction = float(corruption), float(eval_fraction)
        if self.tasks == "chain":
            bad = sorted(set(str(ops)) - set(OPS))
            if not ops or bad:
                raise EnvConfigError(f"env.ops='{ops}' has unknown operators {bad}; valid: any of '{OPS}'")
            if int(numbers) < 2 or int(digits) < 1:
                raise EnvConfigError(f"env.numbers={numbers} must be >= 2 and env.digits={digits} >= 1")
            self.numbers, self.digits, self.ops = int(numbers), int(digits), str(ops)
            self.marker, default_steps = ANSWER, ("delimiter", ";")
            total = (10 ** self.digits) ** self.numbers * len(self.ops) ** (self.numbers - 1)
            if int(eval_problems) > total * self.eval_fraction * 0.9:
                raise EnvConfigError(f"env.eval_problems={eval_problems} is more than the task's held-out share "
                                     f"holds (~{int(total * self.eval_fraction)} problems); raise env.numbers or "
                                     "env.digits")
            self.problems = self._chain_eval_set(int(eval_problems)) if split == "eval" else None
        else:
            rows = read_gsm8k(self.tasks)
            random.Random(0).shuffle(rows)
            n_eval = max(1, round(len(rows) * self.eval_fraction))
            self.problems = rows[:n_eval] if split == "eval" else rows[n_eval:]
            if not self.problems:
                raise EnvConfigError(f"env.tasks={self.tasks}: {len(rows)} rows leave no {split} problems "
                                     f"at env.eval_fraction={eval_fraction}")
            self.marker, default_steps = GSM_ANSWER, ("newline", None)
        kind, pattern = (default_steps if steps == "auto" else (str(steps), step_pattern))
        try:
            self.splitter = StepSplitter.from_settings(kind, pattern)
        except (ValueError, re.error) as e:
            raise EnvConfigError(f"env.steps={steps} env.step_pattern={step_pattern!r}: {e}") from None
        self.steps_setting = (kind, pattern)
        self._problem: Problem | None = None

    # --- problems -------------------------------------------------------------------------------
    def _is_eval(self, prompt: str) -> bool:
        return zlib.crc32(prompt.encode()) % 1000 < self.eval_fraction * 1000

    def _chain_eval_set(self, n: int) -> list[Problem]:
        rng, seen, out = random.Random(f"math-eval-{self.eval_seed}"), set(), []
        while len(out) < n:
            p = chain_text(*chain_problem(rng, self.numbers, self.digits, self.ops), self.digits)
            if self._is_eval(p.prompt) and p.prompt not in seen:
                seen.add(p.prompt)
                out.append(p)
        return out

    def _draw(self, seed: int) -> tuple[list[int], list[str]]:
        """Operands and operators of the train-split chain problem of `seed`."""
        rng = random.Random(seed)
        while True:
            values, ops = chain_problem(rng, self.numbers, self.digits, self.ops)
            if not self._is_eval(chain_text(values, ops, self.digits).prompt):
                return values, ops

    def problem(self, seed: int) -> Problem:
        """The problem `reset(seed)` poses (with a correct reference solution)."""
        if self.problems is None:
            return chain_text(*self._draw(seed), self.digits)
        if self.split == "eval":
            return self.problems[seed % len(self.problems)]
        return self.problems[random.Random(seed).randrange(len(self.problems))]

    def demonstration(self, seed: int) -> tuple[str, str]:
        """A (prompt, solution) pair for SFT; on the chain task, with probability `corruption`
        one intermediate result is wrong and the error propagates to the answer."""
        if self.problems is not None:
            problem = self.problem(seed)
            return problem.prompt, problem.solution
        values, ops = self._draw(seed)
        rng = random.Random(f"corrupt-{seed}")
        at = rng.randrange(self.numbers - 1) if rng.random() < self.corruption else None
        problem = chain_text(values, ops, self.digits, rng, at, self.misconceptions, self.misconception_rate)
        return problem.prompt, problem.solution

    def verify(self, problem: Problem, text: str) -> float:
        return 1.0 if final_answer(text, self.marker) == problem.answer else 0.0

    # --- TextEnv --------------------------------------------------------------------------------
    def reset(self, seed: int) -> str:
        self._problem = self.problem(seed)
        return self._problem.prompt

    def step(self, action_text: str):
        if self._problem is None:
            raise RuntimeError("step() called before reset()")
        correct = self.verify(self._problem, action_text)
        return None, {"accuracy": correct, "gold": correct}, True, {
            "prompt": self._problem.prompt, "answer": self._problem.answer}

    def demonstrations(self, n: int, seed: int) -> list[tuple[str, str]]:
        return [self.demonstration(seed * 1_000_003 + i) for i in range(n)]

    def fingerprint(self) -> dict[str, Any]:
        """What determines the training data (the train split excludes the whole held-out share,
        whichever eval_seed picks the eval problems)."""
        if self.tasks == "chain":
            data = {"numbers": self.numbers, "digits": self.digits, "ops": self.ops}
        else:
            path = Path(self.tasks).expanduser()
            data = {"file": str(path.resolve()), "crc32": zlib.crc32(path.read_bytes())}
        return {"name": self.name, "tasks": self.tasks, "split": self.split, "corruption": self.corruption,
                "misconceptions": self.misconceptions, "misconception_rate": self.misconception_rate,
                "eval_fraction": self.eval_fraction, "steps": list(self.steps_setting), **data}
