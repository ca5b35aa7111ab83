"""P3O.step through the class, on a tiny random Qwen2 policy and hand-built rollout batches.

(a) rows 2i and 2i+1 are the two responses of prompt i: swapping them within a pair gives the
same update, and a pair of identical responses with equal rewards gives none; (b) the update is
invariant to a per-prompt reward shift delta(x) (Wu et al. 2023: P3O is invariant to equivalent
rewards) when rewards are not divided by a running std (algo.reward_scaling=none) -- bit for bit
with the offset of env.prompt_reward_offset (rlhf.rewards), which the tests here also check.
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import torch

from agents.models import build_tiny_lm, frozen_copy
from rlhf import rewards as reward_sources
from rlhf.harness import torch_threads
from rlhf.algos.p3o import P3O
from rlhf.config import compose
from rlhf.rewards import RewardSource, prompt_offset
from rlhf.rollout.batch import Batch
from rlhf.rollout.runner import Episode

from tests.tiny import TINY, VOCAB, Vocab
from tests.tiny import make_batch as _make_batch


def make_batch(prompts, responses, group):
    return _make_batch(prompts, responses, group=group)



@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models: a second torch thread only adds synchronisation (seconds per step on a busy CPU)."""
    with torch_threads(1):
        yield


# three prompts, two responses each: rows 2i, 2i+1 belong to prompt i
PROMPTS = [[5, 6, 7], [9, 3], [11, 12, 13, 14]]
RESPONSES = [[20, 21, 22, 23], [24, 25], [30, 31], [32, 33, 34], [40, 41, 42], [43, 44, 45, 46]]
REWARDS = [0.8, -0.4, 0.1, 0.9, -0.7, -0.2]


