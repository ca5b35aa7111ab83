"""env=math: the chain task, its verifier and splits, the GSM8K reader, the step splitter."""
import json

import pytest

from envs import base as env_base
from envs.base import EnvConfigError
from envs.math import MathEnv, chain_text, final_answer
from envs.math.steps import StepSplitter


def test_chain_solution_and_verifier():
    p = chain_text([7, 5, 9, 3], ["+", "+", "+"], 1)
    assert p.prompt == "7+5+9+3 ="
    assert p.solution == " 7+5=2; 2+9=1; 1+3=4; ans 4"
    assert p.answer == "4"
    env = MathEnv()
    assert env.verify(p, p.solution) == 1.0
    assert env.verify(p, " 7+5=2; 2+9=1; 1+3=5; ans 5") == 0.0
    assert env.verify(p, " 7+5=2; 2+9=1;") == 0.0  # no answer
    mixed = chain_text([3, 4, 2], ["*", "-"], 1)
    assert mixed.solution == " 3*4=2; 2-2=0; ans 0"


def test_corruption_propagates_and_has_the_configured_rate():
    env = MathEnv(corruption=0.3)
    demos = [env.demonstration(i) for i in range(2000)]
    correct = [env.verify(env.problem(i), response) for i, (_, response) in enumerate(demos)]
    assert 0.64 < sum(correct) / len(correct) < 0.76  # 70% correct
    clean = MathEnv(corruption=0.0)
    assert all(clean.verify(clean.problem(i), clean.demonstration(i)[1]) for i in range(200))
    # a corrupted step makes every later step compute from the wrong value
    bad = chain_text([1, 1, 1, 1], ["+"] * 3, 1, corrupt_rng=__import__("random").Random(0), corrupt_at=0)
    steps = StepSplitter.delimiter(";").split(bad.solution)
    wrong = int(steps[0].split("=")[1].rstrip(";"))
    assert wrong != 2 and steps[1].startswith(f" {wrong}+1=")
    assert final_answer(bad.solution, "ans") != bad.answer


def test_splits_are_disjoint_and_eval_is_a_fixed_list():
    train, evals = MathEnv(split="train"), MathEnv(split="eval", eval_problems=256)
    held_out = {p.prompt for p in evals.problems}
    assert len(held_out) == 256
    assert not held_out & {train.reset(s) for s in range(3000)}
    assert [evals.reset(7_000_000_000 + i) for i in range(256)] == [p.prompt for p in evals.problems][
        7_000_000_000 % 256:] + [p.prompt for p in evals.problems][:7_000_000_000 % 256]
    assert env_base.make("math", split="eval").reset(5) == evals.reset(5)


def test_bad_settings_are_refused():
    with pytest.raises(EnvConfigError, match="valid: any of"):
        MathEnv(ops="+/")
    with pytest.raises(EnvConfigError, match="corruption"):
        MathEnv(corruption=1.5)
    with pytest.raises(EnvConfigError, match="step kind 'lines' unknown"):
        MathEnv(steps="lines")
    with pytest.raises(EnvConfigError, match="eval_problems"):
        MathEnv(numbers=2, eval_problems=256)  # 100 problems in all


def test_gsm8k_reader(tmp_path):
    rows = [{"question": f"Tom has {i} apples and buys 2 more. How many?",
             "answer": f"He starts with {i}.\nHe buys 2, so {i}+2 = {i + 2}.\n#### {i + 2}"} for i in range(10)]
    good = tmp_path / "gsm.jsonl"
    good.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    env = MathEnv(tasks=str(good), split="train", eval_fraction=0.2)
    assert len(env.problems) == 8 and len(MathEnv(tasks=str(good), split="eval", eval_fraction=0.2).problems) == 2
    prompt = env.reset(0)
    problem = next(p for p in env.problems if p.prompt == prompt)
    assert env.splitter.kind == "newline"
    assert env.step(problem.solution)[1]["accuracy"] == 1.0
    assert env.step("so the answer is\n#### 1,000")[1]["accuracy"] == 0.0
    prompt, response = env.demonstrations(1, seed=0)[0]
    assert prompt.endswith("\n") and response.endswith(f"#### {final_answer(response, '####')}")
    for text, reason in [("{not json", "not valid JSON"), (json.dumps({"question": "q"}), "'answer' is missing"),
                         (json.dumps({"question": "q", "answer": "no final line"}), "no final '#### <number>'"),
                         (json.dumps([1, 2]), "must be a JSON object")]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps(rows[0]) + "\n" + text + "\n")
        with pytest.raises(EnvConfigError, match=f"bad.jsonl:2: .*{reason}"):
            MathEnv(tasks=str(bad))


def test_final_answer_normalizes_numbers():
    assert final_answer("#### 1,234", "####") == "1234"
    assert final_answer("x #### 3.50", "####") == "3.5"
    assert final_answer("ans -7;", "ans") == "-7"
    assert final_answer("nothing", "ans") is None


@pytest.mark.parametrize("splitter, text, steps", [
    (StepSplitter.delimiter(";"), " 1+2=3; 3+4=7; ans 7", [" 1+2=3;", " 3+4=7;", " ans 7"]),
    (StepSplitter.newline(), "a\nb\n#### 3", ["a\n", "b\n", "#### 3"]),
    (StepSplitter.regex(r"\n|\. "), "One. Two\nThree", ["One. ", "Two\n", "Three"]),
])
def test_step_splitter(splitter, text, steps):
    assert splitter.split(text) == steps
    assert "".join(splitter.split(text)) == text


def test_step_starts_from_token_texts():
    s = StepSplitter.delimiter(";")
    # tokens: " 1" "+2" "=3;" " 3" "+4=7" ";" " ans" " 7"  -> steps start at tokens 0, 3, 6
    assert s.step_starts([" 1", "+2", "=3;", " 3", "+4=7", ";", " ans", " 7"]) == [1, 0, 0, 1, 0, 0, 1, 0]
    with pytest.raises(ValueError, match="matches the empty string"):
        StepSplitter.regex(r"x*")
