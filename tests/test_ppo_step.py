"""PPO.step through the class, on tiny random Qwen2 models and hand-built rollout batches.

(a) the score sits on the last generated token of each row, (b) the per-token KL penalty is
-beta * (log pi - log pi_ref) (Ouyang et al. 2022, eq. 2): a policy more likely than the
reference is penalized, (c) a critic initialized from a frozen reward model trains every one
of its parameters. Expected values are computed here from the models' logits, never with the
code under test.
"""
from __future__ import annotations

import copy
import functools

import pytest
import torch

from agents.models import ValueModel, frozen_copy, lm_forward
from rlhf.harness import torch_threads
from rlhf.algos.ppo import PPO
from rlhf.config import compose
from rlhf.rollout.batch import Batch

from tests.tiny import make_batch, tiny_lm



def token_logp(model, batch: Batch) -> torch.Tensor:
    """log softmax(logits[t-1])[token t] at temperature 1, column 0 = 0 (by hand)."""
    with torch.no_grad():
        logits = lm_forward(model, batch.input_ids, batch.attention_mask)
    picked = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    return torch.nn.functional.pad(picked, (1, 0)).float()


def greedy(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            x = torch.tensor([ids])
            ids.append(int(lm_forward(model, x, torch.ones_like(x))[0, -1, 1:].argmax()) + 1)  # never PAD
    return ids[len(prompt):]


def flattened(model) -> torch.nn.Module:
    """A frozen copy whose logits are the model's divided by 4 (final norm scaled by 1/4, no lm_head
    bias): on the model's greedy tokens it is strictly less likely than the model."""
    ref = frozen_copy(model)
    with torch.no_grad():
        ref.model.norm.weight.mul_(0.25)
    return ref


@functools.lru_cache(maxsize=None)
def config(overrides: tuple[str, ...]):
    return compose(["algo=ppo", "rollout.temperature=1.0", *overrides])  # PPO only reads its config


def ppo(overrides: list[str], policy, ref, reward_model=None) -> PPO:
    return PPO(config(tuple(overrides)), policy, ref, tokenizer=None, reward_model=reward_model)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models: a second torch thread only adds synchronisation (seconds per step on a busy CPU)."""
    with torch_threads(1):
        yield


PROMPTS = [[5, 6, 7], [9, 3], [11, 12, 13, 14]]
RESPONSES = [[20, 21, 22, 23], [30, 31], [40, 41, 42]]


# --- (a) the score on the last generated token ---------------------------------------------------


def test_scores_only_on_the_last_generated_token_clipped_and_eos_penalized():
    """Scores given on every column land only where turn_end_mask is 1 (the last action of each
    row), clipped to +-reward_clip; an unfinished row loses missing_eos_penalty there."""
    policy = tiny_lm(0)
    algo = ppo(["algo.reward_clip=10", "algo.missing_eos_penalty=0.5"], policy, frozen_copy(policy))
    batch = make_batch(PROMPTS, RESPONSES, finished=[True, False, True])
    row_scores = torch.tensor([2.0, -1.5, 50.0])
    everywhere = row_scores[:, None].expand_as(batch.action_mask).clone()
    scores, _ = algo.token_rewards(batch, everywhere, torch.zeros_like(batch.action_mask),
                                   torch.zeros_like(batch.action_mask), beta=0.1)
    expected = torch.zeros_like(batch.action_mask)
    last = [len(p) + len(r) - 1 for p, r in zip(PROMPTS, RESPONSES)]  # 6, 3, 6
    expected[0, last[0]], expected[1, last[1]], expected[2, last[2]] = 2.0, -1.5 - 0.5, 10.0
    torch.testing.assert_close(scores, expected, rtol=0, atol=0)


def test_step_credits_the_score_to_every_generated_token_before_it():
    """Through PPO.step with beta = 0, gamma = lambda = 1, no whitening and the zero-initialized
    critic head (V = 0): the advantage of each generated token is the reward to go, so the score
    on the last token counts once per generated token of its row. A score on the first generated
    token (mean 1.0 / 9 tokens here) or spread over the row would give another mean."""
    policy = tiny_lm(0)
    algo = ppo(["algo.kl_coef=0", "algo.gamma=1", "algo.lam=1", "algo.whiten_advantages=false",
                "algo.whiten_rewards=false", "algo.epochs=1", "algo.minibatches=1"], policy, frozen_copy(policy))
    batch = make_batch(PROMPTS, RESPONSES)
    row_scores = torch.tensor([2.0, -1.5, 0.5])
    turn_rewards = row_scores[:, None] * batch.turn_end_mask
    metrics = algo.step(batch, turn_rewards)
    lengths = [len(r) for r in RESPONSES]  # 4, 2, 3
    expected = sum(s * n for s, n in zip(row_scores.tolist(), lengths)) / sum(lengths)  # (8 - 3 + 1.5) / 9
    assert metrics["val/advantage_mean"] == pytest.approx(expected, abs=1e-6)
    assert metrics["val/mean"] == 0.0
    assert metrics["objective/rlhf_reward"] == pytest.approx(float(row_scores.mean()), abs=1e-6)


# --- (b) the sign of the KL penalty ----------------------------------------------------------------


@pytest.mark.parametrize("sharper", ["policy", "reference"])
def test_kl_penalty_is_minus_beta_times_log_ratio(sharper):
    """Per-token non-score reward = -beta * (log pi(a_t) - log pi_ref(a_t)) on generated tokens, 0
    elsewhere. On the sharper model's greedy tokens: negative when the policy is the more likely
    one (penalized), positive when the reference is."""
    model = tiny_lm(0)
    policy, ref = (model, flattened(model)) if sharper == "policy" else (flattened(model), model)
    responses = [greedy(model, p, len(r)) for p, r in zip(PROMPTS, RESPONSES)]
    batch = make_batch(PROMPTS, responses)
    beta = 0.2
    algo = ppo([f"algo.kl_coef={beta}", "algo.kl_estimator=k1", "algo.epochs=1", "algo.minibatches=1"], policy, ref)
    lp, lref = token_logp(policy, batch), token_logp(ref, batch)
    mask = batch.action_mask.bool()
    assert ((lp > lref) == (sharper == "policy"))[mask].all()  # the fixture does what it claims
    _, non_score = algo.token_rewards(batch, torch.zeros_like(batch.action_mask), lp, lref, beta)
    torch.testing.assert_close(non_score, -beta * (lp - lref) * batch.action_mask, rtol=1e-6, atol=1e-7)
    assert ((non_score < 0) == (sharper == "policy"))[mask].all()
    assert (non_score[~mask] == 0).all()
    # PPO.step computes the same penalty from its own passes and reports its per-sequence sum
    metrics = algo.step(batch, torch.zeros_like(batch.action_mask))
    per_sequence = (-beta * (lp - lref) * batch.action_mask).sum(-1).mean().item()
    assert metrics["objective/non_score_reward"] == pytest.approx(per_sequence, rel=1e-4)
    assert (metrics["objective/non_score_reward"] < 0) == (sharper == "policy")
    assert metrics["objective/kl"] == pytest.approx(-per_sequence / beta, rel=1e-4)


# --- (c) the critic trains every parameter -------------------------------------------------------


@pytest.mark.parametrize("critic_init", ["auto", "policy"])
def test_every_critic_parameter_gets_a_gradient_and_moves(critic_init):
    """With the reward model loaded frozen (as agents.rewards loads it), PPO's critic copy still
    trains its whole trunk, not only the linear head; the reward model itself is untouched.
    Two optimizer steps: the value head starts at zero, so the trunk's first gradient is zero."""
    policy, rm_lm = tiny_lm(0), tiny_lm(1)
    reward_model = ValueModel.from_lm(rm_lm).eval().requires_grad_(False)
    rm_before = copy.deepcopy(reward_model.state_dict())
    algo = ppo([f"algo.critic_init={critic_init}", "algo.epochs=2", "algo.minibatches=1", "algo.lr=1e-3"],
               policy, frozen_copy(policy), reward_model=reward_model)
    if critic_init == "auto":  # reward=rm: the critic's trunk starts as the reward model's
        rm_trunk = dict(reward_model.trunk.named_parameters())
        for name, p in algo.critic.trunk.named_parameters():
            assert torch.equal(p, rm_trunk[name]) and p.data_ptr() != rm_trunk[name].data_ptr()
    before = {name: p.detach().clone() for name, p in algo.critic.named_parameters()}
    batch = make_batch(PROMPTS, RESPONSES)
    algo.step(batch, torch.tensor([1.0, -2.0, 0.5])[:, None] * batch.turn_end_mask)
    optimized = {id(p) for group in algo.optimizer.param_groups for p in group["params"]}
    for name, p in algo.critic.named_parameters():
        assert id(p) in optimized, f"critic parameter {name} is not optimized"
        assert p.grad is not None and p.grad.abs().sum() > 0, f"critic parameter {name} got no gradient"
        assert not torch.equal(p.detach(), before[name]), f"critic parameter {name} did not change"
    assert all(not p.requires_grad for p in reward_model.parameters())
    for name, value in reward_model.state_dict().items():
        assert torch.equal(value, rm_before[name]), f"the reward model's {name} changed"


# --- (d) shared trunk: the value head on the policy's trunk (Schulman et al. 2017, eq. 9) --------


def test_shared_trunk_is_one_network_whose_value_loss_reaches_the_policy():
    """algo.shared_trunk: the critic's trunk is the policy's decoder (the same parameters, not a
    copy), the optimizer holds each parameter once (the policy's plus the head), checkpoints carry
    the head alone, and the value loss's gradient reaches the policy's trunk: with vf_coef the
    trunk takes a different step than without it. A reward model cannot seed it (ConfigError)."""
    from rlhf.config import ConfigError

    batch = make_batch(PROMPTS, RESPONSES)
    scores = torch.tensor([1.0, -2.0, 0.5])[:, None] * batch.turn_end_mask
    trunks = {}
    for vf_coef in (0.0, 1.0):
        policy = tiny_lm(0)
        algo = ppo(["algo.shared_trunk=true", f"algo.vf_coef={vf_coef}", "algo.epochs=2", "algo.minibatches=1",
                    "algo.max_grad_norm=0",  # no clipping: a head gradient alone must not move the trunk
                    "algo.lr=1e-3"], policy, frozen_copy(policy))
        assert algo.critic.trunk is policy.get_decoder()
        params = [p for group in algo.optimizer.param_groups for p in group["params"]]
        assert len(params) == len({id(p) for p in params}) == len(list(policy.parameters())) + 2  # + head W, b
        assert set(algo.modules()) == {"policy", "value_head"} and algo.modules()["value_head"] is algo.critic.head
        head_before = algo.critic.head.weight.detach().clone()
        algo.step(batch, scores)
        assert torch.equal(algo.critic.head.weight, head_before) == (vf_coef == 0)  # the head learns from the value loss
        trunks[vf_coef] = {n: p.detach().clone() for n, p in policy.get_decoder().named_parameters()}
    moved = [n for n in trunks[0.0] if not torch.allclose(trunks[0.0][n], trunks[1.0][n], atol=1e-7)]
    assert len(moved) > len(trunks[0.0]) // 2, f"the value loss moved only {moved}"
    with pytest.raises(ConfigError, match="shared_trunk"):
        PPO.check(compose(["algo=ppo", "reward=rm", "algo.shared_trunk=true", "algo.critic_init=reward_model"]))
