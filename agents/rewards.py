"""Reward sources: what an algorithm optimizes, selected by the `reward` config group.

A source turns finished episodes into the optimization reward of each turn, placed on the
turn's last generated token (`[B, L]`, zeros elsewhere), plus metrics to log.

* `gold`: a named component of the environment's own reward (the gold scorer on env=text).
* `rm`: a proxy reward model (rlhf.algos.rm) scoring each whole episode's token ids,
  normalized so that SFT samples have mean 0 and std 1 (reward.normalize).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from agents.models import ValueModel
from rlhf.rollout.batch import Batch
from rlhf.rollout.runner import Episode


class GoldReward:
    def __init__(self, component: str):
        self.component = component

    def __call__(self, episodes: list[Episode], batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        rewards = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        for i, ep in enumerate(episodes):
            for end, r in zip(ep.turn_ends, ep.rewards):
                rewards[i, end] = r[self.component] if isinstance(r, dict) else float(r)
        return rewards, {}


class ModelReward:
    def __init__(self, path: Path, normalize: bool):
        self.model = ValueModel.load(path).eval()
        self.model.requires_grad_(False)
        stats = json.loads((Path(path) / "metrics.json").read_text())
        self.shift = stats["rm/score_mean"] if normalize else 0.0
        self.scale = stats["rm/score_std"] if normalize else 1.0

    @torch.no_grad()
    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return (self.model.score(input_ids, attention_mask) - self.shift) / self.scale

    def __call__(self, episodes: list[Episode], batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        scores = self.score(batch.input_ids, batch.attention_mask)
        rewards = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        last_turn_end = torch.tensor([ep.turn_ends[-1] for ep in episodes])
        rewards[torch.arange(len(episodes)), last_turn_end] = scores
        return rewards, {}
