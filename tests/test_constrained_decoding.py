"""Constrained decoding: an env's allowed answers restrict what the engine may spell, the
recorded log-probs are those of the renormalized distribution, and the trainer's teacher-forced
log-probs (rlhf.algos.base.action_forward with the batch's allowed ids) equal them."""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from agents.models import build_tiny_lm
from envs.base import TextEnv
from rlhf.algos.base import action_forward
from rlhf.functional import constrain_logits, entropy_of
from rlhf.rollout.batch import collate
from rlhf.rollout.engine import AllowedSequences, HFEngine, SamplingParams, allowed_along
from rlhf.rollout.runner import EpisodeRunner
from rlhf.warmstart import train_tokenizer

CORPUS = ["go to shelf 1", "go to desk 2", "open drawer 1", "take apple 1 from desk 2", "look",
          "you arrive at shelf 1. on it you see a pen 1.", "your task is to: put an apple in the drawer."] * 40
TINY = OmegaConf.create({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "num_key_value_heads": 1,
                         "max_position_embeddings": 256, "tie_word_embeddings": True})
MENUS = [[" go to shelf 1", " go to desk 2", " look"], [" open drawer 1", " take apple 1 from desk 2"],
         [" look"], [" go to desk 2", " open drawer 1"]]


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    tokenizer = train_tokenizer(CORPUS, vocab_size=200)
    return build_tiny_lm(TINY, tokenizer).eval(), tokenizer


class MenuEnv(TextEnv):
    """Three turns; each turn offers one of MENUS; records what it was answered."""

    def __init__(self, constrained: bool = True):
        self.constrained = constrained
        self.answers: list[str] = []
        self.turn = 0

    def reset(self, seed: int) -> str:
        self.turn, self.seed = 0, seed
        return "your task is to: put an apple in the drawer."

    def menu(self) -> list[str]:
        return MENUS[(self.seed + self.turn) % len(MENUS)]

    def allowed_actions(self):
        return self.menu() if self.constrained else None

    def step(self, action_text: str):
        self.answers.append((action_text, self.menu()))
        self.turn += 1
        done = self.turn == 3
        return (None if done else " you arrive at shelf 1. on it you see a pen 1."), 0.0, done, {}


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_answers_are_always_allowed_and_logprobs_are_the_renormalized_ones(lm, temperature):
    model, tokenizer = lm
    torch.manual_seed(3)
    envs = [MenuEnv() for _ in range(8)]
    runner = EpisodeRunner(HFEngine(model, tokenizer), tokenizer,
                           SamplingParams(temperature=temperature, max_new_tokens=40), max_turns=3)
    episodes = runner.run(envs, list(range(8)))
    for env in envs:  # a random tiny LM answers only with menu items, spelled exactly
        assert len(env.answers) == 3
        for text, menu in env.answers:
            assert " " + text.strip() in menu, (text, menu)
    batch = collate(episodes, tokenizer.pad_token_id)
    assert batch.allowed_ids is not None and batch.allowed_ids.shape[:2] == batch.input_ids.shape
    # observation and prompt positions are free (-1), every generated token had a constraint
    constrained = batch.allowed_ids[..., 0] >= 0
    assert torch.equal(constrained, batch.action_mask.bool())
    # the trainer's log-probs (constrained) equal the engine's behaviour log-probs
    logp, ent = action_forward(model, batch.input_ids, batch.attention_mask, batch.action_mask,
                               entropy=True, allowed=batch.allowed_ids)
    if temperature > 0:
        gap = ((logp - batch.behaviour_logprobs).abs() * batch.action_mask).max()
        assert gap < 1e-4, gap
    free, _ = action_forward(model, batch.input_ids, batch.attention_mask, batch.action_mask)
    # renormalizing over a subset can only raise a token's probability, and it does somewhere
    assert (logp >= free - 1e-5).all() and ((logp - free) * batch.action_mask).max() > 1e-2
    assert torch.isfinite(ent).all() and (ent >= -1e-6).all()
    # a one-token choice (EOS after " look" is forced) has log-prob 0 and entropy 0
    forced = batch.allowed_ids[..., 1] < 0
    forced &= constrained
    assert forced.any()
    assert torch.allclose(logp[forced], torch.zeros(int(forced.sum())), atol=1e-6)


def test_free_env_is_decoded_as_before(lm):
    """An env without allowed_actions runs as it always has: no allowed ids, same samples."""
    model, tokenizer = lm
    outs = []
    for constrained in (False, None):
        torch.manual_seed(5)
        envs = [MenuEnv(constrained=False) for _ in range(4)]
        runner = EpisodeRunner(HFEngine(model, tokenizer), tokenizer, SamplingParams(max_new_tokens=8), max_turns=3)
        outs.append(runner.run(envs, list(range(4))))
    assert all(ep.allowed is None for ep in outs[0])
    assert collate(outs[0], tokenizer.pad_token_id).allowed_ids is None
    assert [ep.token_ids for ep in outs[0]] == [ep.token_ids for ep in outs[1]]


