"""The throughput paths of docs/profile.md give the numbers of the plain paths they replace.

(a) log-probs from the LM head on generated positions only (rlhf.algos.base.action_forward)
equal the full-logits path bit for bit at generated tokens, with 0 elsewhere, on batches with
trailing padding columns; entropies and gradients agree to float rounding; a model type outside
the plain-head list takes the full forward and gives the same values. (b) AdamW with foreach
kernels takes the same steps, bit for bit, as the per-tensor loop. (c) The engine's behaviour
log-probs are taken as pi_old only when provably the policy's own, and then agree with the
teacher-forced pass to float rounding.
"""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from agents.models import lm_forward
from rlhf.algos.base import PLAIN_HEAD_MODEL_TYPES, action_forward
from rlhf.functional import token_entropy, token_logprobs
from rlhf.rollout.engine import HFEngine, SamplingParams, behaviour_is_policy

from tests.tiny import PAD, VOCAB, Vocab, make_batch, tiny_lm


def plain(model, batch, temperature):
    """The path the fast one replaces: full logits, then log-probs and entropies at every cell."""
    logits = lm_forward(model, batch.input_ids, batch.attention_mask)
    return token_logprobs(logits, batch.input_ids, temperature), token_entropy(logits, temperature)


def gpt2():
    """A model type outside PLAIN_HEAD_MODEL_TYPES: it takes action_forward's full forward."""
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2, n_positions=64)).eval()


def padded_batch():
    """Rows of different lengths, plus two padding columns past the longest row."""
    torch.manual_seed(3)
    prompts = [[1, 5, 7], [2, 9], [3, 4, 6, 8], [10]]
    responses = [torch.randint(1, VOCAB, (n,)).tolist() for n in (5, 1, 3, 7)]
    batch = make_batch(prompts, responses)
    grow = lambda t, v: torch.nn.functional.pad(t, (0, 2), value=v)  # noqa: E731
    batch.input_ids, batch.attention_mask = grow(batch.input_ids, PAD), grow(batch.attention_mask, 0)
    batch.action_mask, batch.turn_end_mask = grow(batch.action_mask, 0.0), grow(batch.turn_end_mask, 0.0)
    batch.behaviour_logprobs = grow(batch.behaviour_logprobs, 0.0)
    return batch


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_generated_positions_only_equals_full_logits(temperature):
    model, batch = tiny_lm(0), padded_batch()
    assert model.config.model_type in PLAIN_HEAD_MODEL_TYPES
    keep = batch.action_mask.bool()
    with torch.no_grad():
        full_logp, full_ent = plain(model, batch, temperature)
        logp, ent = action_forward(model, batch.input_ids, batch.attention_mask, batch.action_mask, temperature,
                                   entropy=True)
    assert logp.shape == ent.shape == batch.input_ids.shape
    assert torch.equal(logp[keep], full_logp[keep])  # the same forward, bit for bit
    assert torch.equal(logp[~keep], torch.zeros_like(logp[~keep]))
    torch.testing.assert_close(ent[keep], full_ent[keep], rtol=1e-6, atol=1e-6)
    assert torch.equal(ent[~keep], torch.zeros_like(ent[~keep]))


def test_gradients_agree():
    model, batch = tiny_lm(1), padded_batch()
    weights = torch.linspace(-1.0, 1.0, len(batch))[:, None] * batch.action_mask

    def grads(fast: bool):
        m = copy.deepcopy(model).train()
        if fast:
            logp, ent = action_forward(m, batch.input_ids, batch.attention_mask, batch.action_mask, 1.0, True)
        else:
            logp, ent = plain(m, batch, 1.0)
        ((logp + 0.1 * ent) * weights).sum().backward()
        return {n: p.grad for n, p in m.named_parameters()}

    fast, full = grads(True), grads(False)
    for name in full:  # the head's weight gradient sums fewer rows: float rounding only
        torch.testing.assert_close(fast[name], full[name], rtol=1e-5, atol=1e-6)


def test_other_model_types_take_the_full_forward():
    torch.manual_seed(0)
    model = gpt2()
    assert model.config.model_type not in PLAIN_HEAD_MODEL_TYPES
    batch = padded_batch()
    keep = batch.action_mask.bool()
    with torch.no_grad():
        full_logp, full_ent = plain(model, batch, 1.0)
        logp, ent = action_forward(model, batch.input_ids, batch.attention_mask, batch.action_mask, 1.0, True)
    assert torch.equal(logp[keep], full_logp[keep]) and torch.equal(ent[keep], full_ent[keep])
    assert not logp[~keep].any()


