"""PPO for RLHF at the token level (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022).

Implementation choices follow Huang et al. 2024, "The N+ Implementation Details of RLHF with
PPO" (TRL PPOv2, OpenRLHF). One rollout phase:

  1. old log-probs, reference log-probs and values by teacher-forced passes; logits are
     divided by the sampling temperature in every pass.
  2. per-token rewards (Ziegler et al. 2019, Sec. 2; Ouyang et al. 2022, Sec. 3.5, eq. 2):
         r_t = -beta * k_t,   k_t = log pi_old(a_t|s_t) - log pi_ref(a_t|s_t)   (k1; k2/k3 optional)
     plus the score on the last generated token of each turn;  or, with kl_penalty=loss,
     the KL goes into the loss as beta * k3 instead (the GRPO placement).
  3. GAE(gamma, lambda) over generated tokens only (Schulman et al. 2016, eq. 16);
     returns = A + V; advantages whitened over the batch's valid tokens.
  4. `epochs` x `minibatches` of the clipped policy loss (Schulman et al. 2017, eq. 7) and
     the clipped value loss.
  5. the adaptive KL controller (Ziegler et al. 2019, Sec. 2) sees the mean per-sequence KL.
The critic is a separate network, initialized from the reward model when the run optimizes
one (Stiennon et al. 2020; Ouyang et al. 2022), else from the policy, with a zero-initialized
value head. Its whole trunk is trained, even though the reward model it was copied from is frozen.
With shared_trunk the value head sits on the policy's own trunk instead and one trunk pass per
minibatch serves both losses: the parameter-sharing form of Schulman et al. 2017, Sec. 5, eq. 9
(L^CLIP - c1 L^VF, the value loss's gradient reaching the policy's trunk).
"""
from __future__ import annotations

import copy

import torch

from agents.models import ValueModel, aligned
from rlhf.algos.base import Algorithm, KLController, make_optimizer, minibatch_indices, optimizer_step
from rlhf.config import ConfigError
from rlhf.functional import (clipped_policy_loss, clipped_value_loss, gae, kl_estimate, masked_mean,
                             masked_sum, masked_whiten)
from rlhf.rollout.batch import Batch


