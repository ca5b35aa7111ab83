"""VAS: TD(lambda) targets, the value-guided decoding rule, per-row guidance in batches,
a frozen base policy, and the terminal (EOS) state."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from agents.models import ValueModel, build_tiny_lm, load_lm
from rlhf.warmstart import train_tokenizer
from rlhf import checkpoint as ckpt
from rlhf.algos.vas import td_lambda_targets
from rlhf.functional import value_guided_logits
from rlhf.rollout.engine import HFEngine, SamplingParams
from rlhf.rollout.guidance import ValueGuidance
from tests.conftest import SMALL, read_scalars


def test_td_lambda_targets_by_hand():
    """3 generated tokens after a 2-token prompt, reward 1 on the last; gamma 1, lambda 0.5."""
    v1, v2, v3, lam = 0.2, 0.5, 0.4, 0.5
    values = torch.tensor([[9.0, 9.0, v1, v2, v3, 9.0]])  # prompt and padding values are ignored
    rewards = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 0.0]])
    mask = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0, 0.0]])
    d3, d2, d1 = 1.0 - v3, v3 - v2, v2 - v1
    a3, a2, a1 = d3, d2 + lam * d3, d1 + lam * d2 + lam**2 * d3
    expected = [0.0, 0.0, a1 + v1, a2 + v2, a3 + v3, 0.0]
    assert td_lambda_targets(rewards, values, mask, 1.0, lam)[0].tolist() == pytest.approx(expected)
    # lambda = 1: every target is the final reward (Monte Carlo); lambda = 0: one-step TD
    assert td_lambda_targets(rewards, values, mask, 1.0, 1.0)[0, 2:5].tolist() == pytest.approx([1.0] * 3)
    assert td_lambda_targets(rewards, values, mask, 1.0, 0.0)[0, 2:5].tolist() == pytest.approx([v2, v3, 1.0])


LOGITS = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0]])
TOP = torch.tensor([[0, 1, 2]])
VALUES = torch.tensor([[[0.3, 0.9, 0.0]]])  # one value model, B = 1, K = 3; mean 0.4


def test_guided_logits_by_hand():
    """Only top-k tokens move, by beta * (v - mean_K v); the rest keep their base log-prob."""
    base = torch.log_softmax(LOGITS, -1)
    out = value_guided_logits(LOGITS, TOP, VALUES, [2.0])
    assert out[0, :3].tolist() == pytest.approx((base[0, :3] + 2.0 * torch.tensor([-0.1, 0.5, -0.4])).tolist())
    assert out[0, 3:].tolist() == pytest.approx(base[0, 3:].tolist())
    restricted = value_guided_logits(LOGITS, TOP, VALUES, [2.0], restrict_to_candidates=True)
    assert torch.isinf(restricted[0, 3:]).all() and restricted[0, :3].tolist() == pytest.approx(out[0, :3].tolist())


def test_beta_zero_is_the_base_distribution_exactly():
    out = value_guided_logits(LOGITS, TOP, VALUES, [0.0])
    assert torch.equal(torch.softmax(out, -1), torch.softmax(torch.log_softmax(LOGITS, -1), -1))
    assert torch.allclose(torch.softmax(out, -1), torch.softmax(LOGITS, -1), atol=1e-7)


def test_composition_adds_weighted_bonuses():
    two = torch.cat([VALUES, torch.tensor([[[1.0, 0.0, 0.5]]])])  # second model, mean 0.5
    out = value_guided_logits(LOGITS, TOP, two, [1.0, 3.0])
    base = torch.log_softmax(LOGITS, -1)[0, :3]
    bonus = torch.tensor([-0.1, 0.5, -0.4]) + 3.0 * torch.tensor([0.5, -0.5, 0.0])
    assert out[0, :3].tolist() == pytest.approx((base + bonus).tolist())


@pytest.fixture(scope="module")
def tiny_lm_and_value():
    torch.manual_seed(0)
    tokenizer = train_tokenizer(["the food was good and the staff was friendly.", "i hated the soup."] * 30,
                                vocab_size=290)
    cfg = OmegaConf.create({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                            "num_attention_heads": 2, "num_key_value_heads": 1,
                            "max_position_embeddings": 128, "tie_word_embeddings": True})
    lm = build_tiny_lm(cfg, tokenizer).eval()
    value = ValueModel.from_lm(lm)  # random head: a strong, arbitrary guidance signal
    torch.nn.init.normal_(value.head.weight, std=1.0)
    return lm, value, tokenizer


def test_batched_guidance_equals_one_prompt_at_a_time(tiny_lm_and_value):
    """Different prompts (different lengths, left padding) in one batch decode exactly as
    each alone: guidance is computed per row, never from row 0's prefix."""
    lm, value, tokenizer = tiny_lm_and_value
    engine = HFEngine(lm, tokenizer, extra_processors=[ValueGuidance([value], [5.0], top_k=5)])
    texts = ["the food was good and the", "i hated", "the staff"]
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    greedy = SamplingParams(temperature=0, max_new_tokens=8)
    together = engine.generate(prompts, greedy)
    for prompt, joint in zip(prompts, together):
        assert engine.generate([prompt], greedy)[0].token_ids == joint.token_ids
    plain = HFEngine(lm, tokenizer).generate(prompts, greedy)
    assert any(p.token_ids != j.token_ids for p, j in zip(plain, together)), "guidance changed nothing"


def test_vas_training_keeps_base_policy_and_fits_values(train_run):
    """algo=vas: the policy weights are bit-identical after training; the value model's
    terminal estimate improves; the value model written in HF layout (what evaluation and
    decoding=vas load) is the trained one; the run evaluates."""
    run_dir = train_run(SMALL + ["algo=vas", "reward=gold", "train.steps=6", "algo.eval_beta=4.0"], "vas")
    latest = ckpt.latest_checkpoint(run_dir)
    state, modules = ckpt.load_checkpoint(latest)
    base = load_lm(state["policy_dir"]).state_dict()
    assert all(torch.equal(modules["policy"][k], base[k]) for k in base)
    saved = ValueModel.load(latest / "value_model").state_dict()
    assert saved.keys() == modules["value"].keys()
    assert all(torch.equal(saved[k], modules["value"][k]) for k in saved)
    assert modules["value"]["head.weight"].abs().sum() > 0  # trained away from its zero init
    scalars = read_scalars(run_dir)
    terminal = [v for _, v in scalars["value/terminal_loss"]]
    assert terminal[-1] < terminal[0]
    assert "eval/gold" in scalars and "eval/kl" in scalars and "value/explained_variance" in scalars
