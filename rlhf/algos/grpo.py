"""GRPO: Group Relative Policy Optimization (Shao et al. 2024, "DeepSeekMath: Pushing the
Limits of Mathematical Reasoning in Open Language Models", section 4.1.2).

No critic: G responses are sampled per prompt and each response's advantage is its reward
standardized within its group (outcome supervision, eq. 3 context):

    A_i = (r_i - mean(r_1..r_G)) / std(r_1..r_G)          for every token of response i

and the policy maximizes the clipped surrogate with the KL to the reference in the loss
(k3, the unbiased estimator of eq. 4):

    J = 1/G sum_i 1/|o_i| sum_t [ min(rho_t A_i, clip(rho_t, 1-eps, 1+eps) A_i) - beta * k3_t ]
    k3_t = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1,    rho_t = pi_theta/pi_old

`algo.loss_aggregation=token` averages over all tokens of the batch instead of per response
(Yu et al. 2025, DAPO, section 3.3), and `algo.scale_rewards=false` drops the division by the
group's std (Liu et al. 2025, "Understanding R1-Zero-Like Training", Dr. GRPO). Groups are the
trainer's adjacent samples of one prompt (train.prompts_per_step prompts x G samples).
"""
from __future__ import annotations

import torch

from rlhf.algos.base import Algorithm, make_optimizer, minibatch_indices, optimizer_step
from rlhf.config import ConfigError
from rlhf.functional import kl_estimate, masked_mean, masked_sum
from rlhf.rollout.batch import Batch

AGGREGATIONS = ("sequence", "token")


def group_advantages(scores: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """[B] rewards of adjacent groups of `group_size` -> [B] group-standardized advantages."""
    groups = scores.view(-1, group_size)
    centred = groups - groups.mean(1, keepdim=True)
    if scale:
        centred = centred / (groups.std(1, keepdim=True) + eps)
    return centred.reshape(-1)


class GRPO(Algorithm):
    name = "grpo"

    @classmethod
    def check(cls, cfg) -> None:
        if int(cfg.algo.samples_per_prompt) < 2:
            raise ConfigError(f"algo.samples_per_prompt={cfg.algo.samples_per_prompt}: GRPO's baseline is the group "
                              "of samples of one prompt, so it needs >= 2")
        if str(cfg.algo.loss_aggregation) not in AGGREGATIONS:
            raise ConfigError(f"algo.loss_aggregation={cfg.algo.loss_aggregation} unknown; valid choices: "
                              f"{', '.join(AGGREGATIONS)}")

    def __init__(self, cfg, policy, ref, tokenizer, **kw):
        super().__init__(cfg, policy, ref, tokenizer)
        self.optimizer = make_optimizer(policy.parameters(), self.algo_cfg)
        self.generator = torch.Generator().manual_seed(int(cfg.seed))

    def state_dict(self):
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])

    def surrogate(self, logp, old_logp, ref_logp, advantages, mask):
        """The negated objective J on a minibatch (a loss), and its clip fraction."""
        a = self.algo_cfg
        ratio = (logp - old_logp).clamp(-20, 20).exp()
        adv = advantages.unsqueeze(1)
        eps = float(a.clip)
        per_token = -torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
        per_token = per_token + float(a.kl_coef) * kl_estimate(logp, ref_logp, "k3")
        if a.loss_aggregation == "sequence":  # 1/G sum_i 1/|o_i| sum_t
            loss = (masked_sum(per_token, mask, dim=-1) / mask.sum(-1).clamp(min=1)).mean()
        else:
            loss = masked_mean(per_token, mask)
        clipfrac = masked_mean(((ratio - 1).abs() > eps).float(), mask)
        return loss, clipfrac

    def step(self, batch: Batch, turn_rewards: torch.Tensor) -> dict[str, float]:
        a, mask = self.algo_cfg, batch.action_mask
        scores = turn_rewards.sum(-1)  # the outcome reward of each response
        with torch.no_grad():
            old_logp = self.old_logprobs(batch)
            ref_logp = self.frozen_logprobs(self.ref, batch)
            advantages = group_advantages(scores, self.samples_per_prompt, bool(a.scale_rewards))
        stats: dict[str, list[float]] = {}
        for _ in range(int(a.epochs)):
            for idx in minibatch_indices(len(batch), int(a.minibatches), self.generator):
                logp, _ = self.logprobs(self.policy, batch.select(idx))
                loss, clipfrac = self.surrogate(logp, old_logp[idx], ref_logp[idx], advantages[idx], mask[idx])
                grad_norm = optimizer_step(self.optimizer, loss, float(a.max_grad_norm))
                for key, value in (("loss/policy", loss), ("policy/clipfrac", clipfrac), ("policy/grad_norm", grad_norm)):
                    stats.setdefault(key, []).append(float(value))
        groups = scores.view(-1, self.samples_per_prompt)
        metrics = {key: sum(v) / len(v) for key, v in stats.items()}
        metrics.update({"objective/kl": float(masked_sum(kl_estimate(old_logp, ref_logp, "k1"), mask, dim=-1).mean()),
                        "grpo/advantage_abs": float(advantages.abs().mean()),
                        "grpo/groups_all_equal": float((groups.std(1) == 0).float().mean())})
        return metrics
