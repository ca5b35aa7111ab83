"""Reward sources: what an algorithm optimizes, selected by the `reward` config group.

A source turns finished episodes into the optimization reward of each turn, placed on the
turn's last generated token (`[B, L]`, zeros elsewhere), plus metrics to log.

* `gold`: a named component of the environment's own reward (the gold scorer on env=text).
* `rm` / `ensemble`: k >= 1 proxy reward models (rlhf.algos.rm) scoring each whole
  episode's token ids, each normalized so that SFT samples have mean 0 and std 1
  (reward.normalize), combined by reward.objective (mean | wco | uwo, Coste et al.). A
  single RM is the ensemble with one member.
* `composite`: named component scorers of the text (envs.composite, Moskovitz et al.),
  summed with fixed weights, or, for algorithms that constrain each component
  (`vector_reward = True`), returned one column per component (`[B, L, N]`).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from agents.models import ValueModel
from rlhf.functional import ensemble_objective
from rlhf.rollout.batch import Batch
from rlhf.rollout.runner import Episode


def place_on_last_turn(episodes: list[Episode], batch: Batch, scores: torch.Tensor) -> torch.Tensor:
    rewards = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
    last_turn_end = torch.tensor([ep.turn_ends[-1] for ep in episodes])
    rewards[torch.arange(len(episodes)), last_turn_end] = scores
    return rewards


class GoldReward:
    def __init__(self, component: str):
        self.component = component

    def __call__(self, episodes: list[Episode], batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        rewards = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        for i, ep in enumerate(episodes):
            for end, r in zip(ep.turn_ends, ep.rewards):
                rewards[i, end] = r[self.component] if isinstance(r, dict) else float(r)
        return rewards, {}


class CompositeReward:
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

    def __call__(self, episodes: list[Episode], batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        scored = [self.scorer.score("".join(ep.action_texts)) for ep in episodes]
        table = torch.tensor([[s[name] for name in self.names] for s in scored], dtype=torch.float32)  # [B, N]
        metrics = {f"composite/{key}": float(sum(s[key] for s in scored) / len(scored)) for key in scored[0]}
        if not self.vector:
            return place_on_last_turn(episodes, batch, table @ self.weights), metrics
        columns = [place_on_last_turn(episodes, batch, table[:, i]) for i in range(len(self.names))]
        return torch.stack(columns, dim=-1), metrics


class RewardModelEnsemble:
    """k reward models over one tokenized batch.

    member_pass: `loop` runs the members one after another on the shared padded batch;
    `vmap` runs them as one batched call (torch.func over stacked weights). On these CPUs
    the loop is faster (measured 0.11 s vs 0.35 s for 5 members x 64 sequences: SDPA has no
    vmap batching rule on CPU), so `auto` picks vmap only on CUDA."""

    def __init__(self, paths: list[Path], normalize: bool = True, objective: str = "mean",
                 uwo_lambda: float = 0.5, member_pass: str = "auto"):
        self.members = [ValueModel.load(p).eval().requires_grad_(False) for p in paths]
        stats = [json.loads((Path(p) / "metrics.json").read_text()) for p in paths]
        self.shift = torch.tensor([s["rm/score_mean"] if normalize else 0.0 for s in stats]).unsqueeze(1)
        self.scale = torch.tensor([s["rm/score_std"] if normalize else 1.0 for s in stats]).unsqueeze(1)
        self.objective, self.uwo_lambda = objective, float(uwo_lambda)
        ensemble_objective(torch.zeros(len(paths), 1), objective)  # rejects wco/uwo with k = 1 now
        self.member_pass = member_pass
        self._stacked = None

    @property
    def model(self) -> ValueModel:
        """A member, e.g. to initialize PPO's critic from."""
        return self.members[0]

    @torch.no_grad()
    def member_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[k, B] normalized scores."""
        use_vmap = self.member_pass == "vmap" or (self.member_pass == "auto" and input_ids.is_cuda)
        if use_vmap and len(self.members) > 1:
            raw = self._vmap_scores(input_ids, attention_mask)
        else:
            raw = torch.stack([m.score(input_ids, attention_mask) for m in self.members])
        return (raw - self.shift.to(raw.device)) / self.scale.to(raw.device)

    def _vmap_scores(self, input_ids, attention_mask) -> torch.Tensor:
        from torch.func import functional_call, stack_module_state

        if self._stacked is None:
            params, buffers = stack_module_state(self.members)
            skeleton = _ScoreOnly(copy.deepcopy(self.members[0]).to("meta"))
            self._stacked = ({f"m.{k}": v for k, v in params.items()},
                             {f"m.{k}": v for k, v in buffers.items()}, skeleton)
        params, buffers, skeleton = self._stacked
        return torch.vmap(lambda p, b: functional_call(skeleton, (p, b), (input_ids, attention_mask)))(params, buffers)

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return ensemble_objective(self.member_scores(input_ids, attention_mask), self.objective, self.uwo_lambda)

    def __call__(self, episodes: list[Episode], batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        members = self.member_scores(batch.input_ids, batch.attention_mask)
        scores = ensemble_objective(members, self.objective, self.uwo_lambda)
        metrics = {"ensemble/mean": float(members.mean()),
                   "ensemble/min": float(members.min(0).values.mean()),
                   "ensemble/std": float(members.std(0, unbiased=False).mean())}
        return place_on_last_turn(episodes, batch, scores), metrics


class _ScoreOnly(torch.nn.Module):
    """forward = ValueModel.score, so functional_call can run the score path."""

    def __init__(self, model: ValueModel):
        super().__init__()
        self.m = model

    def forward(self, input_ids, attention_mask):
        return self.m.score(input_ids, attention_mask)
