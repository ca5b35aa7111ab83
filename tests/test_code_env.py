"""env=code (envs/code): the DSL parser and reward table, splits, function and HumanEval
tasks scored in the sandbox, JSONL task files, pass@k."""
from __future__ import annotations

import json
import math
from itertools import combinations

import pytest

from envs.base import EnvConfigError, env_settings, make
from envs.code import dsl, sandbox
from envs.code.tasks import STATUS_REWARD, function_tasks, pass_at_k, read_jsonl, truncate_completion


# --- the DSL -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("program, x, value", [
    ("3*x+7", 2, 13), ("x*3+7", 0, 7), ("7+3*x", 5, 22), ("(x+1)*(x+2)", 3, 20), ("x-5-1", 0, -6),
    ("12/5", 0, 2), ("(0-7)/2", 0, -4), ("x/2", 5, 2), ("  3 * x + 7 ", 1, 10)])
def test_dsl_evaluates_with_precedence_and_floor_division(program, x, value):
    assert dsl.evaluate(dsl.parse(program), x) == value


@pytest.mark.parametrize("program", ["", "3*", "*3", "x+", "(x+1", "x+1)", "3x", "x**2", "-x", "y+1", "3*x+7;",
                                     "1+2+3+4+5+6+7", "abs(x)", "x x"])
def test_dsl_rejects_bad_programs(program):
    with pytest.raises(dsl.ParseError):
        dsl.parse(program)


def test_dsl_reward_table():
    a, b = 3, 7
    assert dsl.run(" 3*x+7", a, b) == ("passed", None)
    assert dsl.run("(3*x)+7\nmore text", a, b)[0] == "passed"  # the first line is the program
    assert dsl.run("3*x+", a, b)[0] == "compile_error"
    assert dsl.run("x/(x-1)", a, b)[0] == "runtime_error"  # division by zero at x = 1
    status, detail = dsl.run("3*x+6", a, b)
    assert status == "failed" and "x=0" in detail
    assert dsl.run("x/0+3*x+7", a, b)[0] == "runtime_error"  # a runtime error outranks wrong output
    assert dsl.REWARDS == {"compile_error": -1.0, "runtime_error": -0.6, "failed": -0.3, "passed": 1.0}
    env = make("code", tasks="dsl")
    task = env.lookup("dsl/3/7")
    for completion, reward in ((" 3*x+7", 1.0), (" 3*x+", -1.0), (" x/(x-1)", -0.6), (" 3*x+6", -0.3)):
        rewards, info = env.score(task, completion)
        assert rewards == {"unit_tests": reward, "pass": float(reward == 1.0), "gold": float(reward == 1.0)}
        assert info["task_id"] == "dsl/3/7"


def test_dsl_ground_truth_programs_score_one():
    env = make("code", tasks="dsl")
    for a in range(10):
        for b in range(10):
            for solution in dsl.solutions(a, b):
                assert len(solution.strip()) <= dsl.MAX_TOKENS
                status, _ = dsl.run(solution, a, b)
                assert status == "passed", (a, b, solution)
    for prompt, response in env.demonstrations(50, seed=1):
        reward, info = env.score(prompt, response)
        assert reward["unit_tests"] == 1.0 and reward["gold"] == 1.0 and info["status"] == "passed"
    prompt = env.reset(7)
    _, reward, done, info = env.step(dsl.solutions(*env.task(7).params)[2])
    assert done and reward["pass"] == 1.0 and info["task_id"] == env.task(7).task_id


def test_dsl_split_sizes_determinism_and_reset():
    train, evals = make("code", split="train", tasks="dsl"), make("code", split="eval", tasks="dsl")
    assert len(train.task_list) == 80 and len(evals.task_list) == 20
    assert not {t.task_id for t in train.task_list} & {t.task_id for t in evals.task_list}
    again = make("code", split="eval", tasks="dsl")
    assert [t.task_id for t in again.task_list] == [t.task_id for t in evals.task_list]
    other = make("code", split="eval", tasks="dsl", split_seed=1)
    assert [t.task_id for t in other.task_list] != [t.task_id for t in evals.task_list]
    assert evals.reset(3) == evals.reset(3) == evals.task_list[3].prompt
    assert {evals.reset(s) for s in range(20)} == {t.prompt for t in evals.task_list}
    assert train.reset(5) == make("code", tasks="dsl").reset(5)
    prompt = evals.reset(0)
    assert prompt.startswith("A ") and prompt.endswith(" :")
    train_prompts = {t.prompt for t in train.task_list}
    assert all(p in train_prompts for p, _ in evals.demonstrations(30, seed=0))  # demos come from train
    assert evals.demonstrations(5, seed=2) == evals.demonstrations(5, seed=2)
    fp = evals.fingerprint()
    assert fp["tasks"] == "dsl" and fp["split_seed"] == 0 and fp["eval_fraction"] == 0.2
    assert fp != other.fingerprint()


