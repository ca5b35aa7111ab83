"""`algo=reptile`: first-order Reptile meta-RL over Super Mario Bros stages (`env=mario`).

Papers: Nichol, Achiam, Schulman 2018, "On First-Order Meta-Learning Algorithms" (Reptile,
arXiv 1803.02999, Algorithm 1 and its batched version, Algorithm 2); applied to Mario as in
"RAMario: Experimental Approach to Reptile Algorithm -- Reinforcement Learning for Mario" (a
small conv net: one convolution, flatten, dense; tasks = stages).

    theta: meta-weights
    for iteration = 1, 2, ...:                                       (one step of the run)
        sample tasks tau_1..tau_B from the training stages            (env.stages)
        for each tau_i: phi_i = theta, then inner_updates PPO updates on tau_i   (the inner loop)
        theta <- theta + eps * mean_i(phi_i - theta)                   (Reptile's outer step)
    eps decays linearly from algo.outer_lr to algo.outer_lr_final.

The inner loop is the control PPO (rlhf.control_ppo, a fresh Adam per task) on a gymnasium
vector env of the task's stage; the network is agents.control.ConvActorCritic. Evaluation
(`python -m rlhf.evaluate run=<run dir>`) adapts a copy of theta to each held-out stage
(env.held_out) for eval.adapt_steps env steps with the same inner loop, and measures the
x-distance at eval.adapt_points evenly spaced adaptation steps: TensorBoard `adapt/x_pos` (mean
over held-out stages) and `adapt/<stage>/x_pos` against the adaptation step.

`algo.meta=joint` is the baseline of the claim `mario_reptile`: the same network, PPO, task
sampling and env-step budget, but theta itself is trained (one persistent Adam across tasks, no
outer step): multi-task PPO pretraining. `algo.total_steps=0` saves the seeded random
initialization (the claim's third arm). Env steps are agent steps (each env.frame_skip frames).
"""
from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import numpy as np
import torch

from agents.control import ConvActorCritic
from rlhf.config import ConfigError, require_ints
from rlhf.control_ppo import PPO, PPOConfig, reset
from rlhf.harness import Job

log = logging.getLogger("rlhf")
META_MODES = ("reptile", "joint")


def build_policy(cfg) -> ConvActorCritic:
    from envs import mario

    a = cfg.algo
    return ConvActorCritic(mario.observation_shape(cfg.env), mario.num_actions(cfg.env), int(a.conv_channels),
                           int(a.conv_kernel), int(a.conv_stride), int(a.hidden))


def inner_loop(ppo: PPO, envs, task: str, updates: int, seed: int) -> tuple[list[dict], list[dict]]:
    """`updates` PPO updates of ppo.agent on one task (stage), from freshly seeded episodes.
    -> (finished episodes as envs.mario records, update statistics)."""
    from envs import mario

    envs.call("set_task", task)
    cursor = reset(envs, [seed + i for i in range(envs.num_envs)])
    episodes, stats = [], []
    for _ in range(updates):
        batch = ppo.collect(envs, cursor)
        stats.append(ppo.update(batch))
        episodes += [mario.vector_episode_record(e) for e in batch.episodes]
    return episodes, stats


def reptile_update(theta: dict[str, torch.Tensor], phis: list[dict[str, torch.Tensor]],
                   eps: float) -> dict[str, torch.Tensor]:
    """theta <- theta + eps * (mean_i phi_i - theta)  (Nichol et al. 2018, Algorithm 2; one task:
    Algorithm 1, theta + eps * (phi - theta)). Returns new tensors."""
    if not phis:
        raise ValueError("reptile_update needs at least one adapted weight set")
    out = {}
    for name, value in theta.items():
        mean_phi = torch.stack([phi[name].to(value.dtype) for phi in phis]).mean(0)
        out[name] = value + eps * (mean_phi - value)
    return out


def outer_lr(a, iteration: int, iterations: int) -> float:
    """Linear decay from algo.outer_lr to algo.outer_lr_final over the meta-iterations."""
    frac = iteration / max(1, iterations - 1)
    return float(a.outer_lr) + frac * (float(a.outer_lr_final) - float(a.outer_lr))


