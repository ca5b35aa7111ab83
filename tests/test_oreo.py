"""OREO's losses against hand computations (Wang et al. 2024, eqs. 8-9), the position
alignment of states and actions, masking, and the step / response-level variants."""
import torch

from envs.math.steps import StepSplitter
from rlhf.algos.oreo import full_kl, oreo_losses, reverse_cumsum, state_starts, tail_at_next_start
from rlhf.offline import Minibatch

# one row: prompt of 2 tokens, a 3-token response (the last is EOS), 2 padding tokens
MASK = torch.tensor([[0., 0., 1., 1., 1., 0., 0.]])
LOGP = torch.tensor([[0., -1.0, -0.5, -0.2, -0.1, -9., -9.]])
REF = torch.tensor([[0., -1.0, -0.7, -0.4, -0.6, -1., -1.]])  # lambda on the response: 0.2, 0.2, 0.5


def test_three_token_response_has_three_states_and_actions():
    starts = state_starts(Minibatch(torch.zeros(1, 7, dtype=torch.long), MASK.clone(), MASK, torch.ones(1),
                                    torch.ones(1), [["a", "b", "c"]]), "token", None)
    assert starts.sum() == 3 and (starts == MASK).all()
    tail = reverse_cumsum(LOGP - REF, MASK)
    assert torch.isclose(tail[0, 2], torch.tensor(0.9))  # Lambda at the first state = all three log-ratios
    assert torch.allclose(tail[0, 2:5], torch.tensor([0.9, 0.7, 0.5]))
    assert (tail[0, 5:] == 0).all() and (tail[0, :2] == 0.9).all()  # padding adds nothing


def test_padding_and_observation_tokens_do_not_count():
    garbage = LOGP.clone()
    garbage[0, 5:] = 123.0
    garbage[0, :2] = -55.0
    assert torch.equal(reverse_cumsum(garbage - REF, MASK), reverse_cumsum(LOGP - REF, MASK))
    # an observation token inside the response (mask 0) is skipped too
    obs_mask = torch.tensor([[0., 0., 1., 0., 1., 0., 0.]])
    assert torch.isclose(reverse_cumsum(LOGP - REF, obs_mask)[0, 2], torch.tensor(0.7))


def test_token_level_losses_match_a_hand_computation():
    beta, R = 0.5, torch.tensor([1.0])
    values = torch.tensor([[9., 9., 0.3, 0.6, 0.8, 9., 9.]])  # V(state before token t); 9 where no state
    lp = LOGP.clone().requires_grad_(True)
    value_loss, policy_loss, valid = oreo_losses(lp, REF, values, R, MASK, MASK.clone(), beta)
    lam, tail = [0.2, 0.2, 0.5], [0.9, 0.7, 0.5]
    v = [0.3, 0.6, 0.8]
    expect_v = sum((v[t] - 1 + beta * tail[t]) ** 2 for t in range(3)) / 3
    next_tail = [0.7, 0.5, 0.0]
    expect_pi = sum((v[t] - 1 + beta * lam[t] + beta * next_tail[t]) ** 2 for t in range(3)) / 3
    assert torch.isclose(value_loss, torch.tensor(expect_v)) and torch.isclose(policy_loss, torch.tensor(expect_pi))
    assert valid.all()
    # the gradient flows only through the current token's log-ratio: d/d logp_t = 2 beta td_t / 3
    policy_loss.backward()
    td = [v[t] - 1 + beta * lam[t] + beta * next_tail[t] for t in range(3)]
    assert torch.allclose(lp.grad[0, 2:5], torch.tensor([2 * beta * x / 3 for x in td]))
    assert (lp.grad[0, :2] == 0).all() and (lp.grad[0, 5:] == 0).all()


def test_step_level_and_response_level():
    beta, R = 0.5, torch.tensor([0.0])
    values = torch.tensor([[0., 0., 0.3, 0.6, 0.8, 0., 0.]])
    # steps: tokens 2-3 form step 1, token 4 step 2
    starts = torch.tensor([[0., 0., 1., 0., 1., 0., 0.]])
    lp = LOGP.clone().requires_grad_(True)
    value_loss, policy_loss, _ = oreo_losses(lp, REF, values, R, MASK, starts, beta)
    expect_v = ((0.3 + beta * 0.9) ** 2 + (0.8 + beta * 0.5) ** 2) / 2
    expect_pi = ((0.3 + beta * 0.4 + beta * 0.5) ** 2 + (0.8 + beta * 0.5 + 0) ** 2) / 2
    assert torch.isclose(value_loss, torch.tensor(expect_v)) and torch.isclose(policy_loss, torch.tensor(expect_pi))
    policy_loss.backward()  # step 1's two tokens share one gradient; the last step has no next state
    assert torch.isclose(lp.grad[0, 2], lp.grad[0, 3])
    # response level: only t = 0, the loss is (V(s_0) - R + beta Lambda_0)^2 and all log-ratios get gradient
    first = torch.tensor([[0., 0., 1., 0., 0., 0., 0.]])
    lp2 = LOGP.clone().requires_grad_(True)
    _, response_loss, _ = oreo_losses(lp2, REF, values, R, MASK, first, beta)
    assert torch.isclose(response_loss, torch.tensor((0.3 + beta * 0.9) ** 2))
    response_loss.backward()
    assert (lp2.grad[0, 2:5] != 0).all()


