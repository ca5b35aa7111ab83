"""B-Coder (Yu et al. 2024): the dueling Q from logits, the conservative Bellman target B^q
against B*, the phi-stage (advantage frozen, only V_phi learns), the free reward R~ and
re-ranking, config errors, an end-to-end run with `python -m rlhf.evaluate` on HumanEval,
and the quick `bcoder_code` claim."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhf.algos.bcoder import (ResidualValueHead, advantage, bellman_residual, bound, free_reward,
                               per_sequence_mean, q_parts, softabs)
from rlhf.code_eval import auroc, ranked_pass, task_seeds
from tests.conftest import compose_cfg, read_scalars

REPO = Path(__file__).resolve().parents[1]
GAMMA = 0.9
# one row: a prompt token, three actions (the last is EOS), one padding position; vocabulary of 3
IDS = torch.tensor([[0, 0, 2, 1, 0]])
MASK = torch.tensor([[0., 1., 1., 1., 0.]])
LOGITS = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.5], [0.0, 2.0, 1.0], [0.3, 0.0, 0.0], [5.0, 0.0, 0.0]]])
VALUES = torch.tensor([[0.0, 0.2, 0.4, 0.6, 9.0]])  # V(s_t), aligned; 9 at the padding must never count
CKPT_ARGMAX = torch.tensor([[0, 0, 2, 1, 0]])  # the checkpoint's greedy token at each state
# tiny but real settings: a 2,000-demonstration SFT (~3 s, cached), characters as tokens
SMALL_CODE = ["env=code", "reward=unit_tests", "threads=1", "model.tokenizer.vocab_size=258",
              "model.sft.demonstrations=2000", "model.sft.epochs=1", "rollout.max_new_tokens=16", "eval.prompts=8"]


def test_dueling_q_from_logits_by_hand():
    alpha = 0.5
    adv = advantage(torch.tensor([[[2.0, 0.5, -1.0]]]), alpha)
    assert torch.allclose(adv, torch.tensor([[[0.0, -0.75, -1.5]]]))  # alpha (l - max l): <= 0, 0 at the argmax
    for v in (-3.0, -0.4, 0.0, 0.7, 5.0):  # bound(v) = R_max - softabs(v), softabs a smooth |v| with softabs(0) = 0
        by_hand = 1.0 - (0.5 * (math.log1p(math.exp(v)) + math.log1p(math.exp(-v))) - math.log(2))
        assert bound(torch.tensor(v), 1.0).item() == pytest.approx(by_hand, abs=1e-6) and by_hand <= 1.0
    assert softabs(torch.tensor(0.0)).item() == 0.0 and bound(torch.tensor(0.0), 1.0).item() == 1.0
    q = adv + torch.tensor(0.3)  # Q = A + V: the policy softmax(Q / alpha) is the LM's softmax(l)
    assert torch.allclose(torch.softmax(q / alpha, -1), torch.softmax(torch.tensor([[[2.0, 0.5, -1.0]]]), -1))
    # the residual value head h1 - h2 is exactly 0 at init, yet h1 gets a gradient (h2 is frozen)
    head, hidden = ResidualValueHead(8), torch.randn(2, 3, 8)
    assert torch.equal(head(hidden), torch.zeros(2, 3))
    head(hidden).sum().backward()
    assert head.h1.weight.grad.abs().sum() > 0 and head.h2.weight.grad is None


def test_q_parts_start_from_the_phi_values():
    """At theta-stage init V_theta = bound(V^r + V_phi) = bound(V_phi): nothing learned in the
    phi-stage is lost, and the logits are the LM's own (aligned to the state before each token)."""
    from agents.models import ValueModel, lm_forward
    from tests.tiny import tiny_lm

    policy = tiny_lm(0)
    phi, head = ValueModel.from_lm(policy), ResidualValueHead(policy.config.hidden_size)
    ids = torch.randint(1, 40, (2, 6))
    attention = torch.ones_like(ids)
    logits, values = q_parts(policy, phi, head, ids, attention, 1.0)
    assert torch.allclose(values, bound(phi.values(ids, attention), 1.0), atol=1e-6)
    assert torch.allclose(logits[:, 1:], lm_forward(policy, ids, attention)[:, :-1], atol=1e-5)