class Reptile(Job):
    unit = "meta-iteration"

    @classmethod
    def check(cls, cfg) -> None:
        from envs import mario

        mario.check_env_config(cfg.env)
        a = cfg.algo
        if a.meta not in META_MODES:
            raise ConfigError(f"algo.meta={a.meta!r} is not valid; valid choices: {', '.join(META_MODES)}")
        zero_ok = ("total_steps", "checkpoint_every", "hidden")
        require_ints(a, ("num_envs", "num_steps", "epochs", "minibatches", "inner_updates", "meta_batch", "conv_channels",
                         "conv_kernel", "conv_stride", "threads", *zero_ok), zero_ok=zero_ok)
        if not 0.0 < float(a.outer_lr) <= 1.0 or not 0.0 <= float(a.outer_lr_final) <= 1.0:
            raise ConfigError(f"algo.outer_lr={a.outer_lr} must lie in (0, 1] and algo.outer_lr_final="
                              f"{a.outer_lr_final} in [0, 1]")
        if int(a.minibatches) > int(a.num_envs) * int(a.num_steps):
            raise ConfigError(f"algo.minibatches={a.minibatches} exceeds the batch num_envs x num_steps")
        per = int(a.meta_batch) * int(a.inner_updates) * int(a.num_envs) * int(a.num_steps)
        if int(a.total_steps) and int(a.total_steps) < per:
            raise ConfigError(f"algo.total_steps={a.total_steps} is below one meta-iteration (meta_batch x inner_updates "
                              f"x num_envs x num_steps = {per} env steps)")

    def __init__(self, cfg, run_dir: Path):
        from envs import mario

        super().__init__(cfg, run_dir)
        a = cfg.algo
        self.ppo_cfg = PPOConfig.from_cfg(a)
        self.stages = mario.stage_list(cfg.env.stages)
        self.steps_per_iteration = int(a.meta_batch) * int(a.inner_updates) * self.ppo_cfg.steps_per_update
        self.total = int(a.total_steps) // self.steps_per_iteration
        self.rng = np.random.default_rng(int(cfg.seed))  # task sampling
        self.net = build_policy(cfg)  # the seeded random initialization (the harness seeded torch)
        self.joint = PPO(self.net, self.ppo_cfg) if a.meta == "joint" else None
        self.envs = mario.make_vector_env(cfg.env, self.ppo_cfg.num_envs)
        self.recent: list[dict] = []  # the last 20 training episodes, for the final summary

    def step(self) -> dict[str, float]:
        from envs.mario import episode_metrics

        a, start = self.cfg.algo, time.time()
        tasks = [str(t) for t in self.rng.choice(self.stages, size=int(a.meta_batch))]
        seed = int(self.cfg.seed) * 1_000_003 + self.steps_done * 10_007
        eps = outer_lr(a, self.steps_done, self.total)
        episodes, stats, phis = [], [], []
        for i, task in enumerate(tasks):
            ppo = self.joint or PPO(copy.deepcopy(self.net), self.ppo_cfg)  # phi_i = theta, fresh Adam
            episodes_i, stats_i = inner_loop(ppo, self.envs, task, int(a.inner_updates), seed + 101 * i)
            episodes, stats = episodes + episodes_i, stats + stats_i
            if self.joint is None:
                phis.append({k: v.detach() for k, v in ppo.agent.state_dict().items()})
        if phis:
            self.net.load_state_dict(reptile_update(self.net.state_dict(), phis, eps))
        self.recent = (self.recent + episodes)[-20:]
        out = {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}
        out["reptile/outer_lr"] = eps if self.joint is None else 1.0
        out["perf/env_steps_per_s"] = self.steps_per_iteration / max(time.time() - start, 1e-9)
        out.update({f"reptile/task_{stage}": float(tasks.count(stage)) for stage in self.stages})
        return {**out, **episode_metrics(episodes)}

    def log_x(self) -> int:
        return self.steps_done * self.steps_per_iteration

    @property
    def eval_every(self) -> int:
        return 0  # held-out evaluation adapts: python -m rlhf.evaluate

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"policy": self.net}

    def state_dict(self) -> dict:
        return {"optimizer": self.joint.optimizer.state_dict() if self.joint else None, "recent": self.recent}

    def load_state_dict(self, state: dict) -> None:
        if self.joint is not None:
            self.joint.optimizer.load_state_dict(state["optimizer"])
        self.recent = list(state["recent"])

    def generators(self) -> dict:
        return {"tasks": self.rng}

    def evaluate(self) -> dict[str, float]:
        """The last 20 training episodes (x-distance, flag rate, return). With total_steps=0 this
        also writes the step-0 checkpoint: the seeded random initialization."""
        from envs.mario import episode_metrics
        from rlhf.harness import save

        if self.total == 0:
            save(self, 0)
        final = {k.split("/", 1)[1]: v for k, v in episode_metrics(self.recent).items()}
        return {**final, "env_steps": float(self.log_x()), "meta_iterations": float(self.steps_done)}

    def describe(self) -> str:
        a = self.cfg.algo
        return (f"reptile meta={a.meta} stages={self.stages}: {self.total} meta-iterations x {self.steps_per_iteration} env "
                f"steps (meta_batch {a.meta_batch} x inner_updates {a.inner_updates} x {self.ppo_cfg.steps_per_update})")

    def close(self) -> None:
        self.envs.close()


