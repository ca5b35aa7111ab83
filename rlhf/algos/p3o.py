"""P3O: Pairwise Proximal Policy Optimization (Wu, Zhu, Zhang, Wen, Ramchandran, Jiao 2023,
arXiv:2310.00212), as in the authors' trlx fork.

Each prompt gets two independent responses y1, y2 ~ pi_old; each one's reward is the other's
baseline, so the gradient is invariant to any per-prompt reward shift delta(x) (the paper's
reward-equivalence invariance) and no value network is needed. Pairwise policy gradient
(paper, "Pairwise Policy Gradient"):

    grad J = E[ (r1 - r2) * grad(log pi(y1|x) - log pi(y2|x)) / 2 ]

With the KL penalty folded into the reward, the pair's signal is
    q = sg[ (r1 - r2) - beta * (L1 - L2) ],   L_i = sum_t log pi(y_i,t) - log pi_ref(y_i,t)
and the off-policy weight is w = sg[ clip(rho1 * rho2, 1/C, C) ], rho_i = pi/pi_old
(importance sampling of the pair, as in the authors' code).

Two trust regions (paper, "Pairwise Proximal Policy Optimization": clipping separately, V1,
or jointly, V2), u_i = log pi(y_i|x) summed over the response:
    joint (V2):    max(-q w d, -q w clip(d, d_old - eps, d_old + eps)) / 2,  d = u1 - u2
    separate (V1): [max(-q w u1, -q w clip(u1, ...)) + max(+q w u2, +q w clip(u2, ...))] / 2
                   (tokenwise=true applies the separate clip to each token's log-prob)
Rewards are clipped to +-reward_clip and, with reward_scaling=running, divided by a running
std (never per-prompt normalized, never clipped as differences, as in the authors' code). The
running std moves with the rewards' offsets, so the exact invariance to delta(x) holds with
reward_scaling=none.
"""
from __future__ import annotations

import torch

from rlhf.algos.base import Algorithm, RunningMoments, make_optimizer, minibatch_indices, optimizer_step
from rlhf.config import ConfigError
from rlhf.functional import (clipped_importance_weight, clipped_surrogate, kl_estimate, masked_sum,
                             sequence_logprob)
from rlhf.rollout.batch import Batch


def p3o_pair_loss(q: torch.Tensor, weight: torch.Tensor, logp: torch.Tensor, old_logp: torch.Tensor,
                  mask: torch.Tensor, clip: str, eps: float, tokenwise: bool = False) -> torch.Tensor:
    """Per-pair loss (before averaging). Rows 2k and 2k+1 of logp/old_logp/mask are pair k.

    q, weight: [P] detached; logp, old_logp, mask: [2P, L] per-token (rlhf.functional)."""
    signal = q * weight
    u, u_old = sequence_logprob(logp, mask), sequence_logprob(old_logp, mask)
    if clip == "joint":
        d, d_old = u[0::2] - u[1::2], u_old[0::2] - u_old[1::2]
        return clipped_surrogate(signal, d, d_old, eps) / 2
    if clip != "separate":
        raise ValueError(f"algo.clip_variant={clip!r} unknown; valid choices: joint, separate")
    if tokenwise:
        per_token = clipped_surrogate(torch.stack([signal, -signal], 1).reshape(-1, 1), logp, old_logp, eps)
        per_response = masked_sum(per_token, mask, dim=-1)
    else:
        per_response = clipped_surrogate(torch.stack([signal, -signal], 1).reshape(-1), u, u_old, eps)
    return (per_response[0::2] + per_response[1::2]) / 2