def test_state_starts_follow_the_step_splitter():
    batch = Minibatch(torch.zeros(1, 7, dtype=torch.long), MASK.clone(), MASK, torch.ones(1), torch.ones(1),
                      [[" 1+2=3;", " ans", " 3"]])
    step = state_starts(batch, "step", StepSplitter.delimiter(";"))
    assert step.tolist() == [[0., 0., 1., 1., 0., 0., 0.]]
    assert state_starts(batch, "response", None).tolist() == [[0., 0., 1., 0., 0., 0., 0.]]
    assert tail_at_next_start(torch.tensor([[5., 4., 3., 2.]]), torch.tensor([[1., 0., 1., 0.]])).tolist() == \
        [[3., 3., 0., 0.]]


def test_empty_rows_are_skipped():
    mask = torch.cat([MASK, torch.zeros(1, 7)])
    values = torch.zeros(2, 7)
    lp = torch.cat([LOGP, LOGP])
    v1, p1, valid = oreo_losses(lp, torch.cat([REF, REF]), values, torch.ones(2), mask, mask.clone(), 0.5)
    v0, p0, _ = oreo_losses(LOGP, REF, values[:1], torch.ones(1), MASK, MASK.clone(), 0.5)
    assert valid.tolist() == [True, False] and torch.isclose(v1, v0) and torch.isclose(p1, p0)


def test_full_vocabulary_kl():
    logits = torch.tensor([[[0.0, 1.0], [2.0, 0.0]]])
    ref = torch.zeros(1, 2, 2)
    p = torch.softmax(logits, -1)
    by_hand = (p * (p.log() - torch.log(torch.tensor(0.5)))).sum(-1)
    logp, ref_logp = logits.log_softmax(-1), ref.log_softmax(-1)
    assert torch.isclose(full_kl(logp, ref_logp, torch.tensor([[1., 1.]])), by_hand.mean())
    assert torch.isclose(full_kl(logp, ref_logp, torch.tensor([[0., 1.]])), by_hand[0, 1])


# --- end to end: train, log, checkpoint the value model, search with it ------------------------------

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.conftest import read_scalars  # noqa: E402

MATH_SMALL = ["env=math", "reward=verifier", "env.sft.epochs=1", "model.sft.demonstrations=2000", "algo.prompts=16",
              "algo.responses_per_prompt=4", "algo.batch_size=16", "algo.epochs=1", "eval.prompts=8", "eval.every=2"]


@pytest.mark.slow
def test_oreo_run_logs_saves_its_value_model_and_searches_with_it(train_run):
    run_dir = train_run(["algo=oreo", *MATH_SMALL], "oreo")
    scalars = read_scalars(run_dir)
    for tag in ("oreo/value_loss", "oreo/policy_loss", "oreo/kl_reg", "oreo/value_s0", "data/accuracy",
                "eval/accuracy"):
        assert tag in scalars, f"{tag} not logged"
    assert [x for x, _ in scalars["eval/accuracy"]] == [0, 2, 4]  # step 0 = the SFT policy
    checkpoint = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    assert (checkpoint / "value_model" / "value_head.safetensors").exists()
    rows = [json.loads(line) for line in (run_dir / "eval" / "samples_step_000004.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {"seed", "prompt", "response", "accuracy", "kl"} <= set(rows[0])
    for metric in ("accuracy", "kl"):  # the samples file recomputes the logged evaluation
        assert sum(r[metric] for r in rows) / len(rows) == pytest.approx(scalars[f"eval/{metric}"][-1][1], abs=1e-5)
    out = Path(run_dir).parent / "beam"
    result = subprocess.run([sys.executable, "-m", "rlhf.evaluate", f"run={run_dir}", f"out={out}",
                             "decoding=value_beam", "decoding.beams=2", "decoding.calibration_samples=2"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "eval" / "step_000004.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["beams"] == 2.0
    assert metrics["search/candidates_per_problem"] > 0 and "value_calibration_r" in metrics
    beam_rows = (out / "eval" / "samples_step_000004.jsonl").read_text().splitlines()
    assert len(beam_rows) == 8 and "value_s0" in json.loads(beam_rows[0])


def test_value_beam_needs_an_env_with_steps(train_run):
    from rlhf.config import ConfigError, compose, validate

    with pytest.raises(ConfigError, match="algo.level=step needs an env with reasoning steps"):
        validate(compose(["algo=oreo", "algo.level=step", "env=text"]))
    with pytest.raises(ConfigError, match="algo.level=bogus unknown; valid choices: token, step, response"):
        validate(compose(["algo=oreo", "algo.level=bogus", "env=math", "reward=verifier"]))
    with pytest.raises(ConfigError, match="reward=verifier reads the env=math reward"):
        validate(compose(["algo=oreo", "reward=verifier"]))
