"""`algo=reptile`: first-order Reptile meta-RL over Super Mario Bros stages (`env=mario`).

Papers: Nichol, Achiam, Schulman 2018, "On First-Order Meta-Learning Algorithms" (Reptile,
arXiv 1803.02999, Algorithm 1 / the batched version); applied to Mario as in "RAMario:
Experimental Approach to Reptile Algorithm -- Reinforcement Learning for Mario" (a small conv
net: one convolution, flatten, dense; tasks = stages).

    theta: meta-weights
    for iteration = 1, 2, ...:
        sample tasks tau_1..tau_B from the training stages            (env.stages)
        for each tau_i: phi_i = theta, then inner_updates PPO updates on tau_i   (the inner loop)
        theta <- theta + eps * mean_i(phi_i - theta)                   (Reptile's outer step)
    eps decays linearly from algo.outer_lr to algo.outer_lr_final.

Evaluation (`python -m rlhf.evaluate run=<run dir>`) adapts a copy of theta to each held-out
stage (env.held_out) for eval.adapt_steps env steps with the same inner loop (fresh Adam), and
measures the x-distance at eval.adapt_points evenly spaced adaptation steps: TensorBoard
`adapt/x_pos` (mean over held-out stages) and `adapt/<stage>/x_pos` against the adaptation step.

`algo.meta=joint` is the baseline of the claim `mario_reptile`: the same network, PPO learner,
task sampling and env-step budget, but theta itself is trained (one persistent Adam across
tasks, no outer step): multi-task PPO pretraining. `algo.total_steps=0` saves the seeded random
initialization (the claim's third arm).

File layout: 1. ConvPolicy  2. PPO inner loop (collect, update) on rlhf.functional's gae and
clipped losses  3. reptile_update (the outer step)  4. train()  5. adaptation and evaluate().
Env steps are agent steps (each env.frame_skip NES frames).
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from rlhf import checkpoint as ckpt
from rlhf.algos.base import torch_threads
from rlhf.config import ConfigError
from rlhf.functional import clipped_policy_loss, clipped_value_loss, gae, masked_whiten

log = logging.getLogger("rlhf")
META_MODES = ("reptile", "joint")


# =======================================================================================
# 1. The policy: a small conv net (RAMario: one convolution, flatten, dense)


class ConvPolicy(nn.Module):
    """uint8 frames [B, C, H, W] -> (action logits [B, A], value [B]). One convolution, flatten,
    an optional hidden dense layer (algo.hidden=0: none, as in the paper), then a dense policy
    head and a dense value head (PPO needs a critic; the paper's net has only the first)."""

    def __init__(self, obs_shape: tuple[int, int, int], n_actions: int, channels: int = 16, kernel: int = 8,
                 stride: int = 4, hidden: int = 0):
        super().__init__()
        c, h, w = obs_shape
        conv = nn.Conv2d(c, channels, kernel, stride)
        nn.init.orthogonal_(conv.weight, np.sqrt(2))
        nn.init.zeros_(conv.bias)
        width = channels * ((h - kernel) // stride + 1) * ((w - kernel) // stride + 1)
        layers: list[nn.Module] = [conv, nn.ReLU(), nn.Flatten()]
        if hidden:
            dense = nn.Linear(width, hidden)
            nn.init.orthogonal_(dense.weight, np.sqrt(2))
            nn.init.zeros_(dense.bias)
            layers += [dense, nn.ReLU()]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.policy_head = nn.Linear(width, n_actions)
        self.value_head = nn.Linear(width, 1)
        for head, gain in ((self.policy_head, 0.01), (self.value_head, 1.0)):
            nn.init.orthogonal_(head.weight, gain)
            nn.init.zeros_(head.bias)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(obs.float() / 255.0)
        return self.policy_head(features), self.value_head(features).squeeze(-1)


def build_policy(cfg) -> ConvPolicy:
    from envs import mario

    a = cfg.algo
    return ConvPolicy(mario.observation_shape(cfg.env), mario.num_actions(cfg.env), int(a.conv_channels),
                      int(a.conv_kernel), int(a.conv_stride), int(a.hidden))


# =======================================================================================
# 2. The inner loop: PPO on one task


@dataclass
class PPOSettings:
    num_envs: int
    num_steps: int
    epochs: int
    minibatches: int
    lr: float
    clip: float
    vf_coef: float
    entropy_coef: float
    max_grad_norm: float
    gamma: float
    lam: float
    reward_scale: float

    @classmethod
    def from_cfg(cls, a) -> PPOSettings:
        return cls(int(a.num_envs), int(a.num_steps), int(a.epochs), int(a.minibatches), float(a.lr), float(a.clip),
                   float(a.vf_coef), float(a.entropy_coef), float(a.max_grad_norm), float(a.gamma), float(a.lam),
                   float(a.reward_scale))

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.num_steps


@dataclass
class Rollout:
    obs: torch.Tensor  # [B, C, H, W] uint8
    actions: torch.Tensor  # [B]
    logp: torch.Tensor  # [B]
    values: torch.Tensor  # [B]
    advantages: torch.Tensor  # [B]
    returns: torch.Tensor  # [B]


class PPOLearner:
    """A policy and its Adam: collect num_steps x num_envs steps, then one PPO update."""

    def __init__(self, net: ConvPolicy, hp: PPOSettings):
        self.net, self.hp = net, hp
        self.optimizer = torch.optim.Adam(net.parameters(), lr=hp.lr, eps=1e-5)

    @torch.no_grad()
    def collect(self, venv, obs: np.ndarray) -> tuple[Rollout, np.ndarray, list[dict]]:
        hp, T, N = self.hp, self.hp.num_steps, self.hp.num_envs
        obs_buf = torch.zeros((T, N, *obs.shape[1:]), dtype=torch.uint8)
        act_buf, logp_buf, val_buf = torch.zeros(T, N, dtype=torch.long), torch.zeros(T, N), torch.zeros(T, N)
        rew_buf, done_buf = torch.zeros(T, N), torch.zeros(T, N)
        finished: list[dict] = []
        for t in range(T):
            o = torch.as_tensor(obs)
            logits, value = self.net(o)
            dist = torch.distributions.Categorical(logits=logits)
            action = dist.sample()
            obs_buf[t], act_buf[t], logp_buf[t], val_buf[t] = o, action, dist.log_prob(action), value
            obs, reward, terminated, truncated, done_eps = venv.step(action.numpy())
            rew_buf[t] = torch.as_tensor(reward) * hp.reward_scale
            done_buf[t] = torch.as_tensor(terminated | truncated, dtype=torch.float32)
            finished += done_eps
        _, next_value = self.net(torch.as_tensor(obs))
        # rows = envs; an episode's end stops the bootstrap. Truncations (time limit, no progress)
        # count as ends too: a Mario that stopped moving has little value left to bootstrap.
        adv, ret = gae(rew_buf.T, val_buf.T, torch.ones(N, T), hp.gamma, hp.lam, next_value=next_value,
                       dones=done_buf.T)
        flat = lambda x: x.transpose(0, 1).reshape(N * T, *x.shape[2:])  # [T, N, ...] -> env-major [N*T, ...]
        return Rollout(flat(obs_buf), flat(act_buf), flat(logp_buf), flat(val_buf), adv.reshape(-1),
                       ret.reshape(-1)), obs, finished

    def update(self, batch: Rollout) -> dict[str, float]:
        hp, n = self.hp, batch.actions.shape[0]
        ones = torch.ones(n)
        advantages = masked_whiten(batch.advantages, ones)
        size = max(1, n // hp.minibatches)
        stats: list[dict[str, float]] = []
        for _ in range(hp.epochs):
            order = torch.randperm(n)
            for start in range(0, n - size + 1, size):
                idx = order[start:start + size]
                logits, values = self.net(batch.obs[idx])
                dist = torch.distributions.Categorical(logits=logits)
                pg_loss, pg = clipped_policy_loss(dist.log_prob(batch.actions[idx]), batch.logp[idx], advantages[idx],
                                                  ones[idx], hp.clip)
                v_loss, _ = clipped_value_loss(values, batch.values[idx], batch.returns[idx], ones[idx], hp.clip)
                entropy = dist.entropy().mean()
                loss = pg_loss + hp.vf_coef * v_loss - hp.entropy_coef * entropy
                self.optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(self.net.parameters(), hp.max_grad_norm)
                self.optimizer.step()
                stats.append({"loss/policy": pg_loss.item(), "loss/value": v_loss.item(),
                              "policy/entropy": entropy.item(), "policy/approxkl": float(pg["approxkl"]),
                              "policy/clipfrac": float(pg["clipfrac"])})
        return {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}


def inner_loop(learner: PPOLearner, venv, task: str, updates: int, seed: int) -> tuple[list[dict], list[dict]]:
    """`updates` PPO updates of learner.net on one task (stage), starting from fresh episodes."""
    venv.set_task(task)
    obs = venv.reset([seed + i for i in range(venv.n)])
    episodes, stats = [], []
    for _ in range(updates):
        batch, obs, finished = learner.collect(venv, obs)
        stats.append(learner.update(batch))
        episodes += finished
    return episodes, stats


# =======================================================================================
# 3. Reptile's outer step


def reptile_update(theta: dict[str, torch.Tensor], phis: list[dict[str, torch.Tensor]],
                   eps: float) -> dict[str, torch.Tensor]:
    """theta <- theta + eps * (mean_i phi_i - theta)  (Nichol et al. 2018, Algorithm 2 with
    the batch mean; one task: theta + eps * (phi - theta)). Returns new tensors."""
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


# =======================================================================================
# 4. Meta-training


def check_config(cfg) -> None:
    from envs import mario

    mario.check_env_config(cfg.env)
    a = cfg.algo
    if a.meta not in META_MODES:
        raise ConfigError(f"algo.meta={a.meta!r} is not valid; valid choices: {', '.join(META_MODES)}")
    for key in ("num_envs", "num_steps", "epochs", "minibatches", "inner_updates", "meta_batch", "conv_channels",
                "conv_kernel", "conv_stride", "threads"):
        if not isinstance(a[key], int) or a[key] < 1:
            raise ConfigError(f"algo.{key}={a[key]!r} must be a positive integer")
    for key in ("total_steps", "checkpoint_every", "hidden"):
        if not isinstance(a[key], int) or a[key] < 0:
            raise ConfigError(f"algo.{key}={a[key]!r} must be an integer >= 0")
    if not 0.0 < float(a.outer_lr) <= 1.0 or not 0.0 <= float(a.outer_lr_final) <= 1.0:
        raise ConfigError(f"algo.outer_lr={a.outer_lr} must lie in (0, 1] and algo.outer_lr_final="
                          f"{a.outer_lr_final} in [0, 1]")
    if int(a.minibatches) > int(a.num_envs) * int(a.num_steps):
        raise ConfigError(f"algo.minibatches={a.minibatches} exceeds the batch num_envs x num_steps")


class Reptile:
    """The run: meta-weights (theta), env, counters; one meta-iteration at a time."""

    def __init__(self, cfg, run_dir: Path):
        from envs import mario

        self.cfg, self.run_dir, a = cfg, Path(run_dir), cfg.algo
        self.hp = PPOSettings.from_cfg(a)
        self.stages = mario.stage_list(cfg.env.stages)
        self.steps_per_iteration = int(a.meta_batch) * int(a.inner_updates) * self.hp.steps_per_update
        self.iterations = int(a.total_steps) // self.steps_per_iteration
        if int(a.total_steps) and not self.iterations:
            raise ConfigError(f"algo.total_steps={a.total_steps} is below one meta-iteration (meta_batch x "
                              f"inner_updates x num_envs x num_steps = {self.steps_per_iteration} env steps)")
        torch.manual_seed(int(cfg.seed))
        self.rng = np.random.default_rng(int(cfg.seed))
        self.net = build_policy(cfg)
        self.joint = PPOLearner(self.net, self.hp) if a.meta == "joint" else None
        self.venv = mario.VectorEnv(lambda: mario.make_env(cfg.env), self.hp.num_envs)
        self.iteration, self.env_steps = 0, 0

    def iteration_step(self) -> tuple[dict[str, float], list[dict]]:
        a = self.cfg.algo
        tasks = [str(t) for t in self.rng.choice(self.stages, size=int(a.meta_batch))]
        seed = int(self.cfg.seed) * 1_000_003 + self.iteration * 10_007
        episodes, stats, phis = [], [], []
        eps = outer_lr(a, self.iteration, self.iterations)
        for i, task in enumerate(tasks):
            learner = self.joint or PPOLearner(copy.deepcopy(self.net), self.hp)  # phi_i = theta, fresh Adam
            eps_i, stats_i = inner_loop(learner, self.venv, task, int(a.inner_updates), seed + 101 * i)
            episodes += eps_i
            stats += stats_i
            if self.joint is None:
                phis.append({k: v.detach() for k, v in learner.net.state_dict().items()})
        if phis:
            self.net.load_state_dict(reptile_update(self.net.state_dict(), phis, eps))
        self.iteration += 1
        self.env_steps += self.steps_per_iteration
        out = {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}
        out.update({"reptile/outer_lr": eps if self.joint is None else 1.0, "reptile/iteration": float(self.iteration)})
        for stage in self.stages:
            out[f"reptile/task_{stage}"] = float(tasks.count(stage))
        return out, episodes

    def state(self) -> dict:
        return {"step": self.env_steps, "iteration": self.iteration, "policy": self.net.state_dict(),
                "optimizer": self.joint.optimizer.state_dict() if self.joint else None,
                "rng": {"torch": torch.get_rng_state(), "tasks": self.rng.bit_generator.state},
                "config": OmegaConf.to_container(self.cfg, resolve=True)}

    def load_state(self, state: dict) -> None:
        self.env_steps, self.iteration = int(state["step"]), int(state["iteration"])
        self.net.load_state_dict(state["policy"])
        if self.joint is not None and state["optimizer"] is not None:
            self.joint.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        self.rng.bit_generator.state = state["rng"]["tasks"]

    def save(self) -> Path:
        return ckpt.save_checkpoint(self.run_dir, self.env_steps, self.state(), {"policy": self.net},
                                    int(self.cfg.train.keep_checkpoints))


def train(cfg, run_dir: Path) -> dict[str, float]:
    """`python -m rlhf.train algo=reptile env=mario`: algo.total_steps env steps of
    meta-training (TensorBoard step = env steps); checkpoints every algo.checkpoint_every
    meta-iterations and at the end."""
    check_config(cfg)
    with torch_threads(cfg.algo.threads):
        return _train(cfg, run_dir)


def _train(cfg, run_dir: Path) -> dict[str, float]:
    from envs.mario import episode_metrics
    from rlhf.harness import save_eval
    from rlhf.logger import Logger

    run = Reptile(cfg, run_dir)
    if cfg.train.resume:
        path = ckpt.resolve_resume(cfg.train.resume, run.run_dir, run.run_dir.parent)
        run.load_state(torch.load(path / ckpt.STATE, weights_only=False))
        log.info(f"[resume] from {path} at {run.env_steps} env steps, meta-iteration {run.iteration}")
    a = cfg.algo
    logger = Logger(run.run_dir, run.iterations * run.steps_per_iteration, 1, first_step=run.env_steps + 1)
    log.info(f"[reptile] meta={a.meta} stages={run.stages} | {run.iterations} meta-iterations x "
             f"{run.steps_per_iteration} env steps (meta_batch {a.meta_batch} x inner_updates {a.inner_updates} x "
             f"{run.hp.num_envs} envs x {run.hp.num_steps} steps) | run dir {run.run_dir}")
    start, start_steps, recent = time.time(), run.env_steps, []
    try:
        while run.iteration < run.iterations:
            stats, episodes = run.iteration_step()
            recent = (recent + episodes)[-20:]
            metrics = {**stats, **episode_metrics(episodes),
                       "perf/env_steps_per_s": (run.env_steps - start_steps) / max(time.time() - start, 1e-9)}
            for key, value in metrics.items():
                logger.writer.add_scalar(key, value, run.env_steps)
            if recent:
                log.info(f"[reptile] it {run.iteration}/{run.iterations} steps {run.env_steps} | x_pos "
                         f"{np.mean([e['distance'] for e in recent]):.0f} (last {len(recent)} episodes) | "
                         f"{time.time() - start:.0f}s")
            if int(a.checkpoint_every) and run.iteration % int(a.checkpoint_every) == 0:
                run.save()
        final_path = run.save()
        final = {k.split("/", 1)[1]: v for k, v in episode_metrics(recent).items()}
        final.update({"env_steps": float(run.env_steps), "wall_s": time.time() - start,
                      "meta_iterations": float(run.iteration)})
        save_eval(run.run_dir, run.env_steps, final)
        log.info(f"[reptile] done: {run.env_steps} env steps in {final['wall_s']:.0f}s; checkpoint {final_path}")
    finally:
        logger.close()
        run.venv.close()
    return final


# =======================================================================================
# 5. Adaptation to held-out stages, and evaluation


def sampling_actor(net: ConvPolicy, seed: int):
    """obs -> action sampled from the policy with its own seeded generator (NES emulation is
    deterministic: the episode differs only through the sampled actions)."""
    gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def act(obs: np.ndarray) -> int:
        logits, _ = net(torch.as_tensor(obs).unsqueeze(0))
        return int(torch.multinomial(torch.softmax(logits[0], -1), 1, generator=gen))

    return act


def adaptation_curve(cfg, theta: dict[str, torch.Tensor], stage: str, steps: int, points: int,
                     episodes: int) -> list[tuple[int, dict[str, float]]]:
    """Adapt a copy of theta to `stage` with the inner loop (fresh Adam) for `steps` env steps;
    at `points` evenly spaced adaptation steps (0 and the last included) evaluate the policy
    for `episodes` sampled episodes. -> [(adaptation step, stage metrics)]."""
    from envs import mario

    hp = PPOSettings.from_cfg(cfg.algo)
    net = build_policy(cfg)
    net.load_state_dict(theta)
    learner = PPOLearner(net, hp)
    updates = steps // hp.steps_per_update
    marks = sorted({round(u) for u in np.linspace(0, updates, max(points, 1))}) if updates else [0]
    eval_env = mario.make_env(cfg.env, stages=[stage])
    venv = mario.VectorEnv(lambda: mario.make_env(cfg.env, stages=[stage]), hp.num_envs)
    curve = []
    torch.manual_seed(int(cfg.seed) + 17)
    try:
        obs = venv.reset([int(cfg.seed) * 7919 + i for i in range(venv.n)])
        for u in range(updates + 1):
            if u in marks:
                records = mario.run_episodes(eval_env, sampling_actor(net, int(cfg.seed)), stage, episodes)
                curve.append((u * hp.steps_per_update, mario.episode_metrics(records)))
            if u < updates:
                batch, obs, _ = learner.collect(venv, obs)
                learner.update(batch)
    finally:
        eval_env.close()
        venv.close()
    return curve


def evaluate(cfg, checkpoint_dir: Path, run_dir: Path) -> dict[str, float]:
    """`python -m rlhf.evaluate run=<run dir> [eval.adapt_steps=K] [eval.gif=true]`: the
    meta-weights on every stage of eval.stages (no adaptation), then, on each held-out stage,
    the K-step adaptation curve (TensorBoard adapt/x_pos vs adaptation step)."""
    from torch.utils.tensorboard import SummaryWriter

    from envs import mario

    state = torch.load(Path(checkpoint_dir) / ckpt.STATE, weights_only=False)
    torch.set_num_threads(int(cfg.algo.threads))
    net = build_policy(cfg)
    net.load_state_dict(state["policy"])
    stages = eval_stages(cfg)
    gif_dir = Path(run_dir) / "eval" if bool(cfg.eval.gif) else None
    metrics = mario.evaluate_stages(cfg.env, sampling_actor(net, int(cfg.seed)), stages, int(cfg.eval.episodes),
                                    gif_dir) if stages else {}
    held_out = mario.stage_list(cfg.env.held_out)
    if int(cfg.eval.adapt_steps) > 0 and held_out:
        curves = {s: adaptation_curve(cfg, state["policy"], s, int(cfg.eval.adapt_steps), int(cfg.eval.adapt_points),
                                      int(cfg.eval.episodes)) for s in held_out}
        with SummaryWriter(str(run_dir)) as writer:
            for i, (k, _) in enumerate(next(iter(curves.values()))):
                for stage, curve in curves.items():
                    for key, value in curve[i][1].items():
                        writer.add_scalar(f"adapt/{stage}/{key.split('/', 1)[1]}", value, k)
                for key in ("x_pos", "flag_rate", "return"):
                    value = float(np.mean([c[i][1][f"{'episode' if key == 'return' else 'mario'}/{key}"]
                                           for c in curves.values()]))
                    writer.add_scalar(f"adapt/{key}", value, k)
                    if i == len(next(iter(curves.values()))) - 1:
                        metrics[f"adapt/{key}"] = value
        metrics["adapt/steps"] = float(int(cfg.eval.adapt_steps))
        for stage, curve in curves.items():
            log.info(f"[reptile] adaptation on {stage}: " + ", ".join(
                f"{k} steps -> x {m['mario/x_pos']:.0f}" for k, m in curve))
    return metrics


def eval_stages(cfg) -> list[str]:
    """eval.stages: held_out | train | all | none -> the stage list (shared by the Mario algorithms)."""
    from envs import mario

    which = str(cfg.eval.stages)
    choices = {"held_out": mario.stage_list(cfg.env.held_out), "train": mario.stage_list(cfg.env.stages)}
    choices["all"] = list(dict.fromkeys(choices["train"] + choices["held_out"]))
    choices["none"] = []  # e.g. only the adaptation curve (algo=reptile)
    if which not in choices:
        raise ConfigError(f"eval.stages={which!r} is not valid; valid choices: {', '.join(choices)}")
    return choices[which]
