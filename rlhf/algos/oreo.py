"""OREO: Offline REasoning Optimization (Wang et al. 2024, "Offline Reinforcement Learning for
LLM Multi-Step Reasoning").

Token-level MDP s_t = (x, y_<t), a_t = y_t, sparse terminal reward R, and the KL-regularized
objective max E[sum_t r_t - beta log pi/pi_ref]. Its optimal pair satisfies the soft Bellman
equation (section 3, eq. 5); telescoped to the end of the response it reads

    V*(s_t) = R - beta * sum_{i>=t} log pi*(a_i|s_i)/pi_ref(a_i|s_i)

OREO fits a value V_phi and a policy pi_theta to it from offline scored samples (section 4.1):

    lambda_i  = log pi_theta(a_i|s_i) - log pi_ref(a_i|s_i),   Lambda_t = sum_{i>=t} lambda_i
    L_V(phi)  = mean_seq 1/|S| sum_{t in S} (V_phi(s_t) - R + beta sg[Lambda_t])^2                 (eq. 8)
    L_pi      = mean_seq 1/|S| sum_{t in S} (sg[V_phi(s_t)] - R + beta lambda_t
                                             + beta sg[Lambda_{t+1}])^2 + alpha L_reg         (eq. 9)
    L_reg     = mean over response tokens of KL(pi_theta(.|s_t) || pi_ref(.|s_t))   (full vocabulary)

S runs from the last prompt token to the second-to-last token: one state per action token,
the state whose action is the final EOS included. `algo.level`:
  * token (default): every action token is a state (the equations above);
  * step: states only at reasoning-step starts (section 4.2); the policy term of step j is
    beta * (log-ratio of step j's tokens) + sg[beta * Lambda at the next step's start];
  * response: only t = 0, L = (V(s_0) - R + beta Lambda_0)^2 + alpha L_reg (the "response-level"
    ablation, which assigns credit worse).
All three are one computation: states at "starts", and the gradient flows through the
log-ratios from a state up to the next start. Per minibatch the critic steps first, then the
actor, with the post-update critic's values detached (the authors' training loop).

Under constrained decoding (env.constrain_actions: the action must spell one of the env's
admissible commands) pi_theta and pi_ref are the distributions the agent acts with,
renormalized over the ids each action token was allowed (the samples carry them), in lambda_t
and in L_reg alike; a token the constraint forces has log-prob 0 under both.

The critic is a separate copy of the SFT trunk with a zero-initialized value head; pi_ref is
the SFT policy, fixed. Value-guided step beam search at test time: rlhf.search.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from agents.models import ValueModel, lm_forward
from rlhf.algos.base import optimizer_step
from rlhf.config import ConfigError
from rlhf.functional import aligned, constrain_logits
from rlhf.offline import Minibatch, OfflineRounds, evaluate  # noqa: F401  (evaluate: python -m rlhf.evaluate)
from rlhf.rollout.guidance import VALUE_MODEL_DIR

log = logging.getLogger("rlhf")
LEVELS = ("token", "step", "response")


def reverse_cumsum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Lambda_t = sum_{i>=t} x_i over masked positions, in fp32 (padding and observation
    tokens contribute 0)."""
    x = (x * mask).float()
    return x.flip(-1).cumsum(-1).flip(-1)