def test_validation_split_leaves_test_tasks_unchanged_and_leaves_train():
    test = make("code", split="eval", tasks="dsl")
    valid = make("code", split="eval", tasks="dsl", valid_fraction=0.2, eval_on="valid")
    train = make("code", split="train", tasks="dsl", valid_fraction=0.2)
    same_test = make("code", split="eval", tasks="dsl", valid_fraction=0.2)
    ids = lambda env: {t.task_id for t in env.task_list}  # noqa: E731
    assert len(valid.task_list) == 20 and len(train.task_list) == 60
    assert ids(same_test) == ids(test)  # test tasks do not depend on valid_fraction
    assert not ids(valid) & ids(test) and not ids(valid) & ids(train) and not ids(train) & ids(test)
    assert all(p not in {t.prompt for t in valid.task_list} for p, _ in train.demonstrations(200, seed=0))
    assert train.fingerprint() != make("code", split="train", tasks="dsl").fingerprint()  # new SFT cache key
    assert "valid_fraction" not in make("code", split="train", tasks="dsl").fingerprint()  # old keys kept
    with pytest.raises(EnvConfigError, match="valid_fraction > 0"):
        make("code", split="eval", eval_on="valid")
    with pytest.raises(EnvConfigError, match="valid choices: test, valid"):
        make("code", split="eval", eval_on="validation", valid_fraction=0.2)
    with pytest.raises(EnvConfigError, match="valid_fraction"):
        make("code", valid_fraction=1.0)


def test_make_from_config_section():
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(__file__.rsplit("/tests/", 1)[0] + "/configs/env/code.yaml")
    assert cfg.name == "code" and cfg.kind == "text" and cfg.max_turns == 1
    env = make("code", split="eval", **env_settings(cfg))
    assert len(env.task_list) == 20 and env.max_turns == 1


def test_bad_settings_are_config_errors():
    with pytest.raises(EnvConfigError, match="valid choices: dsl, functions, humaneval"):
        make("code", tasks="mbpp")
    with pytest.raises(EnvConfigError, match="split"):
        make("code", split="test")
    with pytest.raises(EnvConfigError, match="eval_fraction"):
        make("code", eval_fraction=1.5)
    with pytest.raises(EnvConfigError, match="no train tasks"):
        make("code", eval_fraction=1.0)
    with pytest.raises(EnvConfigError, match="workers"):
        make("code", workers=0)


# --- function tasks in the sandbox ----------------------------------------------------------------------

def test_function_reference_solutions_pass_and_wrong_ones_fail():
    tasks = function_tasks()
    assert len(tasks) >= 40 and len({t.task_id for t in tasks}) == len(tasks)
    env = make("code", split="train", tasks="functions", timeout_s=1)
    assert env.sandbox_mode == "bwrap", "the sandbox must run isolated (see tests/test_sandbox.py)"
    results = env.score_many(tasks, [t.canonical_solution for t in tasks], workers=2)
    bad = [(t.task_id, info) for t, (r, info) in zip(tasks, results) if r["pass"] != 1.0]
    assert not bad, bad
    wrong = env.score_many([tasks[0], tasks[0], tasks[0], tasks[0]],
                           ["    return None\n", "    return (\n", "    raise ValueError('no')\n",
                            "    while True:\n        pass\n"])
    assert [info["status"] for _, info in wrong] == ["failed", "compile_error", "runtime_error", "timeout"]
    assert wrong[0][1]["failed_test"].startswith("assert candidate(")
    assert [r["unit_tests"] for r, _ in wrong] == [-0.3, -1.0, -0.6, -0.6]
    assert STATUS_REWARD["timeout"] == STATUS_REWARD["killed"] == -0.6


def test_function_env_step_and_truncation():
    env = make("code", split="eval", tasks="functions", timeout_s=2)
    assert len(env.task_list) == round(len(function_tasks()) * 0.2)
    prompt = env.reset(0)
    task = env.task(0)
    assert prompt == task.prompt and prompt.startswith("def ")
    # Text after the function (a new top-level statement) is cut at HumanEval's stop sequences.
    _, reward, done, info = env.step(task.canonical_solution + "\nprint(undefined_name)\n")
    assert done and reward == {"unit_tests": 1.0, "pass": 1.0, "gold": 1.0}, info
    assert info["status"] == "passed" and info["task_id"] == task.task_id
    assert truncate_completion("    return 1\n\ndef g():\n    pass") == "    return 1\n"


