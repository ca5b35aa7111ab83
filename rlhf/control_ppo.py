"""The control PPO: PPO with a clipped surrogate (Schulman et al. 2017, Algorithm 1 "PPO,
Actor-Critic Style"; Eq. 7 for the clipped objective, Eq. 9 for the combined loss) on gymnasium
vector environments, laid out like CleanRL's ppo.py: collect num_steps x num_envs transitions,
compute truncated GAE (Eqs. 11-12 there), then `epochs` passes of shuffled minibatches.

Two algorithms use it: C-MORL (rlhf.algos.cmorl: a critic with one value head per objective,
vector rewards normalised per objective, a policy advantage chosen per stage and a barrier term
added to the loss) and Reptile's inner loop (rlhf.algos.reptile: one head, scaled rewards).

Vector envs step in gymnasium's SAME_STEP autoreset mode (the semantics of gym 0.26, for which
CleanRL's ppo.py was written): an env whose episode ends is reset inside that step(), the
returned observation is the next episode's first, and the episode's last observation and info
come back in info["final_obs"] and info["final_info"] (with each env's RecordEpisodeStatistics
in info["final_info"]["episode"]). A truncated (time-limited) episode can bootstrap from
V(final_obs) (`bootstrap_truncated`). gymnasium's default NEXT_STEP mode, the only mode of
mo-gymnasium's vector env and statistics wrapper, spends one step() per episode on the reset
(its action ignored): measured on deep-sea-treasure, whose episodes can be 1-3 steps long, 12 to
33% of C-MORL's Stage 1 env steps (cmorl_pareto --quick budget, Stage 1 alone, seeds 0-3: mean
HV 401 with same-step resets, 123 with next-step resets).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from rlhf.functional import clipped_policy_loss, clipped_value_loss, gae, masked_whiten


@dataclass
class PPOConfig:
    num_envs: int
    num_steps: int  # rollout length per env per update
    epochs: int
    minibatches: int
    lr: float
    clip: float  # ratio clip epsilon
    value_clip: float  # value clip (in the critic's units)
    vf_coef: float
    entropy_coef: float
    max_grad_norm: float
    gamma: float
    lam: float
    reward_scale: float = 1.0  # rewards are multiplied by this before GAE
    bootstrap_truncated: bool = True  # a time-limited episode bootstraps from V(its last observation)

    @classmethod
    def from_cfg(cls, a) -> PPOConfig:
        """From an algo config section; value_clip defaults to clip, reward_scale to 1."""
        return cls(int(a.num_envs), int(a.num_steps), int(a.epochs), int(a.minibatches), float(a.lr), float(a.clip),
                   float(a.get("value_clip", a.clip)), float(a.vf_coef), float(a.entropy_coef),
                   float(a.max_grad_norm), float(a.gamma), float(a.lam), float(a.get("reward_scale", 1.0)),
                   bool(a.get("bootstrap_truncated", True)))

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.num_steps  # the budget unit: env steps x envs


class ReturnNormalizer:
    """Per-objective reward scaling by the running std of the discounted return (gymnasium's
    NormalizeReward, SB3's VecNormalize; C-MORL's obj_rms): reward_j / sqrt(var_j)."""

    def __init__(self, m: int, gamma: float):
        self.gamma = gamma
        self.mean, self.var, self.count = np.zeros(m), np.ones(m), 1e-4
        self.ret: np.ndarray | None = None  # per-env discounted return so far (transient)

    def std(self) -> np.ndarray:
        return np.sqrt(self.var + 1e-8)

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        if self.ret is None or self.ret.shape != rewards.shape:
            self.ret = np.zeros_like(rewards)
        self.ret = self.ret * self.gamma + rewards
        batch_mean, batch_var, n = self.ret.mean(0), self.ret.var(0), rewards.shape[0]
        delta, total = batch_mean - self.mean, self.count + n
        self.mean = self.mean + delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        self.count = total
        self.ret[dones] = 0.0
        return rewards / self.std()

    def state_dict(self) -> dict:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = state["mean"].copy(), state["var"].copy(), float(state["count"])
        self.ret = None


@dataclass
class Cursor:
    """Where a vector env stands between rollouts: the next observations to act on."""
    obs: np.ndarray


def reset(envs, seeds: list[int]) -> Cursor:
    """Fresh episodes in every env, seeded: the start of a reproducible stretch of experience."""
    return Cursor(envs.reset(seed=[int(s) for s in seeds])[0])


@dataclass
class Rollout:
    """One update's experience, flattened time-major to B = num_steps * num_envs rows."""
    obs: torch.Tensor  # [B, ...]
    actions: torch.Tensor  # [B] or [B, a]
    logp: torch.Tensor  # [B]
    values: torch.Tensor  # [B, m] critic outputs (normalised units)
    advantages: torch.Tensor  # [B, m] GAE per objective (normalised units)
    returns: torch.Tensor  # [B, m] value targets = advantages + values
    scale: torch.Tensor  # [m] normalised units -> raw reward units
    episodes: list[dict] = field(default_factory=list)  # {"return", "length", "info"} of finished episodes

    def raw_advantages(self) -> torch.Tensor:
        """Advantages in raw reward units (C-MORL scalarises and constrains these)."""
        return self.advantages * self.scale


