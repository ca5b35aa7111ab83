"""Rollout layer: HF engine log-probs, EOS / stop handling, padding, and the multi-turn runner."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from agents.models import build_tiny_lm, lm_forward
from rlhf.warmstart import train_tokenizer
from envs.base import TextEnv
from rlhf.functional import token_logprobs
from rlhf.rollout.batch import collate
from rlhf.rollout.engine import HFEngine, SamplingParams
from rlhf.rollout.runner import EpisodeRunner

CORPUS = ["the food was good and the staff was friendly.", "i hated the soup.", "turn one two three",
          "observation: the opponent played c.", "review: we stayed at the inn."] * 50
TINY = OmegaConf.create({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "num_key_value_heads": 1,
                         "max_position_embeddings": 128, "tie_word_embeddings": True})


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    tokenizer = train_tokenizer(CORPUS, vocab_size=300)
    return build_tiny_lm(TINY, tokenizer).eval(), tokenizer


def prompts(tokenizer, texts):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_behaviour_logprobs_match_teacher_forcing(lm, temperature):
    """Engine log-probs (recorded while sampling) equal the trainer's forward pass at the same
    temperature, with left-padded prompts of different lengths: PPO's ratio starts at 1."""
    model, tokenizer = lm
    torch.manual_seed(1)
    engine = HFEngine(model, tokenizer)
    texts = ["review: we stayed at the inn.", "i hated", "the food was good and the staff"]
    completions = engine.generate(prompts(tokenizer, texts), SamplingParams(temperature=temperature, max_new_tokens=12))
    for ids, completion in zip(prompts(tokenizer, texts), completions):
        seq = torch.tensor([ids + completion.token_ids])
        logp = token_logprobs(lm_forward(model, seq, torch.ones_like(seq)), seq, temperature)[0, len(ids):]
        assert torch.allclose(logp, torch.tensor(completion.logprobs), atol=1e-4), (logp, completion.logprobs)


def test_top_k_logprobs_are_those_of_the_truncated_distribution(lm):
    model, tokenizer = lm
    torch.manual_seed(2)
    completion = HFEngine(model, tokenizer).generate(prompts(tokenizer, ["i hated"]),
                                                     SamplingParams(top_k=3, max_new_tokens=8))[0]
    ids = prompts(tokenizer, ["i hated"])[0]
    seq = torch.tensor([ids + completion.token_ids])
    full = token_logprobs(lm_forward(model, seq, torch.ones_like(seq)), seq)[0, len(ids):]
    assert (torch.tensor(completion.logprobs) >= full - 1e-5).all()
    assert (torch.tensor(completion.logprobs) > full + 1e-3).any()


def test_greedy_batch_equals_one_at_a_time(lm):
    """Left padding changes nothing: a batch of different-length prompts decodes like singles."""
    model, tokenizer = lm
    engine = HFEngine(model, tokenizer)
    greedy = SamplingParams(temperature=0, max_new_tokens=10)
    texts = ["review: we stayed at the inn.", "i", "the food was good and"]
    batched = engine.generate(prompts(tokenizer, texts), greedy)
    for text, together in zip(texts, batched):
        alone = engine.generate(prompts(tokenizer, [text]), greedy)[0]
        assert alone.token_ids == together.token_ids


def test_eos_cut_and_finish_reason(lm):
    """A completion ends with its first EOS (kept), finish_reason 'stop'; else 'length'."""
    model, tokenizer = lm
    eos = tokenizer.eos_token_id

    def boost_eos(input_ids, scores):  # EOS on ~1 in 20 tokens, so both endings occur
        scores[:, eos] = scores.logsumexp(-1) - 3.0
        return scores

    engine = HFEngine(model, tokenizer, extra_processors=[boost_eos])
    torch.manual_seed(0)
    outs = engine.generate(prompts(tokenizer, ["i hated"] * 32), SamplingParams(max_new_tokens=20))
    assert any(c.finish_reason == "stop" for c in outs) and any(c.finish_reason == "length" for c in outs)
    for c in outs:
        assert (c.finish_reason == "stop") == (eos in c.token_ids)
        if eos in c.token_ids:
            assert c.token_ids.index(eos) == len(c.token_ids) - 1
        else:
            assert len(c.token_ids) == 20
        assert len(c.logprobs) == len(c.token_ids)


def test_stop_strings_end_a_completion(lm):
    model, tokenizer = lm
    engine = HFEngine(model, tokenizer)
    torch.manual_seed(0)
    plain = engine.generate(prompts(tokenizer, ["the food"]), SamplingParams(temperature=0, max_new_tokens=16))[0]
    text = tokenizer.decode(plain.token_ids)
    stop = text.strip()[:2]
    assert stop, "the greedy completion is empty; pick another prompt"
    out = engine.generate(prompts(tokenizer, ["the food"]),
                          SamplingParams(temperature=0, max_new_tokens=16, stop_strings=(stop,)))[0]
    assert out.finish_reason == "stop"
    assert stop in tokenizer.decode(out.token_ids)
    assert stop not in tokenizer.decode(out.token_ids[:-1])


class ThreeTurnEnv(TextEnv):
    """Multi-turn toy: three turns, each answered by an observation; reward = turn index."""
    max_turns = 3

    def reset(self, seed):
        self.turn = 0
        return f"review: turn {seed}"

    def step(self, action_text):
        self.turn += 1
        self.actions = getattr(self, "actions", []) + [action_text]
        done = self.turn == 3
        return (None if done else " observation: the opponent played c."), float(self.turn), done, {}


def test_multi_turn_runner_masks_observations(lm):
    """Token-in/token-out: generated ids carry mask 1 and their log-probs; prompt and
    observation ids carry mask 0 and log-prob 0; env saw the decoded actions."""
    model, tokenizer = lm
    engine = HFEngine(model, tokenizer)
    runner = EpisodeRunner(engine, tokenizer, SamplingParams(max_new_tokens=6), max_turns=3)
    envs = [ThreeTurnEnv(), ThreeTurnEnv()]
    torch.manual_seed(3)
    episodes = runner.run(envs, [1, 2])
    obs_ids = tokenizer(" observation: the opponent played c.", add_special_tokens=False)["input_ids"]
    for env, ep in zip(envs, episodes):
        assert len(ep.turn_ends) == 3 and ep.done and [float(r) for r in ep.rewards] == [1.0, 2.0, 3.0]
        assert len(ep.token_ids) == len(ep.action_mask) == len(ep.logprobs)
        pos = ep.prompt_len
        for turn, end in enumerate(ep.turn_ends):
            generated = ep.token_ids[pos:end + 1]
            assert all(ep.action_mask[pos:end + 1]) and len(generated) >= 1
            assert env.actions[turn] == tokenizer.decode([t for t in generated if t != tokenizer.eos_token_id],
                                                        skip_special_tokens=True)
            pos = end + 1
            if turn < 2:
                assert ep.token_ids[pos:pos + len(obs_ids)] == obs_ids
                assert not any(ep.action_mask[pos:pos + len(obs_ids)])
                assert not any(ep.logprobs[pos:pos + len(obs_ids)])
                pos += len(obs_ids)
        assert pos == len(ep.token_ids)
        assert not any(ep.action_mask[:ep.prompt_len])
    batch = collate(episodes, tokenizer.pad_token_id)
    assert batch.turn_end_mask.sum() == 6
    assert torch.equal(batch.action_mask.bool() & ~batch.attention_mask.bool(),
                       torch.zeros_like(batch.action_mask, dtype=torch.bool))