# --- HumanEval ------------------------------------------------------------------------------------------

def test_humaneval_loads_164_problems_and_canonical_solutions_pass():
    from envs.code.tasks import humaneval_tasks

    tasks = humaneval_tasks()
    assert len(tasks) == 164 and tasks[0].task_id == "HumanEval/0"
    env = make("code", split="eval", tasks="humaneval", eval_fraction=1.0)
    assert len(env.task_list) == 164
    first = tasks[:3]
    results = env.score_many(first, [t.canonical_solution for t in first], workers=2)
    assert [info["status"] for _, info in results] == ["passed"] * 3, results
    _, info = env.score(tasks[0], "    return False\n")
    assert info["status"] == "failed"


# --- JSONL task files -------------------------------------------------------------------------------------

ROW = {"task_id": "t/add", "prompt": "def add(a, b):\n", "entry_point": "add",
       "tests": "def check(candidate):\n    assert candidate(1, 2) == 3\n",
       "canonical_solution": "    return a + b\n"}


def write_rows(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_tasks_load_and_score(tmp_path):
    rows = [ROW, {**ROW, "task_id": "t/sub", "prompt": "def sub(a, b):\n", "entry_point": "sub",
                  "tests": "def check(candidate):\n    assert candidate(3, 2) == 1\n",
                  "canonical_solution": "    return a - b\n"},
            {k: v for k, v in ROW.items() if k not in ("task_id", "canonical_solution")}]
    path = write_rows(tmp_path / "tasks.jsonl", rows)
    tasks = read_jsonl(path)
    assert [t.task_id for t in tasks] == ["t/add", "t/sub", "tasks/3"]
    env = make("code", split="train", tasks=str(path), eval_fraction=0.0)
    assert len(env.task_list) == 3
    (r1, _), (r2, i2) = env.score_many(["t/add", "t/sub"], ["    return a + b\n", "    return a + b\n"])
    assert r1["pass"] == 1.0 and r2["pass"] == 0.0 and i2["status"] == "failed"
    demos = env.demonstrations(4, seed=0)
    assert {p for p, _ in demos} <= {"def add(a, b):\n", "def sub(a, b):\n"}  # the row without a solution is left out
    assert env.fingerprint()["crc32"] and env.fingerprint()["n_tasks"] == 3


@pytest.mark.parametrize("rows, message", [
    ([ROW, {k: v for k, v in ROW.items() if k != "tests"}], ":2: missing key 'tests'"),
    ([ROW, "{not json"], ":2: not valid JSON"),
    ([{**ROW, "entry_point": 3}], ":1: 'entry_point' must be a string, got int"),
    ([{**ROW, "prompt": ["def f():"]}], ":1: 'prompt' must be a string, got list"),
    (["[1, 2]"], ":1: a row must be a JSON object"),
    ([{**ROW, "tests": "def check(candidate):\n  assert (\n"}], ":1: tests do not compile"),
    ([{**ROW, "tests": "assert True\n"}], ":1: tests must define check(candidate)"),
    ([ROW, ROW], ":2: duplicate task_id"),
])
def test_jsonl_bad_rows_stop_with_file_and_line(tmp_path, rows, message):
    path = write_rows(tmp_path / "bad.jsonl", rows)
    with pytest.raises(EnvConfigError) as err:
        make("code", tasks=str(path))
    assert str(err.value).startswith(f"{path}:") and message in str(err.value)


def test_jsonl_missing_file(tmp_path):
    with pytest.raises(EnvConfigError, match="no such file"):
        make("code", tasks=str(tmp_path / "nope.jsonl"))


# --- pass@k ---------------------------------------------------------------------------------------------

def test_pass_at_k_matches_a_hand_computation():
    # n=5 samples, c=2 correct, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(4, 0, 2) == 0.0 and pass_at_k(4, 3, 2) == 1.0
    # Brute force: the share of k-subsets of the n samples holding at least one correct one.
    n, c, k = 7, 2, 3
    samples = [1] * c + [0] * (n - c)
    subsets = list(combinations(range(n), k))
    brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(brute)
    assert math.isclose(pass_at_k(n, c, k), 1 - math.comb(5, 3) / math.comb(7, 3))
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_make_code_eval_dsl():
    env = make("code", split="eval", tasks="dsl")
    assert env.name == "code" and env.sandbox_mode is None  # the DSL needs no sandbox
    assert sandbox.STATUSES == ("passed", "failed", "runtime_error", "timeout", "compile_error", "killed")