class PPO(Algorithm):
    name = "ppo"

    @classmethod
    def check(cls, cfg) -> None:
        if bool(cfg.algo.get("shared_trunk", False)) and cfg.algo.critic_init == "reward_model":
            raise ConfigError("algo.shared_trunk=true puts the value head on the policy's trunk, so the critic "
                              "cannot start from the reward model (got algo.critic_init=reward_model); valid "
                              "choices with it: algo.critic_init=auto or policy")
        if cfg.algo.critic_init == "reward_model" and cfg.reward.name == "gold":
            raise ConfigError(f"algo.critic_init=reward_model needs a reward model (got reward={cfg.reward.name}); "
                              "valid choices here: algo.critic_init=auto or policy")
        if not 0.0 <= float(cfg.algo.gamma) <= 1.0:
            raise ConfigError(f"algo.gamma={cfg.algo.gamma} must lie in [0, 1]")

    def __init__(self, cfg, policy, ref, tokenizer, reward_model: ValueModel | None = None, **kw):
        super().__init__(cfg, policy, ref, tokenizer)
        a = self.algo_cfg
        self.shared = bool(a.get("shared_trunk", False))
        if self.shared:  # eq. 9's one network: the critic's trunk *is* the policy's decoder
            self.critic = ValueModel(policy.get_decoder(), head_init="zeros")
        elif a.critic_init in ("auto", "reward_model") and reward_model is not None:
            self.critic = ValueModel(copy.deepcopy(reward_model.trunk), head_init="zeros")
        else:
            self.critic = ValueModel.from_lm(policy, head_init="zeros")
        # what the critic adds to the optimizer: the head alone when the trunk is the policy's
        self.critic_own = self.critic.head if self.shared else self.critic
        # A deep copy keeps its source's requires_grad flags, and the reward model is loaded
        # frozen: without this only the head would be optimized. The critic trains every parameter.
        self.critic_own.requires_grad_(True)
        self.critic.train()
        self.optimizer = make_optimizer(list(policy.parameters()) + list(self.critic_own.parameters()), a)
        self.kl_ctl = KLController(a.kl_coef, bool(a.adaptive_kl), a.kl_target, a.kl_horizon)
        self.generator = torch.Generator().manual_seed(int(cfg.seed))

    def modules(self):
        return {"policy": self.policy, "value_head" if self.shared else "critic": self.critic_own}

    def state_dict(self):
        return {"optimizer": self.optimizer.state_dict(), "kl_ctl": self.kl_ctl.state_dict(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.generator.set_state(state["generator"])

    def scores_on_tokens(self, batch: Batch, turn_rewards: torch.Tensor) -> torch.Tensor:
        """Clipped turn scores, minus the missing-EOS penalty on the final turn's last token."""
        a = self.algo_cfg
        scores = turn_rewards.clamp(-a.reward_clip, a.reward_clip) * batch.turn_end_mask
        if a.missing_eos_penalty:
            last = batch.attention_mask.sum(-1) - 1
            unfinished = (~batch.finished).float() * float(a.missing_eos_penalty)
            scores[torch.arange(len(batch)), last] -= unfinished
        return scores

    def token_rewards(self, batch: Batch, turn_rewards: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor,
                      beta: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, non_score): the per-token reward is their sum (Ouyang et al. 2022, eq. 2).

        scores: the clipped score on the last generated token of each turn, 0 elsewhere;
        non_score: -beta * k_t on generated tokens, k_t = log pi(a_t) - log pi_ref(a_t) for k1
        (0 with kl_penalty=loss, where the KL enters the loss instead)."""
        a, mask = self.algo_cfg, batch.action_mask
        kl = kl_estimate(logp, ref_logp, a.kl_estimator) * mask
        non_score = -beta * kl if a.kl_penalty == "reward" else torch.zeros_like(kl)
        return self.scores_on_tokens(batch, turn_rewards), non_score

    def step(self, batch: Batch, turn_rewards: torch.Tensor) -> dict[str, float]:
        a, mask = self.algo_cfg, batch.action_mask
        beta = self.kl_ctl.value
        with torch.no_grad():
            old_logp = self.old_logprobs(batch)
            ref_logp = self.frozen_logprobs(self.ref, batch)
            old_values = self.critic.values(batch.input_ids, batch.attention_mask) * mask
            scores, non_score = self.token_rewards(batch, turn_rewards, old_logp, ref_logp, beta)
            rewards = scores + non_score
            if a.whiten_rewards:
                rewards = masked_whiten(rewards, mask, shift_mean=False)
            advantages, returns = gae(rewards, old_values, mask, float(a.gamma), float(a.lam))
            if a.whiten_advantages:
                advantages = masked_whiten(advantages, mask)

        stats: dict[str, list[float]] = {}
        for _ in range(int(a.epochs)):
            for idx in minibatch_indices(len(batch), int(a.minibatches), self.generator):
                mb, m = batch.select(idx), mask[idx]
                if self.shared:  # one trunk pass: log-probs and values (eq. 9)
                    logp, token_ent, raw = self.action_logprobs(self.policy, mb, entropy=True, value_head=self.critic.head)
                    values = aligned(raw)
                else:
                    logp, token_ent = self.action_logprobs(self.policy, mb, entropy=True)
                    values = self.critic.values(mb.input_ids, mb.attention_mask)
                pg_loss, pg_stats = clipped_policy_loss(logp, old_logp[idx], advantages[idx], m, float(a.clip))
                vf_loss, vf_stats = clipped_value_loss(values, old_values[idx], returns[idx], m, float(a.value_clip))
                loss = pg_loss + float(a.vf_coef) * vf_loss
                if a.kl_penalty == "loss":
                    loss = loss + beta * masked_mean(kl_estimate(logp, ref_logp[idx], "k3"), m)
                entropy = masked_mean(token_ent, m)
                if a.entropy_coef:
                    loss = loss - float(a.entropy_coef) * entropy
                grad_norm = optimizer_step(self.optimizer, loss, float(a.max_grad_norm))
                for key, value in {"loss/policy": pg_loss, "loss/value": vf_loss, "objective/entropy": entropy,
                                   "policy/clipfrac": pg_stats["clipfrac"], "policy/approxkl": pg_stats["approxkl"],
                                   "val/ratio": pg_stats["ratio"], "val/clipfrac": vf_stats["clipfrac"],
                                   "policy/grad_norm": grad_norm}.items():
                    stats.setdefault(key, []).append(float(value.detach()) if torch.is_tensor(value) else float(value))

        sequence_kl = masked_sum(kl_estimate(old_logp, ref_logp, "k1"), mask, dim=-1)
        self.kl_ctl.update(float(sequence_kl.mean()), len(batch))
        metrics = {key: sum(v) / len(v) for key, v in stats.items()}
        non_score_total = non_score.sum(-1).mean().item()
        metrics.update({
            "objective/kl": float(sequence_kl.mean()),
            "objective/non_score_reward": non_score_total,
            "objective/rlhf_reward": float(scores.sum(-1).mean()) + non_score_total,
            "objective/kl_coef": beta,
            "val/mean": float(masked_mean(old_values, mask)),
            "val/advantage_mean": float(masked_mean(advantages, mask)),
        })
        return metrics
