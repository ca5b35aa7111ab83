"""Reward sources: what an algorithm optimizes, selected by the `reward` config group.

A source turns finished episodes into the optimization reward of each turn, placed on the
turn's last generated token (`[B, L]`, zeros elsewhere), plus metrics to log.

* `gold` / `verifier` / `unit_tests`: a named component of the environment's own reward (the
  gold scorer on env=text, the answer verifier on env=math, the unit tests on env=code).
* `rm` / `ensemble`: k >= 1 proxy reward models (rlhf.reward_models) scoring each whole
  episode's token ids, each normalized so that SFT samples have mean 0 and std 1
  (reward.normalize), combined by reward.objective (mean | wco | uwo, Coste et al.). A
  single RM is the ensemble with one member.
* `composite`: named component scorers of the text (envs.composite, Moskovitz et al.),
  summed with fixed weights, or, for algorithms that constrain each component
  (`vector_reward = True`), returned one column per component (`[B, L, N]`).
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch

from agents.rewards import RewardModelEnsemble, ensemble_objective
from rlhf.reward_models import reward_model_dirs
from rlhf.rollout.batch import Batch
from rlhf.rollout.runner import Episode

log = logging.getLogger("rlhf")
ENV_REWARDS = ("gold", "verifier", "unit_tests")  # reward groups that read a component of the env's reward


def prompt_offset(prompt_ids: list[int], scale: float) -> float:
    """delta(x) = scale * z(x), z(x) ~ N(0, 1) from a hash of the prompt's token ids (the same in
    every process), rounded to a multiple of 2^-16: for float32 scores r with 1e-6 <= |r| < 256 and
    |delta| < 256, r + delta is exact in float64, so (r1 + delta) - (r2 + delta) == r1 - r2 bit for bit."""
    digest = hashlib.sha256(np.asarray(prompt_ids, dtype=np.int64).tobytes()).digest()
    z = NormalDist().inv_cdf((int.from_bytes(digest[:8], "big") + 0.5) / 2**64)
    return round(scale * z * 2**16) / 2**16


class RewardSource:
    """source(episodes, batch) -> (rewards on each turn's last token, metrics); subclasses
    implement `score`. With `offset_scale` (env.prompt_reward_offset) set, the rewards come back
    in float64 with delta(x) added on each episode's last turn (every column, if [B, L, N])."""
    offset_scale = 0.0

    def __call__(self, episodes: list[Episode], batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        rewards, metrics = self.score(episodes, batch)
        if self.offset_scale:
            rewards = rewards.double()
            deltas = [prompt_offset(ep.token_ids[:ep.prompt_len], self.offset_scale) for ep in episodes]
            rewards[torch.arange(len(episodes)), [ep.turn_ends[-1] for ep in episodes]] += \
                torch.tensor(deltas, dtype=torch.float64).reshape(-1, *[1] * (rewards.dim() - 2))
        return rewards, metrics

    def to(self, device) -> "RewardSource":
        """Put the source's models (if any) on `device`; the rewards it returns stay on the CPU."""
        return self


def place_on_last_turn(episodes: list[Episode], batch: Batch, scores: torch.Tensor) -> torch.Tensor:
    rewards = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
    last_turn_end = torch.tensor([ep.turn_ends[-1] for ep in episodes])
    rewards[torch.arange(len(episodes)), last_turn_end] = scores
    return rewards


class GoldReward(RewardSource):
    """The env's own reward component. placement "turn": each turn's reward on that turn's last
    token (turn-level credit in a multi-turn episode); "episode": the episode's sum on its last
    token (trajectory-level: one outcome per episode). Single-turn envs: the same either way."""
    PLACEMENTS = ("turn", "episode")

    def __init__(self, component: str, placement: str = "turn"):
        if placement not in self.PLACEMENTS:
            raise ValueError(f"reward.placement={placement!r}; valid choices: {', '.join(self.PLACEMENTS)}")
        self.component, self.placement = component, placement

    def score(self, episodes: list[Episode], batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        rewards = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        for i, ep in enumerate(episodes):
            values = [r[self.component] if isinstance(r, dict) else float(r) for r in ep.rewards]
            if self.placement == "episode":
                rewards[i, ep.turn_ends[-1]] = sum(values)
            else:
                for end, value in zip(ep.turn_ends, values):
                    rewards[i, end] = value
        return rewards, {}


class CompositeReward(RewardSource):
    """Component scores of the whole response (every turn's text joined), on the last turn.

    Metrics: each component, the text's quality and the hidden evaluation score of the
    rollout's samples, under `composite/` (what rlhf.proxy_points reads back)."""

    def __init__(self, reward_cfg, vector: bool = False):
        from envs.composite import COMPONENTS, CompositeScorer

        self.scorer = CompositeScorer.from_config(reward_cfg)
        self.names = COMPONENTS
        self.weights = torch.tensor([float(w) for w in reward_cfg.weights], dtype=torch.float32)
        if len(self.weights) != len(self.names):
            raise ValueError(f"reward.weights needs one weight per component {list(self.names)}, "
                             f"got {list(reward_cfg.weights)}")
        self.vector = vector

    def score(self, episodes: list[Episode], batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        scored = [self.scorer.score("".join(ep.action_texts)) for ep in episodes]
        table = torch.tensor([[s[name] for name in self.names] for s in scored], dtype=torch.float32)  # [B, N]
        metrics = {f"composite/{key}": float(sum(s[key] for s in scored) / len(scored)) for key in scored[0]}
        if not self.vector:
            return place_on_last_turn(episodes, batch, table @ self.weights), metrics
        columns = [place_on_last_turn(episodes, batch, table[:, i]) for i in range(len(self.names))]
        return torch.stack(columns, dim=-1), metrics


class EnsembleReward(RewardSource):
    """`rm` / `ensemble`: the ensemble's combined score of each whole episode, on its last turn."""

    def __init__(self, ensemble: RewardModelEnsemble):
        self.ensemble = ensemble
        self.model = ensemble.model  # a member, e.g. to initialize PPO's critic from

    def to(self, device) -> "EnsembleReward":
        self.ensemble.to(device)
        return self

    def score(self, episodes: list[Episode], batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        members = self.ensemble.member_scores(batch.input_ids, batch.attention_mask)
        scores = ensemble_objective(members, self.ensemble.objective, self.ensemble.uwo_lambda)
        metrics = {}
        if len(members) > 1:  # with one reward model these would repeat objective/scores
            metrics = {"ensemble/mean": float(members.mean()), "ensemble/min": float(members.min(0).values.mean()),
                       "ensemble/std": float(members.std(0, unbiased=False).mean())}
        return place_on_last_turn(episodes, batch, scores.cpu()), metrics  # rewards are assembled on the CPU


def build_reward_source(cfg, policy_dir: Path, vector: bool = False):
    """(reward source, a reward model or None) for the `reward` config group; `vector`:
    the algorithm wants one reward column per component (composite reward only)."""
    if cfg.reward.name in ENV_REWARDS:
        source, model = GoldReward(str(cfg.reward.component), str(cfg.reward.get("placement", "turn"))), None
    elif cfg.reward.name == "composite":
        source, model = CompositeReward(cfg.reward, vector=vector), None
    else:
        source = EnsembleReward(reward_model_ensemble(cfg, policy_dir))
        model = source.model
    source.offset_scale = float(cfg.env.get("prompt_reward_offset") or 0.0)
    return source, model


def reward_model_ensemble(cfg, policy_dir: Path) -> RewardModelEnsemble:
    r = cfg.reward
    return RewardModelEnsemble(reward_model_dirs(cfg, policy_dir, log.info), bool(r.normalize), str(r.objective),
                               float(r.uwo_lambda), str(r.member_pass))
