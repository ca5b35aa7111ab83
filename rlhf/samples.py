"""Scored samples per train prompt: the offline data of DPO, OREO and rejection sampling.

`scored_lists(cfg, policy_dir)`: K samples of each of `algo.prompts` train prompts from the
warm-start (SFT) policy, scored by the env's gold component (the verifier on env=math), cached
by everything that determines them, so the algorithms compared in a claim train on the very
same samples. `sample_scored(cfg, policy, tokenizer, seeds)`: the same from the current policy
(iterative OREO / rejection sampling), not cached.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from agents.models import load_lm, load_tokenizer
from envs import base as env_base
from envs.base import env_settings
from rlhf.cache import cached, source_digest
from rlhf.preference import data as prefs
from rlhf.rollout.engine import SamplingParams
from rlhf.rollout.factory import make_engine
from rlhf.rollout.runner import EpisodeRunner

log = logging.getLogger("rlhf")


def train_seeds(cfg, round_index: int = 0) -> list[int]:
    """Prompt seeds of the train problems sampled in a round (round 0: the cached SFT pool)."""
    base = int(cfg.algo.data_seed) * 1_000_003 + round_index * 10_000_019
    return [base + i for i in range(int(cfg.algo.prompts))]


def sample_scored(cfg, policy, tokenizer, seeds: list[int], model_dir: str | None = None) -> list[prefs.RankedList]:
    """algo.responses_per_prompt samples per seed from `policy` at the rollout temperature,
    each scored by the env's gold component."""
    runner = EpisodeRunner(make_engine(cfg, policy, tokenizer, model_dir=model_dir), tokenizer,
                           SamplingParams.from_config(cfg.rollout), max_turns=int(cfg.env.max_turns))
    make_env = lambda: env_base.make(str(cfg.env.name), split="train", **env_settings(cfg.env))  # noqa: E731
    was_training = policy.training
    policy.eval()
    lists = prefs.sample_lists(runner, make_env, seeds, int(cfg.algo.responses_per_prompt),
                               lambda ep: ep.env_reward("gold"), log.info)
    policy.train(was_training)
    return lists


def scored_lists(cfg, policy_dir: Path) -> list[prefs.RankedList]:
    """K gold-scored samples per train prompt from the warm-start policy (cached)."""
    spec = {"env": {"name": cfg.env.name, **env_settings(cfg.env)}, "policy": str(Path(policy_dir).resolve()),
            "k": int(cfg.algo.responses_per_prompt), "prompts": int(cfg.algo.prompts),
            "seed": int(cfg.algo.data_seed), "engine": str(cfg.rollout.name),
            "sampling": {key: cfg.rollout[key] for key in ("temperature", "top_p", "top_k", "max_new_tokens")},
            "sources": source_digest(["rlhf.preference.data", "rlhf.samples", f"envs.{cfg.env.name}",
                                      "rlhf.rollout.engine", "rlhf.rollout.runner"])}

    def build(out: Path) -> None:
        tokenizer, policy = load_tokenizer(policy_dir), load_lm(policy_dir).eval()
        with torch.random.fork_rng():  # a cache miss must not change what the run draws next
            torch.manual_seed(int(cfg.algo.data_seed))
            lists = sample_scored(cfg, policy, tokenizer, train_seeds(cfg), model_dir=str(policy_dir))
        (out / "lists.json").write_text(json.dumps(prefs.to_json(lists)))

    path = cached(cfg.cache_dir, "pref_lists", spec, build, log.info) / "lists.json"
    return prefs.from_json(json.loads(path.read_text()))