# --- adaptation to held-out stages, and evaluation ---------------------------------------------------

def sampling_actor(net: ConvActorCritic, seed: int):
    """obs -> action sampled from the policy with its own seeded generator (NES emulation is
    deterministic: the episode differs only through the sampled actions)."""
    gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def act(obs: np.ndarray) -> int:
        logits, _ = net(torch.as_tensor(obs).unsqueeze(0))
        return int(torch.multinomial(torch.softmax(logits[0], -1), 1, generator=gen))

    return act


def adaptation_curve(cfg, theta: dict[str, torch.Tensor], stage: str) -> list[tuple[int, dict[str, float]]]:
    """Adapt a copy of theta to `stage` with the inner loop (fresh Adam) for eval.adapt_steps env
    steps, evaluated at eval.adapt_points evenly spaced steps (envs.mario.adaptation_curve)."""
    from envs import mario

    ppo_cfg = PPOConfig.from_cfg(cfg.algo)
    net = build_policy(cfg)
    net.load_state_dict(theta)
    ppo, envs = PPO(net, ppo_cfg), mario.make_vector_env(cfg.env, ppo_cfg.num_envs, stages=[stage])
    torch.manual_seed(int(cfg.seed) + 17)
    cursor = reset(envs, [int(cfg.seed) * 7919 + i for i in range(ppo_cfg.num_envs)])
    try:
        return mario.adaptation_curve(cfg.env, stage, int(cfg.eval.adapt_steps) // ppo_cfg.steps_per_update,
                                      int(cfg.eval.adapt_points), ppo_cfg.steps_per_update, int(cfg.eval.episodes),
                                      lambda: ppo.update(ppo.collect(envs, cursor)),
                                      lambda: sampling_actor(net, int(cfg.seed)))
    finally:
        envs.close()


def evaluate(cfg, checkpoint_dir: Path, run_dir: Path) -> dict[str, float]:
    """`python -m rlhf.evaluate run=<run dir> [eval.adapt_steps=K] [eval.gif=true]`: the
    meta-weights on every stage of eval.stages (no adaptation), then, on each held-out stage,
    the K-step adaptation curve (TensorBoard adapt/x_pos vs adaptation step)."""
    from torch.utils.tensorboard import SummaryWriter

    from envs import mario
    from rlhf.checkpoint import load_checkpoint

    theta = load_checkpoint(checkpoint_dir)[1]["policy"]
    torch.set_num_threads(int(cfg.algo.threads))
    net = build_policy(cfg)
    net.load_state_dict(theta)
    stages = mario.eval_stages(cfg.env, str(cfg.eval.stages))
    gif_dir = Path(run_dir) / "eval" if bool(cfg.eval.gif) else None
    metrics = mario.evaluate_stages(cfg.env, sampling_actor(net, int(cfg.seed)), stages, int(cfg.eval.episodes),
                                    gif_dir) if stages else {}
    held_out = mario.stage_list(cfg.env.held_out)
    if int(cfg.eval.adapt_steps) > 0 and held_out:
        curves = {s: adaptation_curve(cfg, theta, s) for s in held_out}
        points = mario.curve_scalars(curves)
        with SummaryWriter(str(run_dir)) as writer:
            for k, point in points:
                for key, value in point.items():
                    writer.add_scalar(key, value, k)
        metrics.update({k: v for k, v in points[-1][1].items() if k in ("adapt/x_pos", "adapt/flag_rate", "adapt/return")})
        metrics["adapt/steps"] = float(int(cfg.eval.adapt_steps))
        for stage, curve in curves.items():
            log.info(f"[reptile] adaptation on {stage}: " + ", ".join(
                f"{k} steps -> x {m['mario/x_pos']:.0f}" for k, m in curve))
    return metrics
