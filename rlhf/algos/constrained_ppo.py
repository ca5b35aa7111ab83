"""Constrained RLHF with Lagrange multipliers (Moskovitz et al., ICLR 2024, "Confronting
Reward Model Overoptimization with Constrained RLHF").

A composite reward has N component reward models (reward=composite: praise, detail). Each
helps the evaluation score only up to its proxy point theta_i (found by rlhf.proxy_points).
Instead of a fixed weighted sum, the policy solves a constrained problem whose task v_0 is
the KL reward -beta * KL(pi || pi_0):

    mu-PPO   (algo.form=mu):   max v_0  s.t. v_i >= theta_i     multipliers sigmoid(lambda)
    xi-PPO   (algo.form=xi):   max v_0  s.t. v_i  = theta_i     multipliers tanh(lambda)
    All-PPO  (algo.form=all):  max v_0 + sum_i v_i  s.t. v_i <= theta_i   sigmoid(lambda)
    NM-PPO   (algo.threshold_search=nelder_mead): xi-PPO whose thresholds are searched by
             Nelder-Mead (rlhf.nelder_mead) within the one run

One phase (the paper's PPO with one value head per reward stream):
  1. per-token KL reward k_t = -beta * (log pi_old - log pi_0); component scores on the
     last token; a critic with N + 1 value heads (head 0: the KL task; head i: component i).
  2. GAE per head.
  3. epochs x minibatches: each head's advantages whitened on their own (std floored at
     1e-3); A_mix = (N - sum w) A_0 + sum w_i A_i (All-PPO: A_0 + sum (1 - w_i) A_i); the
     clipped PPO loss on A_mix plus each head's value loss; then one SGD step on the
     multipliers' loss sum_i w_i (mean_minibatch RTG_i - theta_i) (sign flipped for
     All-PPO), with RTG_i the episode's component score (the reward is terminal).
The multipliers, their optimizer and the Nelder-Mead state are part of the checkpoint.
Quirks of the authors' reference code not copied: the constraint values are sliced per
component, the unsquashed mix has no off-by-one, thresholds are ordered by component name
everywhere, the Nelder-Mead objective is never cached (the policy keeps training).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from agents.critics import MultiHeadCritic
from agents.models import ValueModel
from envs.composite import COMPONENTS, CompositeScorer
from rlhf.algos.base import Algorithm, make_optimizer, minibatch_indices, optimizer_step
from rlhf.config import ConfigError
from rlhf.functional import (clipped_policy_loss, clipped_value_loss, constraint_violation, gae, kl_estimate,
                             lagrange_loss, masked_mean, masked_sum, masked_whiten, mixed_advantage,
                             squash_multipliers, token_entropy)
from rlhf.nelder_mead import NelderMead
from rlhf.rollout.batch import Batch

log = logging.getLogger("rlhf")
WHITEN_EPS = 1e-6  # std floor 1e-3 when a component's advantages are (near) constant


def load_thresholds(setting, names: tuple[str, ...]) -> list[float]:
    """algo.thresholds: a list (one per component) or a proxy-points JSON file."""
    if isinstance(setting, str):
        path = Path(setting).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"algo.thresholds={setting}: no such file; write it with "
                                    "`python -m rlhf.proxy_points <run dirs> --out <file>` or pass a list")
        table = json.loads(path.read_text())["thresholds"]
        missing = [n for n in names if n not in table]
        if missing:
            raise KeyError(f"{path} has no thresholds for {missing}; it has {sorted(table)}")
        return [float(table[n]) for n in names]
    values = [float(v) for v in (setting or [])]
    if len(values) != len(names):
        raise ValueError(f"algo.thresholds needs one value per component {list(names)} (or a proxy-points file), "
                         f"got {list(setting or [])}")
    return values


class ConstrainedPPO(Algorithm):
    name = "constrained_ppo"
    vector_reward = True  # the trainer hands over one reward column per component

    @classmethod
    def check(cls, cfg) -> None:
        a = cfg.algo
        if cfg.reward.name != "composite":
            raise ConfigError(f"algo=constrained_ppo constrains the components of a composite reward; got "
                              f"reward={cfg.reward.name} (valid choice: reward=composite)")
        if a.threshold_search != "none":
            return
        if a.thresholds is None:
            raise ConfigError("algo=constrained_ppo needs algo.thresholds (a list, one per component, or the file of "
                              "`python -m rlhf.proxy_points`), or algo.threshold_search=nelder_mead")
        try:
            load_thresholds(a.thresholds, COMPONENTS)
        except (OSError, KeyError, ValueError) as error:
            raise ConfigError(str(error).strip("'\"")) from None

    def __init__(self, cfg, policy, ref, tokenizer, **kw):
        super().__init__(cfg, policy, ref, tokenizer)
        a = self.algo_cfg
        self.form, self.names = str(a.form), COMPONENTS
        n = len(self.names)
        searched = a.threshold_search == "nelder_mead"
        self.thresholds = torch.tensor([0.0] * n if searched else load_thresholds(a.thresholds, self.names))
        self.critic = MultiHeadCritic(ValueModel.from_lm(policy).trunk, heads=n + 1)
        self.critic.train()
        self.optimizer = make_optimizer(list(policy.parameters()) + list(self.critic.parameters()), a)
        self.generator = torch.Generator().manual_seed(int(cfg.seed))
        # lambda ~ N(0, 0.01^2): sigmoid ~ 0.5, tanh ~ 0 (each constraint starts half-weighted or unweighted)
        self.raw_multipliers = nn.Parameter(0.01 * torch.randn(n, generator=self.generator))
        self.multiplier_opt = torch.optim.SGD([self.raw_multipliers], lr=float(a.lagrange_lr),
                                              momentum=float(a.lagrange_momentum))
        self.saturated_phases = [0] * n
        self.nm: NelderMead | None = None
        self.segment: dict = {}
        if searched:
            self.nm = NelderMead(self.initial_simplex(), float(a.nm_tol))
            self.scorer = CompositeScorer.from_config(cfg.reward)
            self.start_segment()

    def modules(self):
        return {"policy": self.policy, "critic": self.critic}

    def state_dict(self):
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "raw_multipliers": self.raw_multipliers.detach().clone(),
                "multiplier_opt": self.multiplier_opt.state_dict(), "thresholds": self.thresholds.clone(),
                "saturated_phases": list(self.saturated_phases),
                "nm": self.nm.state_dict() if self.nm else None, "segment": dict(self.segment)}

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        with torch.no_grad():
            self.raw_multipliers.copy_(state["raw_multipliers"])
        self.multiplier_opt.load_state_dict(state["multiplier_opt"])
        self.thresholds = state["thresholds"].clone()
        self.saturated_phases = list(state["saturated_phases"])
        if self.nm is not None:
            self.nm.load_state_dict(state["nm"])
            self.segment = dict(state["segment"])

    @property
    def multipliers(self) -> torch.Tensor:
        return squash_multipliers(self.raw_multipliers, self.form)

    # --- one phase --------------------------------------------------------------------------
    def step(self, batch: Batch, component_rewards: torch.Tensor) -> dict[str, float]:
        a, mask = self.algo_cfg, batch.action_mask
        beta, n = float(a.kl_coef), len(self.names)
        with torch.no_grad():
            old_logp = self.old_logprobs(batch)
            ref_logp = self.frozen_logprobs(self.ref, batch)
            old_values = self.critic.values(batch.input_ids, batch.attention_mask) * mask.unsqueeze(-1)
            kl = kl_estimate(old_logp, ref_logp, a.kl_estimator) * mask
            streams = torch.cat([(-beta * kl).unsqueeze(-1), component_rewards], dim=-1)  # [B, L, N + 1]
            per_head = [gae(streams[..., h], old_values[..., h], mask, float(a.gamma), float(a.lam))
                        for h in range(n + 1)]
            advantages = torch.stack([adv for adv, _ in per_head], dim=-1)
            returns = torch.stack([ret for _, ret in per_head], dim=-1)
            # [B, N]: reward-to-go from the first token (terminal reward); on the CPU, with the multipliers
            episode_scores = component_rewards.sum(1).cpu()

        stats: dict[str, list[float]] = {}
        for _ in range(int(a.epochs)):
            for idx in minibatch_indices(len(batch), int(a.minibatches), self.generator):
                mb, m = batch.select(idx), mask[idx]
                white = torch.stack([masked_whiten(advantages[idx][..., h], m, eps=WHITEN_EPS) for h in range(n + 1)], -1)
                weights = self.multipliers.detach().to(m.device)
                a_mix = mixed_advantage(white[..., 0], white[..., 1:], weights, self.form) * m
                logp, logits = self.logprobs(self.policy, mb)
                pg_loss, pg_stats = clipped_policy_loss(logp, old_logp[idx], a_mix, m, float(a.clip))
                values = self.critic.values(mb.input_ids, mb.attention_mask)
                vf_losses = [clipped_value_loss(values[..., h], old_values[idx][..., h], returns[idx][..., h], m,
                                                float(a.value_clip))[0] for h in range(n + 1)]
                vf_loss = float(a.kl_vf_coef) * vf_losses[0] + float(a.constraint_vf_coef) * sum(vf_losses[1:])
                grad_norm = optimizer_step(self.optimizer, pg_loss + vf_loss, float(a.max_grad_norm))
                violation = self.minibatch_violation(episode_scores[idx])
                self.multiplier_opt.zero_grad(set_to_none=True)
                lagrange_loss(self.multipliers, violation, self.form).backward()
                torch.nn.utils.clip_grad_norm_([self.raw_multipliers], float(a.lagrange_max_grad_norm))
                self.multiplier_opt.step()
                entropy = masked_mean(token_entropy(logits.detach(), self.temperature), m)
                for key, value in {"loss/policy": pg_loss, "loss/value": vf_loss, "objective/entropy": entropy,
                                   "policy/clipfrac": pg_stats["clipfrac"], "policy/approxkl": pg_stats["approxkl"],
                                   "policy/grad_norm": grad_norm}.items():
                    stats.setdefault(key, []).append(float(value.detach()) if torch.is_tensor(value) else float(value))

        metrics = {key: sum(v) / len(v) for key, v in stats.items()}
        metrics.update(self.constraint_metrics(episode_scores))
        sequence_kl = masked_sum(kl_estimate(old_logp, ref_logp, "k1"), mask, dim=-1)
        metrics.update({"objective/kl": float(sequence_kl.mean()), "objective/kl_coef": beta,
                        "objective/non_score_reward": float(-beta * kl.sum(-1).mean())})
        if self.nm is not None:
            metrics.update(self.nelder_mead_phase(batch, episode_scores))
        return metrics

    def minibatch_violation(self, scores: torch.Tensor) -> torch.Tensor:
        return constraint_violation(scores.mean(0), self.thresholds, self.form, float(self.algo_cfg.equality_tolerance))

    def constraint_metrics(self, episode_scores: torch.Tensor) -> dict[str, float]:
        values, weights = episode_scores.mean(0), self.multipliers.detach()
        out = {}
        for i, name in enumerate(self.names):
            out[f"lagrange/lambda_{name}"] = float(weights[i])
            out[f"lagrange/constraint_{name}"] = float(values[i])
            out[f"lagrange/threshold_{name}"] = float(self.thresholds[i])
            out[f"lagrange/violation_{name}"] = float(values[i] - self.thresholds[i])
            self.warn_if_saturated(i, name, float(weights[i]))
        return out

    def warn_if_saturated(self, i: int, name: str, weight: float) -> None:
        """A multiplier stuck near its bound means an unreachable threshold:
        the KL task then gets (almost) no weight and the policy drifts unregularized."""
        self.saturated_phases[i] = self.saturated_phases[i] + 1 if abs(weight) > 0.95 else 0
        if self.saturated_phases[i] == int(self.algo_cfg.saturation_phases):
            log.warning(f"[constrained_ppo] multiplier of '{name}' has stayed at {weight:.3f} (|w| > 0.95) for "
                        f"{self.saturated_phases[i]} phases: threshold {float(self.thresholds[i]):.4g} may be "
                        "unreachable; the KL task has little weight left")

    # --- NM-PPO: threshold search within the run ------------------------------------------------
    def initial_simplex(self) -> list[list[float]]:
        a, n = self.algo_cfg, len(self.names)
        low, high = [float(v) for v in a.nm_low], [float(v) for v in a.nm_high]
        if len(low) != n or len(high) != n:
            raise ValueError(f"algo.nm_low and algo.nm_high need one value per component {list(self.names)}; "
                             f"got {list(a.nm_low)} and {list(a.nm_high)}")
        rng = np.random.default_rng(int(self.cfg.seed))
        return (rng.uniform(low, high, size=(n + 1, n))).tolist()

    def searching(self) -> bool:
        return not self.nm.converged() and self.nm.evaluations < int(self.algo_cfg.nm_max_evals)

    def start_segment(self) -> None:
        """Train on NM's next point; once the search is over, on the best point found."""
        theta = self.nm.ask() if self.searching() else self.nm.best()[0]
        self.thresholds = torch.tensor(theta, dtype=torch.float32)
        self.segment = {"phase": 0, "evals": []}
        if not self.searching():
            log.info(f"[nm-ppo] search over after {self.nm.evaluations} evaluations: training on thresholds "
                     f"{np.round(theta, 4).tolist()} for the rest of the run")

    def nelder_mead_phase(self, batch: Batch, episode_scores: torch.Tensor) -> dict[str, float]:
        """Score this phase's rollouts with the evaluation score; end the segment after
        algo.nm_phases phases (or early once every constraint is within 5%), tell NM
        -mean(evaluation over the segment's last half) and move to the next point."""
        a = self.algo_cfg
        texts = [self.tokenizer.decode(row[m.bool()]) for row, m in zip(batch.input_ids, batch.action_mask)]
        evaluation = float(np.mean([self.scorer.score(t)["eval"] for t in texts]))
        self.segment["phase"] += 1
        self.segment["evals"].append(evaluation)
        out = {"nm/evaluation": evaluation, "nm/evaluations": float(self.nm.evaluations)}
        reached = bool(((episode_scores.mean(0) - self.thresholds).abs() <= 0.05 * self.thresholds.abs()).all())
        done = self.segment["phase"] >= int(a.nm_phases) or (reached and self.segment["phase"] >= int(a.nm_phases) // 2)
        if self.searching() and done:
            evals = self.segment["evals"]
            f = -float(np.mean(evals[len(evals) // 2:]))
            self.nm.tell(f)
            log.info(f"[nm-ppo] thresholds {np.round(self.thresholds.tolist(), 4).tolist()} -> evaluation {-f:.4f} "
                     f"({self.segment['phase']} phases); {self.nm.evaluations} evaluations")
            self.start_segment()
        return out