class P3O(Algorithm):
    name = "p3o"

    @classmethod
    def check(cls, cfg) -> None:
        if int(cfg.algo.samples_per_prompt) != 2:
            raise ConfigError(f"algo=p3o pairs two responses per prompt: algo.samples_per_prompt must be 2, "
                              f"got {cfg.algo.samples_per_prompt}")

    def __init__(self, cfg, policy, ref, tokenizer, **kw):
        super().__init__(cfg, policy, ref, tokenizer)
        self.optimizer = make_optimizer(policy.parameters(), self.algo_cfg)
        self.reward_stats = RunningMoments()
        self.generator = torch.Generator().manual_seed(int(cfg.seed))

    def state_dict(self):
        return {"optimizer": self.optimizer.state_dict(), "reward_stats": self.reward_stats.state_dict(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state["optimizer"])
        self.reward_stats.load_state_dict(state["reward_stats"])
        self.generator.set_state(state["generator"])

    def scaled_rewards(self, scores: torch.Tensor) -> torch.Tensor:
        a = self.algo_cfg
        r = scores.clamp(-a.reward_clip, a.reward_clip)
        if a.reward_scaling == "running":
            self.reward_stats.update(r)
            r = r / self.reward_stats.std
        return r

    def step(self, batch: Batch, turn_rewards: torch.Tensor) -> dict[str, float]:
        a, mask = self.algo_cfg, batch.action_mask
        # The trainer lays out the samples of a prompt next to each other: rows 2k, 2k+1.
        if not torch.equal(batch.group[0::2], batch.group[1::2]):
            raise ValueError("P3O needs the two samples of each prompt in adjacent rows")
        # float64: a per-prompt offset delta(x) in the rewards (rlhf.rewards) cancels exactly in r1 - r2
        rewards = self.scaled_rewards(turn_rewards.sum(-1).double())
        with torch.no_grad():
            old_logp = self.old_logprobs(batch)
            ref_logp = self.frozen_logprobs(self.ref, batch)
        n_pairs = len(batch) // 2
        n_minibatches = max(1, n_pairs // int(a.minibatch_pairs))
        stats: dict[str, list[float]] = {}
        for _ in range(int(a.epochs)):
            for pairs in minibatch_indices(n_pairs, n_minibatches, self.generator):
                rows = torch.stack([2 * pairs, 2 * pairs + 1], 1).reshape(-1)
                mb, m = batch.select(rows), mask[rows]
                logp, _ = self.action_logprobs(self.policy, mb)
                kl_source = logp.detach() if a.kl_from == "current" else old_logp[rows]
                seq_kl = masked_sum(kl_estimate(kl_source, ref_logp[rows], "k1", clamp=1e9), m, dim=-1)
                r = rewards[rows]
                q = (r[0::2] - r[1::2]).float() - float(a.kl_coef) * (seq_kl[0::2] - seq_kl[1::2])
                if a.scale_q and q.numel() > 1:
                    q = q / (q.std() + 1e-8)
                log_rho = sequence_logprob(logp.detach() - old_logp[rows], m)
                weight = clipped_importance_weight(log_rho[0::2] + log_rho[1::2], float(a.cliprange_ratio))
                per_pair = p3o_pair_loss(q, weight, logp, old_logp[rows], m, a.clip_variant, float(a.cliprange),
                                         bool(a.tokenwise))
                if a.loss_average == "tokens":
                    loss = per_pair.sum() / m.sum().clamp(min=1)
                else:
                    loss = per_pair.mean()
                grad_norm = optimizer_step(self.optimizer, loss, float(a.max_grad_norm))
                d_move = (sequence_logprob(logp.detach(), m) - sequence_logprob(old_logp[rows], m))
                for key, value in {
                    "loss/policy": loss.item(), "policy/grad_norm": grad_norm,
                    "p3o/q_abs": q.abs().mean().item(), "p3o/weight": weight.mean().item(),
                    "policy/approxkl": (0.5 * d_move**2).mean().item(),
                    "policy/clipfrac": (d_move.abs() > float(a.cliprange)).float().mean().item(),
                }.items():
                    stats.setdefault(key, []).append(value)

        seq_kl_old = masked_sum(kl_estimate(old_logp, ref_logp, "k1"), mask, dim=-1)
        identical = [torch.equal(batch.input_ids[i], batch.input_ids[i + 1]) for i in range(0, len(batch), 2)]
        metrics = {key: sum(v) / len(v) for key, v in stats.items()}
        metrics.update({
            "objective/kl": float(seq_kl_old.mean()),
            "objective/non_score_reward": -float(a.kl_coef) * float(seq_kl_old.mean()),
            "objective/rlhf_reward": float(turn_rewards.sum(-1).mean()) - float(a.kl_coef) * float(seq_kl_old.mean()),
            "objective/kl_coef": float(a.kl_coef),
            "p3o/identical_pairs": sum(identical) / len(identical),
            "p3o/reward_std": self.reward_stats.std,
        })
        return metrics