def pair_batch(order: list[int] | None = None) -> Batch:
    order = order or list(range(6))
    prompts = [PROMPTS[i // 2] for i in order]
    return make_batch(prompts, [RESPONSES[i] for i in order], [i // 2 for i in order])


def on_last_token(batch: Batch, rewards: list[float]) -> torch.Tensor:
    return torch.tensor(rewards)[:, None] * batch.turn_end_mask


@pytest.fixture(scope="module")
def initial_policy():
    torch.manual_seed(0)
    return build_tiny_lm(TINY, Vocab(range(VOCAB))).eval()


@functools.lru_cache(maxsize=None)
def config(overrides: tuple[str, ...]):
    return compose(list(overrides))  # P3O only reads its config


def update(initial_policy, batch: Batch, rewards: list[float] | torch.Tensor,
           overrides: list[str] = ()) -> dict[str, torch.Tensor]:
    """Parameter change of one P3O.step (2 epochs: the second is off-policy) from a fresh copy;
    `rewards`: one per row, or the turn rewards [B, L] as a reward source returns them."""
    cfg = config(("algo=p3o", "rollout.temperature=1.0", "algo.epochs=2", "algo.minibatch_pairs=16",
                  "algo.kl_coef=0.1", *overrides))
    policy = copy.deepcopy(initial_policy)
    algo = P3O(cfg, policy, frozen_copy(initial_policy), tokenizer=None)
    algo.step(batch, rewards if torch.is_tensor(rewards) else on_last_token(batch, rewards))
    before = dict(initial_policy.named_parameters())
    return {name: (p.detach() - before[name].detach()) for name, p in policy.named_parameters()}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def largest(a: dict[str, torch.Tensor]) -> float:
    return max(float(v.abs().max()) for v in a.values())


# --- (a) row pairing -----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["joint", "separate"])
def test_swapping_the_two_rows_of_a_pair_gives_the_same_update(initial_policy, variant):
    """y1 <-> y2 within each pair flips q and d (or swaps the two separate terms): same loss,
    same update, for each trust-region variant."""
    overrides = [f"algo.clip_variant={variant}", "algo.reward_scaling=none"]
    base = update(initial_policy, pair_batch(), REWARDS, overrides)
    swap = [1, 0, 3, 2, 5, 4]
    swapped = update(initial_policy, pair_batch(swap), [REWARDS[i] for i in swap], overrides)
    assert largest(base) > 1e-4  # the step did move the policy
    assert max_difference(base, swapped) < 1e-6


def test_pairs_are_adjacent_rows(initial_policy):
    """Rows 2i, 2i+1 form a pair. Two identical responses with equal rewards per prompt give
    q = 0 for every pair, hence no update; the same rows laid out A, B, A, B (same group ids on
    adjacent rows, but now different responses in each pair) do move the policy."""
    a, b = 0, 2  # responses of prompts 0 and 1
    same = make_batch([PROMPTS[0]] * 2 + [PROMPTS[1]] * 2, [RESPONSES[a]] * 2 + [RESPONSES[b]] * 2, [0, 0, 1, 1])
    overrides = ["algo.reward_scaling=none", "algo.weight_decay=0"]
    assert largest(update(initial_policy, same, [0.5, 0.5, -1.0, -1.0], overrides)) == 0.0
    mixed = make_batch([PROMPTS[0], PROMPTS[1]] * 2, [RESPONSES[a], RESPONSES[b]] * 2, [0, 0, 1, 1])
    assert largest(update(initial_policy, mixed, [0.5, -1.0, 0.5, -1.0], overrides)) > 1e-4


def test_rejects_a_batch_whose_pairs_are_not_adjacent(initial_policy):
    batch = pair_batch([0, 2, 1, 3, 4, 5])  # groups 0, 1, 0, 1, 2, 2
    with pytest.raises(ValueError, match="adjacent rows"):
        update(initial_policy, batch, REWARDS)


# --- (b) invariance to a per-prompt reward shift -------------------------------------------------


@pytest.mark.parametrize("variant", ["joint", "separate"])
def test_per_prompt_reward_shift_leaves_the_update_unchanged(initial_policy, variant):
    """r -> r + delta(x) on both responses of prompt x: the same update to 1e-6 with running-std
    scaling off (the shift would change the running std). Sensitivity: a shift that differs
    within a pair does change the update."""
    delta = [3.0, 3.0, -4.0, -4.0, 2.5, 2.5]  # per prompt; shifted rewards stay inside reward_clip
    shifted = [r + d for r, d in zip(REWARDS, delta)]
    overrides = [f"algo.clip_variant={variant}", "algo.reward_scaling=none"]
    base = update(initial_policy, pair_batch(), REWARDS, overrides)
    assert largest(base) > 1e-4
    assert max_difference(base, update(initial_policy, pair_batch(), shifted, overrides)) < 1e-6
    per_sample = [r + (1.0 if i % 2 == 0 else 0.0) for i, r in enumerate(REWARDS)]
    assert max_difference(base, update(initial_policy, pair_batch(), per_sample, overrides)) > 1e-5


# --- env.prompt_reward_offset: delta(x) in the optimized reward, bit-exact for P3O ---------------


class FixedScores(RewardSource):
    """A reward source that returns REWARDS on each row's last token (as a reward model would)."""

    def score(self, episodes, batch):
        return on_last_token(batch, REWARDS), {}


def episodes_of(batch: Batch, order: list[int]) -> list[Episode]:
    """The episodes a batch was collated from: prompt i's token ids, one turn ending on the last token."""
    rows = []
    for row, i in enumerate(order):
        prompt, length = PROMPTS[i // 2], int(batch.attention_mask[row].sum())
        rows.append(Episode(seed=i, prompt_len=len(prompt), token_ids=batch.input_ids[row, :length].tolist(),
                            action_mask=[], logprobs=[], turn_ends=[length - 1]))
    return rows


def test_prompt_offset_is_a_fixed_standard_normal_draw_per_prompt():
    assert prompt_offset([5, 6, 7], 2.0) == prompt_offset([5, 6, 7], 2.0) != prompt_offset([5, 6, 8], 2.0)
    assert prompt_offset([5, 6, 7], 0.0) == 0.0
    draws = torch.tensor([prompt_offset([i, i + 1], 1.0) for i in range(4000)])
    assert abs(float(draws.mean())) < 0.06 and abs(float(draws.std()) - 1.0) < 0.05
    assert all(float(d * 2**16).is_integer() for d in draws[:100])  # on the 2^-16 grid


def test_reward_source_adds_the_offset_per_prompt_on_the_last_turn():
    batch, order = pair_batch(), list(range(6))
    source = FixedScores()
    base, _ = source(episodes_of(batch, order), batch)
    assert base.dtype == torch.float32  # offset off: untouched
    source.offset_scale = 2.0
    shifted, _ = source(episodes_of(batch, order), batch)
    assert shifted.dtype == torch.float64
    added = shifted - base.double()
    deltas = [prompt_offset(PROMPTS[i], 2.0) for i in range(3)]
    assert torch.equal(added.sum(-1), torch.tensor([d for d in deltas for _ in range(2)], dtype=torch.float64))
    assert torch.equal(added != 0, batch.turn_end_mask.bool())  # on the last token only
    assert len(set(deltas)) == 3


def test_offset_config_reaches_the_reward_source_but_not_the_reward_models(monkeypatch):
    cfg = compose(["reward=gold", "env.prompt_reward_offset=2"])
    source, _ = reward_sources.build_reward_source(cfg, Path("unused"))
    assert source.offset_scale == 2.0
    from rlhf.reward_models import data_env

    # the same cached preference data and reward models as without the offset (or with eval_on=valid)
    plain = data_env(compose([]).env)
    assert data_env(compose(["env.prompt_reward_offset=2"]).env) == plain
    assert data_env(compose(["env.valid_fraction=0.1", "env.eval_on=valid"]).env) == \
        data_env(compose(["env.valid_fraction=0.1"]).env) != plain  # validation prompts leave train: new data


@pytest.mark.parametrize("variant", ["joint", "separate"])
def test_prompt_reward_offset_leaves_the_update_bitwise_unchanged(initial_policy, variant):
    """The rewards of env.prompt_reward_offset (float64, delta(x) on a 2^-16 grid) cancel exactly
    in r1 - r2: the same parameters bit for bit, also in the off-policy second epoch."""
    overrides = [f"algo.clip_variant={variant}", "algo.reward_scaling=none", "algo.reward_clip=100"]
    batch = pair_batch()
    source = FixedScores()
    base = update(initial_policy, batch, source(episodes_of(batch, list(range(6))), batch)[0], overrides)
    assert largest(base) > 1e-4
    for scale in (2.0, 7.3):
        source.offset_scale = scale
        shifted = update(initial_policy, batch, source(episodes_of(batch, list(range(6))), batch)[0], overrides)
        assert all(torch.equal(base[k], shifted[k]) for k in base), scale