def finished_episodes(infos: dict) -> list[dict]:
    """Episodes that ended at this step: each env's RecordEpisodeStatistics (return, length) and
    the rest of its last info (e.g. Mario's distance and flag), from info["final_info"]."""
    if "_final_info" not in infos:
        return []
    final = infos["final_info"]
    return [{"return": final["episode"]["r"][i], "length": int(final["episode"]["l"][i]),
             "info": {k: v[i] for k, v in final.items() if isinstance(v, np.ndarray) and not k.startswith("_")
                      and final.get("_" + k, infos["_final_info"])[i]}}
            for i in np.flatnonzero(infos["_final_info"])]


class PPO:
    """One policy under training: the agent (agents.control), its Adam, optionally a return
    normaliser; `collect` a rollout, then `update` on it."""

    def __init__(self, agent: nn.Module, config: PPOConfig, normalizer: ReturnNormalizer | None = None):
        self.agent, self.config, self.normalizer = agent, config, normalizer
        self.optimizer = torch.optim.Adam(agent.parameters(), lr=config.lr, eps=1e-5)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    @torch.no_grad()
    def collect(self, envs, cursor: Cursor) -> Rollout:
        """num_steps steps of every env from `cursor` (advanced in place)."""
        c, agent = self.config, self.agent
        T, N = c.num_steps, envs.num_envs
        obs_buf, act_buf, logp_buf, val_buf, rew_buf, done_buf = [], [], torch.zeros(T, N), [], [], torch.zeros(T, N)
        episodes: list[dict] = []
        for t in range(T):
            obs = torch.as_tensor(cursor.obs)
            agent.observe(obs)
            action, logp_buf[t], _, value = agent.get_action_and_value(obs)
            cursor.obs, reward, terminated, truncated, infos = envs.step(agent.env_action(action))
            reward = np.asarray(reward, dtype=np.float64).reshape(N, -1) * c.reward_scale
            if self.normalizer is not None:
                reward = self.normalizer(reward, terminated | truncated)
            reward = torch.as_tensor(reward, dtype=torch.float32)
            cut = truncated & ~terminated
            if c.bootstrap_truncated and cut.any():  # time limit: bootstrap from the state it stopped in
                reward[cut] += c.gamma * agent.get_value(torch.as_tensor(np.stack(infos["final_obs"][cut])))
            obs_buf.append(obs)
            act_buf.append(action)
            val_buf.append(value)
            rew_buf.append(reward)
            done_buf[t] = torch.as_tensor(terminated | truncated, dtype=torch.float32)
            episodes += finished_episodes(infos)
        values, rewards = torch.stack(val_buf), torch.stack(rew_buf)  # [T, N, m]
        next_value = agent.get_value(torch.as_tensor(cursor.obs))  # [N, m]
        advantages = torch.zeros_like(values)
        for j in range(values.shape[-1]):  # GAE per objective; rows = envs
            adv_j, _ = gae(rewards[..., j].T, values[..., j].T, torch.ones(N, T), c.gamma, c.lam,
                           next_value=next_value[:, j], dones=done_buf.T)
            advantages[..., j] = adv_j.T
        scale = torch.as_tensor(self.normalizer.std() if self.normalizer is not None else np.ones(values.shape[-1]),
                                dtype=torch.float32) / c.reward_scale
        flat = lambda x: x.reshape(T * N, *x.shape[2:])  # noqa: E731  [T, N, ...] -> [T*N, ...]
        return Rollout(flat(torch.stack(obs_buf)), flat(torch.stack(act_buf)), flat(logp_buf), flat(values),
                       flat(advantages), flat(advantages + values), scale, episodes)

    def update(self, batch: Rollout, policy_advantage: torch.Tensor | None = None,
               extra_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
        """`epochs` passes over shuffled minibatches: clipped surrogate on `policy_advantage`
        (default: objective 0's advantage), whitened over the batch; clipped value loss on every
        head; entropy bonus; plus extra_loss(logp, rows) if given."""
        c, agent = self.config, self.agent
        B = batch.logp.shape[0]
        ones = torch.ones(B)
        adv = masked_whiten(batch.advantages[:, 0] if policy_advantage is None else policy_advantage, ones)
        size = max(1, B // c.minibatches)
        stats: dict[str, list[float]] = {k: [] for k in ("policy", "value", "entropy", "approxkl", "clipfrac", "extra")}
        for _ in range(c.epochs):
            order = torch.randperm(B)
            for start in range(0, B - size + 1, size):
                idx = order[start:start + size]
                _, logp, entropy, values = agent.get_action_and_value(batch.obs[idx], batch.actions[idx])
                pg_loss, pg = clipped_policy_loss(logp, batch.logp[idx], adv[idx], ones[idx], c.clip)
                v_loss, _ = clipped_value_loss(values, batch.values[idx], batch.returns[idx], torch.ones_like(values),
                                               c.value_clip)
                loss = pg_loss + c.vf_coef * v_loss - c.entropy_coef * entropy.mean()
                extra = extra_loss(logp, idx) if extra_loss is not None else torch.zeros(())
                loss = loss + extra
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), c.max_grad_norm)
                self.optimizer.step()
                for key, value in (("policy", pg_loss), ("value", v_loss), ("entropy", entropy.mean()),
                                   ("approxkl", pg["approxkl"]), ("clipfrac", pg["clipfrac"]), ("extra", extra)):
                    stats[key].append(float(value.detach()))
        out = {"loss/policy": stats["policy"], "loss/value": stats["value"], "policy/entropy": stats["entropy"],
               "policy/approxkl": stats["approxkl"], "policy/clipfrac": stats["clipfrac"]}
        if extra_loss is not None:
            out["loss/extra"] = stats["extra"]
        return {k: float(np.mean(v)) for k, v in out.items()}