def test_conservative_target_against_the_optimality_target_by_hand():
    adv = advantage(LOGITS, 1.0)  # states 1..3: A = [0, -1, -0.5], [-2, 0, -1], [0, -0.3, -0.3]
    q_taken = [0.0 + 0.2, -1.0 + 0.4, -0.3 + 0.6]  # actions 0, 2, 1
    returns = torch.tensor([1.0])  # the reward sits on the last action (EOS)
    # B^q: bootstrap with the checkpoint's greedy action at s' (2 at state 2, 1 at state 3)
    conservative = bellman_residual(adv, VALUES, IDS, CKPT_ARGMAX, MASK, returns, GAMMA)
    expect = [0.0 + GAMMA * (-1.0 + 0.4) - q_taken[0], GAMMA * (-0.3 + 0.6) - q_taken[1], 1.0 - q_taken[2]]
    assert torch.allclose(conservative[0, 1:4], torch.tensor(expect)) and conservative[0, 0] == conservative[0, 4] == 0
    # B*: argmax_a Q_theta(s', a) = argmax l_theta, where A = 0, so the target is r + gamma V(s')
    optimality = bellman_residual(adv, VALUES, IDS, LOGITS.argmax(-1), MASK, returns, GAMMA)
    expect_star = [GAMMA * 0.4 - q_taken[0], GAMMA * 0.6 - q_taken[1], 1.0 - q_taken[2]]
    assert torch.allclose(optimality[0, 1:4], torch.tensor(expect_star))
    assert (optimality >= conservative - 1e-7).all()  # B* Q >= B^q Q: the max over actions
    # the loss: (1/T) sum_t delta_t^2 per program, mean over programs; the target carries no gradient
    assert per_sequence_mean(conservative ** 2, MASK).item() == pytest.approx(sum(d * d for d in expect) / 3, rel=1e-6)
    values = VALUES.clone().requires_grad_(True)
    bellman_residual(adv, values, IDS, CKPT_ARGMAX, MASK, returns, GAMMA).sum().backward()
    assert values.grad.tolist() == [[0.0, -1.0, -1.0, -1.0, 0.0]]  # only through Q(s_t, a_t), never the bootstrap


def test_phi_stage_target_is_td0_with_the_checkpoint_advantage_as_offset():
    """With the checkpoint's logits and its own argmax as target, A_ckpt(s', a^) = 0 exactly:
    delta_t = r_t + gamma V(s_{t+1}) - A_ckpt(s_t, a_t) - V(s_t)."""
    adv = advantage(LOGITS, 1.0)
    delta = bellman_residual(adv, VALUES, IDS, LOGITS.argmax(-1), MASK, torch.tensor([-0.3]), GAMMA)
    a_taken, v = [0.0, -1.0, -0.3], [0.2, 0.4, 0.6]
    expect = [GAMMA * v[1] - a_taken[0] - v[0], GAMMA * v[2] - a_taken[1] - v[1], -0.3 - a_taken[2] - v[2]]
    assert torch.allclose(delta[0, 1:4], torch.tensor(expect))


def test_free_reward_and_reranking_by_hand():
    adv = advantage(LOGITS, 1.0)
    r_tilde = free_reward(adv, VALUES, IDS, MASK, GAMMA)  # sum_t Q(s_t, a_t) - gamma V(s_{t+1}), V(terminal) = 0
    assert r_tilde.item() == pytest.approx((0.2 - GAMMA * 0.4) + (-0.6 - GAMMA * 0.6) + (0.3 - 0.0), rel=1e-6)
    passes = np.array([[0, 1, 0], [0, 0, 1]], bool)
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.3, 0.1]])
    assert ranked_pass(passes, scores, 1).tolist() == [1.0, 0.0]  # the tie in problem 2 keeps sample 0 first
    assert ranked_pass(passes, scores, 2).tolist() == [1.0, 0.0] and ranked_pass(passes, scores, 3).tolist() == [1.0, 1.0]
    # pairs (pos, neg): 0.9>0.1, 0.9>0.5, 0.5>0.1, 0.5=0.5 (half) -> 3.5 / 4
    assert auroc([0.9, 0.1, 0.5, 0.5], [1, 0, 1, 0]) == pytest.approx(0.875)
    assert math.isnan(auroc([0.1, 0.2], [1, 1]))


def test_task_seeds_cover_each_train_problem_once():
    from envs import base

    env = base.make("code", split="train")
    seeds = task_seeds(env, 80, 123)
    assert [env.task(s).task_id for s in seeds] == [t.task_id for t in env.task_list]


@pytest.mark.parametrize("overrides, message", [
    (["env=text", "reward=gold"], "algo=bcoder learns from unit tests: use env=code reward=unit_tests"),
    (["env=code"], "got env=code reward=rm"),
    (["env=code", "reward=unit_tests", "algo.operator=greedy"],
     "algo.operator=greedy unknown; valid choices: conservative, optimality"),
    (["env=code", "reward=unit_tests", "algo.value_init=zeros"], "valid choices: phi_stage, random"),
    (["env=code", "reward=unit_tests", "algo.value_init=random"], "has no phi-stage: set algo.phi_updates=0"),
    (["env=code", "reward=unit_tests", "algo.gamma=0"], r"algo.gamma=0 must lie in \(0, 1\]"),
    (["env=code", "reward=unit_tests", "algo.real_ratio=1.5"], r"algo.real_ratio=1.5 must lie in \[0, 1\]"),
    (["env=code", "reward=unit_tests", "algo.theta_updates=0"], "algo.theta_updates=0 must be a positive integer"),
])
def test_config_errors_name_the_bad_value(overrides, message):
    from rlhf.config import ConfigError, validate

    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg(["algo=bcoder", *overrides]))