def test_constrain_logits_and_entropy():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]])
    allowed = torch.tensor([[1, 3, -1], [-1, -1, -1]])  # row 2 is free
    logp = torch.log_softmax(constrain_logits(logits, allowed), -1)
    assert math.isinf(logp[0, 0]) and math.isinf(logp[0, 2])
    assert torch.allclose(logp[0, [1, 3]], torch.log_softmax(torch.tensor([1.0, 3.0]), -1))
    assert torch.allclose(logp[1], torch.log_softmax(logits[1], -1))
    ent = entropy_of(logp)
    p = torch.softmax(torch.tensor([1.0, 3.0]), -1)
    assert torch.allclose(ent[0], -(p * p.log()).sum()) and torch.isfinite(ent).all()


def test_an_empty_menu_is_an_error():
    with pytest.raises(ValueError, match="at least one allowed sequence"):
        AllowedSequences([[]], width=1)


def test_allowed_along_replays_what_the_engine_recorded(lm):
    """allowed_along (how expert episodes get their allowed ids) walks the same prefix tree as
    the engine: along each sampled answer it yields exactly the ids the engine recorded."""
    model, tokenizer = lm
    torch.manual_seed(7)
    envs = [MenuEnv() for _ in range(6)]
    runner = EpisodeRunner(HFEngine(model, tokenizer), tokenizer, SamplingParams(max_new_tokens=40), max_turns=3)
    episodes = runner.run(envs, list(range(6)))
    eos = tokenizer.eos_token_id
    checked = 0
    for ep, env in zip(episodes, envs):
        spans, start = [], None  # the generated spans (one per turn), from the action mask
        for t, m in enumerate(ep.action_mask + [0]):
            if m and start is None:
                start = t
            elif not m and start is not None:
                spans.append((start, t))
                start = None
        assert len(spans) == len(env.answers) == 3
        for (begin, end), (_, menu) in zip(spans, env.answers):
            sequences = [runner.encode(a) + [eos] for a in menu]
            assert allowed_along(sequences, ep.token_ids[begin:end]) == ep.allowed[begin:end]
            checked += 1
    assert checked == 18
    # off the tree: positions after a token that spells no allowed sequence are free
    assert allowed_along([[1, 2, 0], [1, 3, 0]], [1, 4, 5]) == [[1], [2, 3], None]


def test_offline_samples_keep_the_constraint_and_score_the_behaviour_logprobs(lm):
    """The offline algorithms' data path (sample_lists -> Trajectory -> OfflineRounds.collate)
    keeps each token's allowed ids, so OREO's and RFT's teacher-forced log-probs are the
    renormalized ones the samples were drawn from (= the engine's behaviour log-probs)."""
    from types import SimpleNamespace

    from agents.models import lm_forward
    from rlhf.functional import token_logprobs
    from rlhf.offline import OfflineRounds, Trajectory
    from rlhf.preference.data import sample_lists

    model, tokenizer = lm
    torch.manual_seed(11)
    behaviour = {}

    class Recording(EpisodeRunner):
        def run(self, envs, seeds):
            episodes = super().run(envs, seeds)
            for ep in episodes:
                behaviour[tuple(ep.token_ids)] = ep.logprobs
            return episodes

    runner = Recording(HFEngine(model, tokenizer), tokenizer, SamplingParams(max_new_tokens=40), max_turns=3)
    lists = sample_lists(runner, MenuEnv, [0, 1, 2], 2, lambda ep: 1.0, log=lambda *_: None)
    assert all(r.allowed is not None and len(r.allowed) == 2 for r in lists)
    trajectories = [Trajectory(r.prompt_ids, resp, 1.0, 1.0, r.masks[i] if r.masks else None, r.allowed[i])
                    for r in lists for i, resp in enumerate(r.responses)]
    batch = OfflineRounds.collate(SimpleNamespace(tokenizer=tokenizer), trajectories)
    assert batch.allowed_ids is not None
    assert torch.equal(batch.allowed_ids[..., 0] >= 0, batch.action_mask.bool())
    with torch.no_grad():
        logp = token_logprobs(lm_forward(model, batch.input_ids, batch.attention_mask), batch.input_ids,
                              allowed=batch.allowed_ids)
    for row, t in enumerate(trajectories):  # (without the allowed ids the gap is ~6 nats)
        want = torch.tensor(behaviour[tuple(t.prompt_ids + t.response_ids)][len(t.prompt_ids):])
        got = logp[row, len(t.prompt_ids):len(t.prompt_ids) + len(t.response_ids)]
        mask = batch.action_mask[row, len(t.prompt_ids):len(t.prompt_ids) + len(t.response_ids)]
        assert ((got - want).abs() * mask).max() < 1e-4
