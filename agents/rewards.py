"""Reward models as judges: an ensemble of k >= 1 proxy reward models (Bradley-Terry trained,
rlhf.reward_models) over one tokenized batch, each normalized so that SFT samples have mean 0
and std 1, combined by an objective: mean, wco (worst case) or uwo (uncertainty weighted),
Coste et al. 2024 (Section 3). The reward *sources* that turn episodes into per-token rewards
for training live in rlhf.rewards."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from agents.models import ValueModel

ENSEMBLE_OBJECTIVES = ("mean", "wco", "uwo")


def ensemble_objective(member_scores: torch.Tensor, objective: str, uwo_lambda: float = 0.5) -> torch.Tensor:
    """Combine [k, B] member scores into one reward per sample.

    mean: average over members;  wco (worst-case): minimum over members;
    uwo (uncertainty-weighted): mean - lambda * variance over members (population variance)."""
    k = member_scores.shape[0]
    if objective not in ENSEMBLE_OBJECTIVES:
        raise ValueError(f"ensemble objective '{objective}' unknown; valid choices: {', '.join(ENSEMBLE_OBJECTIVES)}")
    if objective in ("wco", "uwo") and k < 2:
        raise ValueError(f"objective '{objective}' needs an ensemble of at least 2 members, got {k}")
    if objective == "mean":
        return member_scores.mean(0)
    if objective == "wco":
        return member_scores.min(0).values
    return member_scores.mean(0) - uwo_lambda * member_scores.var(0, unbiased=False)


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

    def to(self, device) -> "RewardModelEnsemble":
        """Move every member (and the normalization) to `device`; scoring then takes inputs there."""
        self.members = [m.to(device) for m in self.members]
        self.shift, self.scale, self._stacked = self.shift.to(device), self.scale.to(device), None
        return self

    @property
    def device(self) -> torch.device:
        return next(self.members[0].parameters()).device

    @property
    def model(self) -> ValueModel:
        """A member, e.g. to initialize PPO's critic from."""
        return self.members[0]

    @torch.no_grad()
    def member_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[k, B] normalized scores, on the members' device."""
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
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


class _ScoreOnly(torch.nn.Module):
    """forward = ValueModel.score, so functional_call can run the score path."""

    def __init__(self, model: ValueModel):
        super().__init__()
        self.m = model

    def forward(self, input_ids, attention_mask):
        return self.m.score(input_ids, attention_mask)