def test_phi_stage_trains_only_v_phi_then_theta_stage_freezes_it(tmp_path):
    """Two phi updates leave the LM (the advantage) and the residual head untouched while V_phi
    moves; then two theta updates move the LM and h1 while V_phi stays as the phi-stage left it."""
    from rlhf.algos.bcoder import BCoder

    cfg = compose_cfg(["algo=bcoder", *SMALL_CODE, "algo.phi_updates=2", "algo.theta_updates=2", "algo.prompts=8",
                       "algo.responses_per_prompt=4", "algo.batch_size=8"])
    job = BCoder(cfg, tmp_path)
    snapshot = lambda module: {k: v.clone() for k, v in module.state_dict().items()}  # noqa: E731
    policy0, phi0, head0, ref0 = snapshot(job.policy), snapshot(job.phi), snapshot(job.value_head), snapshot(job.ref)
    logged = []
    for step in range(2):
        job.steps_done = step
        logged.append(job.step())
        assert "bcoder/phi_td_loss" in logged[-1] and "bcoder/q_loss" not in logged[-1]
    assert logged[0]["data/real"] == 32.0  # 8 problems x the 4 canonical forms, all passing their tests
    same = lambda a, b: all(torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    assert same(policy0, snapshot(job.policy)) and same(head0, snapshot(job.value_head))
    assert not same(phi0, snapshot(job.phi))
    phi1 = snapshot(job.phi)
    for step in range(2, 4):
        job.steps_done = step
        metrics = job.step()
        assert {"bcoder/q_loss", "bcoder/adv_loss", "bcoder/ce_loss"} <= set(metrics)
    assert same(phi1, snapshot(job.phi)) and same(ref0, snapshot(job.ref))
    assert not same(policy0, snapshot(job.policy)) and not same(head0, snapshot(job.value_head))
    batch = job.next_minibatch()  # stratified: rho_real = 0.5 of every minibatch are ground-truth programs
    assert batch.real.tolist() == [1.0] * 4 + [0.0] * 4 and (batch.returns[:4] == 1.0).all()


@pytest.mark.slow
def test_bcoder_run_logs_and_evaluates_on_humaneval(train_run):
    """`python -m rlhf.train algo=bcoder env=code reward=unit_tests` end to end, then
    `python -m rlhf.evaluate run=<it> env.tasks=humaneval`: a DSL-trained tiny model on
    HumanEval (pass@1 near 0), but the path reports greedy pass@1, sampled pass@k and R~ ranking."""
    run_dir = train_run(["algo=bcoder", *SMALL_CODE, "algo.phi_updates=3", "algo.theta_updates=3", "algo.prompts=16",
                         "algo.responses_per_prompt=4", "algo.batch_size=16", "algo.rerank_samples=4", "eval.every=3"],
                        "bcoder")
    scalars = read_scalars(run_dir)
    for tag in ("bcoder/phi_td_loss", "bcoder/q_loss", "bcoder/adv_loss", "bcoder/ce_loss", "bcoder/v_s0",
                "data/real", "data/generated", "eval/pass", "eval/unit_tests", "eval/rerank/ranked_pass@1",
                "eval/rerank/auroc"):
        assert tag in scalars, f"{tag} not logged"
    assert [x for x, _ in scalars["eval/pass"]] == [0, 3, 6]  # step 0 = the checkpoint
    assert [x for x, _ in scalars["eval/rerank/pass@1"]] == [3, 6]  # R~ exists once the phi-stage is done
    rows = [json.loads(line) for line in (run_dir / "eval" / "samples_step_000006.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {"seed", "response", "pass", "rerank/scores", "rerank/ranked_pass"} <= set(rows[0])
    out = Path(run_dir).parent / "humaneval"
    result = subprocess.run([sys.executable, "-m", "rlhf.evaluate", f"run={run_dir}", f"out={out}", "env.tasks=humaneval",
                             "eval.prompts=6", "eval.samples_per_prompt=3", "algo.rerank_samples=2"],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "eval" / "step_000006.json").read_text())
    for key in ("pass", "sampled/pass@1", "sampled/pass@2", "rerank/pass@1", "rerank/ranked_pass@1"):
        assert 0.0 <= metrics[key] <= 1.0, key


@pytest.mark.slow
def test_quick_bcoder_claim_reports_logged_numbers(tmp_path):
    from rlhf.reproduce import run_claim

    out = tmp_path / "bcoder"
    verdict = run_claim("bcoder_code", quick=True, out=out)
    report = (out / "report.md").read_text()
    assert verdict.word in ("REPRODUCED", "NOT REPRODUCED", "INCONCLUSIVE") and f"**Verdict:** {verdict.word}" in report
    for section in ("## Greedy pass@1 during the theta-stage", "## Re-ranking by the free reward", "## Effects"):
        assert section in report
    for png in ("pass_vs_theta_updates.png", "final_pass.png", "reranking.png", "free_reward_by_outcome.png"):
        assert (out / png).exists(), png
    # a table number is the logged value: B-Coder's final greedy pass@1 of seed 0
    logged = read_scalars(out / "runs" / "bcoder-s0")["eval/pass"][-1][1]
    assert f"| B-Coder (b) | {logged:.3f} |" in report
