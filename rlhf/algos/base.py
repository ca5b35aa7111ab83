"""What every RL algorithm shares: the interface the trainer calls, teacher-forced
log-prob passes, the optimizer, the KL controller and running reward statistics.

An algorithm receives a rollout `Batch` and the optimization reward of each turn (placed
on the turn's last generated token, `turn_rewards[B, L]`), updates the policy in place and
returns metrics. It never generates, scores or logs by itself: the trainer does that, so
the same algorithm runs unchanged on any engine or launcher.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from agents.models import lm_forward
from rlhf.functional import token_logprobs
from rlhf.rollout.batch import Batch


class Algorithm:
    name = "base"

    def __init__(self, cfg, policy: nn.Module, ref: nn.Module, tokenizer, **_: Any):
        self.cfg = cfg
        self.algo_cfg = cfg.algo
        self.policy = policy
        self.ref = ref
        self.tokenizer = tokenizer
        self.temperature = float(cfg.rollout.temperature) or 1.0  # greedy rollouts score at tau=1

    @property
    def samples_per_prompt(self) -> int:
        return int(self.algo_cfg.samples_per_prompt)

    def step(self, batch: Batch, turn_rewards: torch.Tensor) -> dict[str, float]:
        raise NotImplementedError

    def modules(self) -> dict[str, nn.Module]:
        """Trainable modules, saved in checkpoints by name."""
        return {"policy": self.policy}

    def state_dict(self) -> dict[str, Any]:
        """Optimizer and controller state (module weights are saved by the checkpointer)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def write_extra(self, checkpoint_dir) -> None:
        """Add files to a checkpoint being written (e.g. a value model in HF layout)."""

    def eval_processors(self) -> list:
        """Logits processors for held-out evaluation (a decoding mode the algorithm implies)."""
        return []

    # --- helpers -------------------------------------------------------------------------
    def logprobs(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-token log-probs at the rollout temperature, logits); grads flow if enabled."""
        logits = lm_forward(model, batch.input_ids, batch.attention_mask)
        return token_logprobs(logits, batch.input_ids, self.temperature), logits

    @torch.no_grad()
    def frozen_logprobs(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.logprobs(model, batch)[0]

    def old_logprobs(self, batch: Batch) -> torch.Tensor:
        """pi_old: the trainer's recomputation when it made one, else computed here."""
        if batch.old_logprobs is not None:
            return batch.old_logprobs
        return self.frozen_logprobs(self.policy, batch)


def make_optimizer(params, algo_cfg) -> torch.optim.Optimizer:
    betas = tuple(float(b) for b in algo_cfg.get("adam_betas", (0.9, 0.999)))
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=float(algo_cfg.lr),
                             betas=betas, eps=float(algo_cfg.get("adam_eps", 1e-8)),
                             weight_decay=float(algo_cfg.get("weight_decay", 0.0)))


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, max_grad_norm: float) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else math.inf)
    optimizer.step()
    return float(norm)


def minibatch_indices(n: int, num_minibatches: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    return [chunk for chunk in order.chunk(max(1, min(num_minibatches, n)))]


class KLController:
    """Fixed beta, or the adaptive rule of Ziegler et al. (2019):
    e = clip(KL / target - 1, -0.2, 0.2);  beta <- beta * (1 + e * n / horizon)."""

    def __init__(self, init: float, adaptive: bool = False, target: float = 6.0, horizon: float = 10000):
        self.value, self.adaptive, self.target, self.horizon = float(init), adaptive, float(target), float(horizon)

    def update(self, kl: float, n_sequences: int) -> None:
        if self.adaptive:
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_sequences / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class RunningMoments:
    """Running mean and std over all values seen (Chan et al. parallel update)."""

    def __init__(self):
        self.mean, self.var, self.count = 0.0, 1.0, 0

    def update(self, x: torch.Tensor) -> None:
        n = x.numel()
        if n == 0:
            return
        batch_mean, batch_var = float(x.mean()), float(x.var(unbiased=False))
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var, self.count = m2 / total, total

    @property
    def std(self) -> float:
        return math.sqrt(self.var) if self.count > 1 else 1.0

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), int(state["count"])