def test_foreach_adamw_is_the_per_tensor_loop():
    from omegaconf import OmegaConf

    from rlhf.algos.base import make_optimizer

    cfg = OmegaConf.create({"lr": 3e-4, "adam_betas": [0.9, 0.95], "adam_eps": 1e-5, "weight_decay": 1e-6})
    a, b = tiny_lm(2), tiny_lm(2)
    fast = make_optimizer(a.parameters(), cfg)
    loop = torch.optim.AdamW(list(b.parameters()), lr=3e-4, betas=(0.9, 0.95), eps=1e-5, weight_decay=1e-6,
                             foreach=False)
    assert fast.defaults["foreach"] is True
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        for pa, pb in zip(a.parameters(), b.parameters()):
            pa.grad = torch.randn(pa.shape, generator=generator)
            pb.grad = pa.grad.clone()
        fast.step()
        loop.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_behaviour_logprobs_reused_only_when_they_are_the_policy():
    model = tiny_lm(4)
    engine = HFEngine(model, Vocab(range(VOCAB)))
    plain_sampling = SamplingParams(temperature=0.8, max_new_tokens=4)
    assert behaviour_is_policy(engine, model, plain_sampling)
    assert not behaviour_is_policy(engine, model, SamplingParams(temperature=0.8, top_k=5))  # truncated sampling
    assert not behaviour_is_policy(engine, model, SamplingParams(temperature=0.8, top_p=0.9))
    assert not behaviour_is_policy(engine, model, SamplingParams(temperature=0.0))  # greedy: no distribution
    assert not behaviour_is_policy(HFEngine(copy.deepcopy(model), Vocab(range(VOCAB))), model, plain_sampling)
    assert not behaviour_is_policy(HFEngine(model, Vocab(range(VOCAB)), extra_processors=[object()]), model,
                                   plain_sampling)
    assert not behaviour_is_policy(None, model, plain_sampling)  # engines in other processes (launcher=ray)
    assert not behaviour_is_policy(engine, copy.deepcopy(model).double(), plain_sampling)


def test_reused_behaviour_logprobs_match_the_teacher_forced_pass():
    """What the trainer takes as pi_old when behaviour_is_policy holds: the engine's log-probs
    of its own samples, equal to the teacher-forced pass to float rounding."""
    model = tiny_lm(5)
    vocab = Vocab(range(VOCAB))
    engine = HFEngine(model, vocab)
    prompts = [[1, 5, 7], [2, 9], [3, 4, 6, 8], [10]]
    torch.manual_seed(0)
    completions = engine.generate(prompts, SamplingParams(temperature=0.8, max_new_tokens=6))
    batch = make_batch(prompts, [c.token_ids for c in completions])
    for i, (p, c) in enumerate(zip(prompts, completions)):
        batch.behaviour_logprobs[i, len(p):len(p) + len(c.token_ids)] = torch.tensor(c.logprobs)
    with torch.no_grad():
        logp, _ = action_forward(model, batch.input_ids, batch.attention_mask, batch.action_mask, 0.8)
    gap = ((logp - batch.behaviour_logprobs).abs() * batch.action_mask).max()
    assert gap < 1e-5


def test_value_model_skips_trailing_padding_columns():
    """(d) ValueModel.raw runs the trunk only up to one column past the longest row: the same
    values (float rounding) wherever a row is real and at that first padding column, 0 beyond;
    a left-padded batch (real tokens in the last column) is computed whole; a multi-head critic
    keeps its [B, L, heads] shape."""
    from agents.critics import MultiHeadCritic
    from agents.models import ValueModel, position_ids_from_mask

    torch.manual_seed(0)
    critic = ValueModel.from_lm(tiny_lm(0), head_init="zeros")
    torch.nn.init.normal_(critic.head.weight)
    batch = padded_batch()
    ids, attn = batch.input_ids, batch.attention_mask

    def whole(model, ids, attn):  # the trunk over every column, as before
        hidden = model.trunk(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn),
                             use_cache=False).last_hidden_state
        return model.head(hidden.float()).squeeze(-1)

    width = int(attn.sum(-1).max()) + 1  # the longest row and the first column past it
    got, ref = critic.raw(ids, attn), whole(critic, ids, attn)
    assert got.shape == ref.shape and width < ids.shape[1]
    assert torch.allclose(got[:, :width], ref[:, :width], atol=1e-5)
    assert (got[:, width:] == 0).all() and not (ref[:, width:] == 0).all()
    left = torch.flip(attn, [1])  # the same lengths, left-padded
    assert torch.equal(critic.raw(ids, left), whole(critic, ids, left))
    multi = MultiHeadCritic(copy.deepcopy(critic.trunk), heads=3)
    torch.nn.init.normal_(multi.head.weight)
    values = multi.values(ids, attn)
    assert values.shape == (*ids.shape, 3)
    assert torch.allclose(values[:, :width], torch.cat([torch.zeros_like(values[:, :1]), whole(multi, ids, attn)[:, :-1]], 1)[:, :width],
                          atol=1e-5)