def tail_at_next_start(tail: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """For each position t, `tail` at the first state start after t (0 when there is none)."""
    out = torch.zeros_like(tail)
    following = torch.zeros_like(tail[:, 0])
    for t in range(tail.shape[1] - 1, -1, -1):
        out[:, t] = following
        following = torch.where(starts[:, t] > 0, tail[:, t], following)
    return out


def state_starts(batch: Minibatch, level: str, splitter) -> torch.Tensor:
    """[B, L] 1 at the action tokens whose state is trained (aligned to the action token)."""
    if level == "token":
        return batch.action_mask.clone()
    starts = torch.zeros_like(batch.action_mask)
    first = batch.action_mask.argmax(-1)  # the first response token of each row
    for i, texts in enumerate(batch.token_texts):
        flags = splitter.step_starts(texts) if level == "step" else [1] + [0] * (len(texts) - 1)
        starts[i, first[i]:first[i] + len(flags)] = torch.tensor(flags, dtype=starts.dtype)
    return starts


def oreo_losses(logp, ref_logp, values, returns, action_mask, starts, beta: float):
    """(L_V, L_pi without the KL term, per-row valid flag) from aligned [B, L] tensors:
    logp (with grad), ref_logp, values (V of the state before each token) and the state
    starts. Rows with no state are skipped."""
    log_ratio = logp - ref_logp  # lambda_t
    tail = reverse_cumsum(log_ratio, action_mask)  # Lambda_t, with grad through pi_theta
    next_tail = tail_at_next_start(tail, starts)  # Lambda at the next state start
    R = returns.unsqueeze(1)
    n_states = starts.sum(-1)
    valid = n_states > 0
    per_state = lambda sq: (sq * starts).sum(-1)[valid] / n_states[valid]  # noqa: E731
    value_loss = per_state((values - R + beta * tail.detach()) ** 2).mean()
    # beta * (tail - next_tail) is beta * lambda_t at token level (the step's log-ratio at step level)
    actor_td = values.detach() - R + beta * (tail - next_tail) + beta * next_tail.detach()
    policy_loss = per_state(actor_td ** 2).mean()
    return value_loss, policy_loss, valid


def policy_logprobs(logits: torch.Tensor, input_ids: torch.Tensor,
                    allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(. | tokens_<t) over the vocabulary at position t [B, L, V], and log pi(token_t | tokens_<t)
    [B, L] (column 0 is 0), in fp32. Under constrained decoding (`allowed` [B, L, K], aligned to
    token t) pi is renormalized over the allowed ids, the distribution the policy acts with; the
    constraint is applied once and serves both lambda_t and the KL regularizer."""
    full = F.log_softmax(constrain_logits(aligned(logits.float()), allowed), -1)
    taken = full.gather(-1, input_ids.unsqueeze(-1)).squeeze(-1)
    return full, F.pad(taken[:, 1:], (1, 0))


def full_kl(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked tokens of KL(pi || pi_ref) over the whole vocabulary, from the two
    log-distributions [B, L, V] (policy_logprobs); ids outside a constraint (-inf) contribute 0."""
    kl = (logp.exp() * torch.where(logp.isfinite(), logp - ref_logp, 0.0)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


class OREO(OfflineRounds):
    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        if str(cfg.algo.level) not in LEVELS:
            raise ConfigError(f"algo.level={cfg.algo.level} unknown; valid choices: {', '.join(LEVELS)}")
        if float(cfg.algo.beta) <= 0:
            raise ConfigError(f"algo.beta={cfg.algo.beta} must be > 0 (the KL temperature of the soft Bellman equation)")
        if str(cfg.algo.level) == "step" and not getattr(_env_class(cfg), "has_steps", False):
            raise ConfigError(f"algo.level=step needs an env with reasoning steps (env=math), not env={cfg.env.name}")

    def __init__(self, cfg, run_dir):
        super().__init__(cfg, run_dir)
        a = cfg.algo
        self.beta, self.alpha, self.level = float(a.beta), float(a.alpha), str(a.level)
        self.critic = ValueModel.from_lm(self.policy, head_init="zeros")  # separate copy of the SFT trunk
        self.critic.requires_grad_(True)
        betas = (float(a.adam_beta1), float(a.adam_beta2))
        self.actor_opt = torch.optim.Adam(self.policy.parameters(), lr=float(a.actor_lr), betas=betas)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=float(a.critic_lr), betas=betas)
        self.splitter = getattr(self.env, "splitter", None)
        log.info(f"[oreo] level={self.level} beta={self.beta} alpha={self.alpha}; reward convention "
                 f"R = {a.reward_scale} * verifier + {a.reward_shift}")

    def update(self, batch: Minibatch) -> dict[str, float]:
        a, ids, attn, mask = self.cfg.algo, batch.input_ids, batch.attention_mask, batch.action_mask
        allowed = batch.allowed_ids  # constrained decoding: pi and pi_ref renormalized over the allowed ids
        starts = state_starts(batch, self.level, self.splitter)
        with torch.no_grad():
            ref_full, ref_logp = policy_logprobs(lm_forward(self.ref, ids, attn), ids, allowed)
        full, logp = policy_logprobs(lm_forward(self.policy, ids, attn), ids, allowed)
        # 1) critic step on sg[Lambda]
        value_loss, _, valid = oreo_losses(logp.detach(), ref_logp, self.critic.values(ids, attn), batch.returns,
                                           mask, starts, self.beta)
        critic_norm = optimizer_step(self.critic_opt, value_loss, float(a.max_grad_norm))
        # 2) actor step against the updated critic's values, detached
        with torch.no_grad():
            values = self.critic.values(ids, attn)
        _, policy_loss, _ = oreo_losses(logp, ref_logp, values, batch.returns, mask, starts, self.beta)
        kl_reg = full_kl(full, ref_full, mask)
        actor_norm = optimizer_step(self.actor_opt, policy_loss + self.alpha * kl_reg, float(a.max_grad_norm))
        with torch.no_grad():
            first = mask.argmax(-1)
            last = mask.shape[1] - 1 - mask.flip(-1).argmax(-1)  # the EOS action
            v0 = values.gather(1, first.unsqueeze(1)).squeeze(1)  # V(s_0): the state at the last prompt token
            v_end = values.gather(1, last.unsqueeze(1)).squeeze(1)  # V of the last state (its action is EOS)
            log_ratio_sum = ((logp - ref_logp) * mask).sum(-1)
        correct = batch.scores > 0.5
        by_outcome = {f"oreo/value_last_{name}": float(v_end[rows].mean())
                      for name, rows in (("correct", correct), ("wrong", ~correct)) if rows.any()}
        return {"oreo/value_loss": float(value_loss.detach()), "oreo/policy_loss": float(policy_loss.detach()),
                "oreo/kl_reg": float(kl_reg.detach()), "oreo/value_s0": float(v0.mean()), **by_outcome,
                "oreo/value_mean": float((values * starts).sum() / starts.sum().clamp(min=1)),
                "oreo/log_ratio_sum": float(log_ratio_sum.mean()), "oreo/return_mean": float(batch.returns.mean()),
                "oreo/states_per_seq": float(starts.sum(-1).float().mean()), "oreo/skipped_rows": float((~valid).sum()),
                "oreo/critic_grad_norm": critic_norm, "oreo/actor_grad_norm": actor_norm}

    def optimizers(self):
        return {"actor": self.actor_opt, "critic": self.critic_opt}

    def modules(self):
        return {"policy": self.policy, "critic": self.critic}

    def write_extra(self, checkpoint_dir: Path) -> None:
        super().write_extra(checkpoint_dir)
        self.critic.save(checkpoint_dir / VALUE_MODEL_DIR)  # what value-guided search loads


def _env_class(cfg):
    from envs import base as env_base

    return env_base.env_class(str(cfg.env.name))
