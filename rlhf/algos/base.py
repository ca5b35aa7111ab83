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
import torch.nn.functional as F
from torch import nn

from agents.models import grouped, lm_forward, position_ids_from_mask, real_width
from rlhf.functional import action_token_logprobs, token_entropy, token_logprobs
from rlhf.rollout.batch import Batch


class Algorithm:
    name = "base"
    runs_on_cuda = True  # the shared loop places models and batches on cfg.device (checked per algorithm on a GPU)

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

    def action_logprobs(self, model: nn.Module, batch: Batch, entropy: bool = False,
                        value_head: nn.Module | None = None) -> tuple:
        """(log-probs, entropies or None) per token at the rollout temperature, on generated
        tokens only (0 elsewhere); grads flow if enabled. The LM head, log-softmax and entropy
        run on the rows of generated tokens alone (a third of a padded batch's cells): the
        same numbers as `logprobs` there, bit for bit in the forward pass (docs/profile.md).
        With `value_head`, also its output at every position from the same trunk pass."""
        return action_forward(model, batch.input_ids, batch.attention_mask, batch.action_mask,
                              self.temperature, entropy, batch.allowed_ids, value_head)

    @torch.no_grad()
    def frozen_logprobs(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.action_logprobs(model, batch)[0]

    def old_logprobs(self, batch: Batch) -> torch.Tensor:
        """pi_old: the trainer's recomputation when it made one, else computed here."""
        if batch.old_logprobs is not None:
            return batch.old_logprobs
        return self.frozen_logprobs(self.policy, batch)


# Causal LMs whose logits are exactly `get_output_embeddings()(last hidden state)` (no logit
# scaling or soft-capping in the head): only these take the generated-tokens-only head.
PLAIN_HEAD_MODEL_TYPES = ("qwen2", "qwen3", "llama", "mistral")


def action_forward(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   action_mask: torch.Tensor, temperature: float = 1.0, entropy: bool = False,
                   allowed: torch.Tensor | None = None, value_head: nn.Module | None = None) -> tuple:
    """Teacher-forced log-probs (and entropies) of the tokens where action_mask is 1, with the
    LM head applied only at the positions that predict them; 0 elsewhere. Models outside
    PLAIN_HEAD_MODEL_TYPES take the full forward and are masked the same way. `allowed`
    [B, L, K]: constrained decoding's allowed ids per token (rlhf.functional.constrain_logits).
    With `value_head` (a value head on the policy's own trunk) the same trunk pass also gives
    the head's output at every position, [B, L] (0 on dropped padding columns), as a third result."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if getattr(model.config, "model_type", None) in PLAIN_HEAD_MODEL_TYPES and head is not None:
        split = grouped(lambda ids, mask, act, allow: action_forward(model, ids, mask, act, temperature, entropy, allow,
                                                                     value_head),
                        attention_mask, input_ids, attention_mask, action_mask, allowed)  # long rows: by length
        if split is not None:
            return split
        # right padding: columns past the longest row are padding in every row; drop them
        width, full = real_width(attention_mask), input_ids.shape[1]
        ids, mask = input_ids[:, :width], attention_mask[:, :width]
        hidden = model.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                                     use_cache=False).last_hidden_state
        logp, ent = action_token_logprobs(hidden, head, ids, action_mask[:, :width], temperature, entropy,
                                          None if allowed is None else allowed[:, :width])
        out = (F.pad(logp, (0, full - width)), None if ent is None else F.pad(ent, (0, full - width)))
        if value_head is None:
            return out
        return (*out, F.pad(value_head(hidden.float()).squeeze(-1), (0, full - width)))
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask),
                use_cache=False, output_hidden_states=value_head is not None)
    keep = action_mask.bool()
    logp = torch.where(keep, token_logprobs(out.logits, input_ids, temperature, allowed), 0.0)
    ent = torch.where(keep, token_entropy(out.logits, temperature, allowed), 0.0) if entropy else None
    if value_head is None:
        return logp, ent
    return logp, ent, value_head(out.hidden_states[-1].float()).squeeze(-1)


def make_optimizer(params, algo_cfg) -> torch.optim.Optimizer:
    betas = tuple(float(b) for b in algo_cfg.get("adam_betas", (0.9, 0.999)))
    # foreach: one kernel per op over all tensors instead of a Python loop over parameters;
    # the same arithmetic, bit for bit, as the per-tensor loop on CPU (docs/profile.md)
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=float(algo_cfg.lr), foreach=True,
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