def test_long_rows_of_different_lengths_go_through_in_length_groups(monkeypatch):
    """(e) Rows reaching GROUP_MIN_WIDTH whose padded grid a length split shrinks by
    GROUP_MIN_SAVING are forwarded as two groups (shorter, longer) and put back in row order:
    the policy's log-probs and entropies, the critic's values and both models' gradients equal
    the whole batch's to float rounding. Short rows (the text task's) stay one forward."""
    from agents import models
    from agents.models import ValueModel, length_groups

    monkeypatch.setattr(models, "GROUP_MIN_WIDTH", 24)  # the test's tiny rows stand in for long episodes
    torch.manual_seed(0)
    lengths = [(4, 26), (4, 6), (3, 25), (5, 4)]  # (prompt, response): rows of 30, 10, 28, 9 tokens
    batch = make_batch([[5 + i] * p for i, (p, _) in enumerate(lengths)],
                       [[9 + (i + j) % 20 for j in range(r)] for i, (_, r) in enumerate(lengths)])
    ids, attn, act = batch.input_ids, batch.attention_mask, batch.action_mask
    groups = length_groups(attn)
    assert [g.tolist() for g in groups] == [[3, 1], [2, 0]]
    policy = tiny_lm(0)
    critic = ValueModel.from_lm(tiny_lm(1), head_init="zeros")
    torch.nn.init.normal_(critic.head.weight)

    # each row's positions through its first padding column (the state after its last token)
    upto = torch.arange(ids.shape[1]) <= attn.sum(-1, keepdim=True)

    def run():
        policy.zero_grad(), critic.zero_grad()
        logp, ent = action_forward(policy, ids, attn, act, entropy=True)
        values = critic.values(ids, attn)
        (logp.sum() + ent.sum() + values[upto].sum()).backward()
        grads = {f"{i}.{name}": p.grad.clone() for i, m in enumerate((policy, critic))
                 for name, p in m.named_parameters() if p.grad is not None}
        return logp.detach(), ent.detach(), values.detach(), grads

    split = run()
    monkeypatch.setattr(models, "GROUP_MIN_SAVING", 2.0)  # never split: one forward
    assert length_groups(attn) is None
    whole = run()
    for a, b in zip(split[:2], whole[:2]):  # log-probs and entropies: 0 off the actions in both
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    # values: equal through each row's first padding column; beyond it a padding position's value
    # is the trunk's output on padding, or 0 past a group's width (no loss reads it)
    assert split[2].shape == whole[2].shape and torch.allclose(split[2][upto], whole[2][upto], atol=1e-5)
    # gradients: every parameter of both models gets one either way, equal to float rounding (relative to scale)
    trainable = {f"{i}.{name}" for i, m in enumerate((policy, critic)) for name, p in m.named_parameters() if p.requires_grad}
    assert set(split[3]) == set(whole[3]) == trainable
    assert all(float((split[3][k] - b).abs().max()) <= 1e-5 * float(b.abs().max().clamp(min=1)) for k, b in whole[3].items())
    monkeypatch.setattr(models, "GROUP_MIN_WIDTH", 256)
    assert length_groups(attn) is None  # rows shorter than GROUP_MIN_WIDTH: one forward


@pytest.mark.parametrize("case", ["whole", "length groups", "full forward"])
def test_value_head_on_the_policy_trunk_is_a_value_model_on_it(case, monkeypatch):
    """(f) action_forward(..., value_head=h) (PPO's algo.shared_trunk) returns the log-probs and
    entropies it returns without h, and h's output at every real position equal to a ValueModel
    whose trunk is the policy's own (one trunk pass serving both), on the plain head path, in
    length groups, and on a model type that takes the full forward."""
    from agents import models
    from agents.models import ValueModel

    torch.manual_seed(0)
    if case == "full forward":
        model = gpt2()
        trunk = model.transformer
    else:
        model = tiny_lm(0)
        trunk = model.get_decoder()
    if case == "length groups":
        monkeypatch.setattr(models, "GROUP_MIN_WIDTH", 8)
    batch = padded_batch()
    if case == "length groups":
        assert models.length_groups(batch.attention_mask) is not None
    critic = ValueModel(trunk, head_init="normal")
    args = (model, batch.input_ids, batch.attention_mask, batch.action_mask, 1.0, True)
    with torch.no_grad():
        logp, ent, raw = action_forward(*args, value_head=critic.head)
        alone = action_forward(*args)
        expected = critic.raw(batch.input_ids, batch.attention_mask)
    real = batch.attention_mask.bool()
    assert raw.shape == batch.input_ids.shape and raw[real].abs().min() > 0
    torch.testing.assert_close(raw[real], expected[real], rtol=1e-5, atol=1e-6)
    assert torch.equal(logp, alone[0]) and torch.equal(ent, alone[1])
