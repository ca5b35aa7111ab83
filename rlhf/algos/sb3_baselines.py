"""`algo=sb3_ppo` and `algo=sb3_dqn`: stable-baselines3's PPO and DQN (CnnPolicy, NatureCNN)
on Super Mario Bros (`env=mario`), as the baselines of RAMario (Schulman et al. 2017; Mnih et
al. 2015). SB3 does the learning; this module makes it a run of the framework's harness:

  * a step of the run is one `model.learn(algo.chunk_steps, reset_num_timesteps=False)` call
    (env steps summed over the parallel envs); every chunk starts from freshly seeded episodes
    (the VecEnv is re-seeded and `model._last_obs` cleared so SB3 resets it), so a run paused
    between chunks (train.stop_after) and resumed sees exactly the data of an unpaused one;
    DQN's exploration schedule runs over the whole budget, not over a chunk;
  * the env: N copies of envs.mario.make_env (training stages sampled per episode) in SB3's
    DummyVecEnv; observations are uint8 [frame_stack, 84, 84], channels first;
  * metrics with the shared names (x = env steps): `mario/x_pos`, `mario/flag_rate`,
    `episode/return` of the chunk's finished episodes, and SB3's training values (`loss/policy`,
    `loss/value`, `policy/entropy`, `policy/approxkl`, `policy/clipfrac`, `dqn/epsilon`; the rest
    as `sb3/<name>`);
  * checkpoints: the policy's weights and optimizer, SB3's counters and (DQN, with
    algo.save_replay_buffer) the replay buffer, plus SB3's own `model.save` zip, which
    `evaluate` loads: distance / flag rate / return per stage (envs.mario.evaluate_stages).
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from rlhf.config import ConfigError, require_ints
from rlhf.harness import Job

log = logging.getLogger("rlhf")
MODEL_FILE = "sb3_model.zip"
# SB3 logger keys -> the framework's shared names (anything else is logged as sb3/<key>)
SHARED_NAMES = {"train/policy_gradient_loss": "loss/policy", "train/value_loss": "loss/value",
                "train/approx_kl": "policy/approxkl", "train/clip_fraction": "policy/clipfrac",
                "train/loss": "loss/total", "train/explained_variance": "value/explained_variance",
                "rollout/exploration_rate": "dqn/epsilon"}
BUFFER_KEYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts", "pos", "full")
COUNTERS = ("num_timesteps", "_n_updates", "_episode_num", "_n_calls", "exploration_rate")


def algorithm_class(name: str):
    from stable_baselines3 import DQN, PPO

    classes = {"sb3_ppo": PPO, "sb3_dqn": DQN}
    if name not in classes:
        raise ConfigError(f"algo.name={name!r} is not an SB3 baseline; valid choices: {', '.join(classes)}")
    return classes[name]


def hyperparameters(cfg) -> dict:
    a = cfg.algo
    common = {"learning_rate": float(a.lr), "gamma": float(a.gamma), "batch_size": int(a.batch_size),
              "policy_kwargs": {"features_extractor_kwargs": {"features_dim": int(a.features_dim)}}}
    if a.name == "sb3_ppo":
        return {**common, "n_steps": int(a.n_steps), "n_epochs": int(a.n_epochs), "gae_lambda": float(a.gae_lambda),
                "clip_range": float(a.clip_range), "ent_coef": float(a.ent_coef), "vf_coef": float(a.vf_coef),
                "max_grad_norm": float(a.max_grad_norm)}
    return {**common, "buffer_size": int(a.buffer_size), "learning_starts": int(a.learning_starts),
            "train_freq": int(a.train_freq), "gradient_steps": int(a.gradient_steps),
            "target_update_interval": int(a.target_update_interval),
            "exploration_fraction": float(a.exploration_fraction),
            "exploration_final_eps": float(a.exploration_final_eps),
            "optimize_memory_usage": False, "replay_buffer_kwargs": {"handle_timeout_termination": True}}


def collector(values: dict):
    """An SB3 logger output that keeps the latest value of each key under the shared names."""
    from stable_baselines3.common.logger import KVWriter

    class SharedNames(KVWriter):
        def write(self, key_values: dict, key_excluded: dict, step: int = 0) -> None:
            for key, value in key_values.items():
                if isinstance(value, (int, float, np.floating, np.integer)) and not key.startswith("time/"):
                    if key == "train/entropy_loss":  # SB3 logs -entropy
                        values["policy/entropy"] = -float(value)
                    else:
                        values[SHARED_NAMES.get(key, "sb3/" + key.replace("/", "_"))] = float(value)

    return SharedNames()


def episode_callback(budget: int):
    """Each chunk's finished episodes (envs.mario records), and DQN's schedules over the budget."""
    from stable_baselines3.common.callbacks import BaseCallback

    from envs.mario import episode_record

    class Episodes(BaseCallback):
        def _on_training_start(self) -> None:
            self.model._total_timesteps = budget  # learn(chunk) would set it to the end of this chunk
            n = self.training_env.num_envs
            self.returns, self.lengths, self.episodes = np.zeros(n), np.zeros(n, dtype=np.int64), []

        def _on_step(self) -> bool:
            self.returns += self.locals["rewards"]
            self.lengths += 1
            for i, done in enumerate(self.locals["dones"]):
                if done:
                    self.episodes.append(episode_record(self.locals["infos"][i], self.returns[i], int(self.lengths[i])))
                    self.returns[i], self.lengths[i] = 0.0, 0
            return True

    return Episodes()


class SB3Baseline(Job):
    unit = "chunk"

    @classmethod
    def check(cls, cfg) -> None:
        from envs import mario

        mario.check_env_config(cfg.env)
        a = cfg.algo
        algorithm_class(str(a.name))
        keys = ["total_steps", "chunk_steps", "num_envs", "threads"] + (
            ["n_steps", "batch_size", "n_epochs"] if a.name == "sb3_ppo" else
            ["buffer_size", "batch_size", "learning_starts", "train_freq", "target_update_interval"])
        require_ints(a, keys + ["checkpoint_every"], zero_ok=("learning_starts", "checkpoint_every"))
        unit = int(a.num_envs) * (int(a.n_steps) if a.name == "sb3_ppo" else int(a.train_freq))
        if int(a.chunk_steps) % unit:
            raise ConfigError(f"algo.chunk_steps={a.chunk_steps} must be a multiple of num_envs x "
                              f"{'n_steps' if a.name == 'sb3_ppo' else 'train_freq'} = {unit} (SB3 learns in those units)")
        if a.name == "sb3_ppo" and int(a.batch_size) > int(a.n_steps) * int(a.num_envs):
            raise ConfigError(f"algo.batch_size={a.batch_size} exceeds the rollout n_steps x num_envs = "
                              f"{int(a.n_steps) * int(a.num_envs)}")

    def __init__(self, cfg, run_dir: Path):
        from stable_baselines3.common.logger import Logger as SB3Logger
        from stable_baselines3.common.vec_env import DummyVecEnv

        from envs import mario

        super().__init__(cfg, run_dir)
        a = cfg.algo
        self.venv = DummyVecEnv([lambda: mario.make_env(cfg.env) for _ in range(int(a.num_envs))])
        self.model = algorithm_class(str(a.name))("CnnPolicy", self.venv, seed=int(cfg.seed), device="cpu", verbose=0,
                                                  **hyperparameters(cfg))
        self.values: dict[str, float] = {}
        self.model.set_logger(SB3Logger(None, [collector(self.values)]))
        self.total = math.ceil(int(a.total_steps) / int(a.chunk_steps))  # whole chunks
        self.callback = episode_callback(self.total * int(a.chunk_steps))
        self.recent: list[dict] = []  # the last 20 training episodes, for the final summary

    def step(self) -> dict[str, float]:
        from envs.mario import episode_metrics

        start = time.time()
        self.venv.seed(int(self.cfg.seed) * 1_000_003 + self.steps_done * 101)  # used by the next reset
        self.model._last_obs = None  # so learn() resets the envs: a clean chunk boundary
        self.values.clear()
        self.model.learn(int(self.cfg.algo.chunk_steps), callback=self.callback, reset_num_timesteps=False,
                         log_interval=None)
        self.model.logger.dump(self.model.num_timesteps)  # the chunk's last training values -> self.values
        self.recent = (self.recent + self.callback.episodes)[-20:]
        speed = int(self.cfg.algo.chunk_steps) / max(time.time() - start, 1e-9)
        return {**episode_metrics(self.callback.episodes), **self.values, "perf/env_steps_per_s": speed}

    def log_x(self) -> int:
        return int(self.model.num_timesteps)

    @property
    def eval_every(self) -> int:
        return 0  # held-out evaluation: python -m rlhf.evaluate

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"policy": self.model.policy}  # DQN: q_net and q_net_target

    def state_dict(self) -> dict:
        m, a = self.model, self.cfg.algo
        state = {"optimizer": m.policy.optimizer.state_dict(), "recent": self.recent,
                 "counters": {k: getattr(m, k) for k in COUNTERS if hasattr(m, k)}}
        if a.name == "sb3_dqn" and bool(a.save_replay_buffer):
            state["replay_buffer"] = {k: getattr(m.replay_buffer, k) for k in BUFFER_KEYS}
        return state

    def load_state_dict(self, state: dict) -> None:
        m = self.model
        m.policy.optimizer.load_state_dict(state["optimizer"])
        for key, value in state["counters"].items():
            setattr(m, key, value)
        for key, value in state.get("replay_buffer", {}).items():
            setattr(m.replay_buffer, key, value)
        self.recent = list(state["recent"])

    def generators(self) -> dict:
        return {"action_space": self.model.action_space.np_random}  # DQN's random actions (warm-up, epsilon)

    def write_extra(self, checkpoint_dir: Path) -> None:
        self.model.save(Path(checkpoint_dir) / MODEL_FILE)

    def evaluate(self) -> dict[str, float]:
        """The last 20 training episodes (x-distance, flag rate, return)."""
        from envs.mario import episode_metrics

        final = {k.split("/", 1)[1]: v for k, v in episode_metrics(self.recent).items()}
        return {**final, "env_steps": float(self.model.num_timesteps)}

    def describe(self) -> str:
        a = self.cfg.algo
        return (f"{a.name}: SB3 {type(self.model).__name__} CnnPolicy on stages {list(self.cfg.env.stages)} x {a.num_envs} "
                f"envs, {self.total} chunks of {a.chunk_steps} env steps")

    def close(self) -> None:
        self.venv.close()


def evaluate(cfg, checkpoint_dir: Path, run_dir: Path) -> dict[str, float]:
    """`python -m rlhf.evaluate run=<run dir> [eval.episodes=N] [eval.stages=all] [eval.gif=true]`:
    the policy's sampled actions (SB3 predict, deterministic=False; DQN: epsilon at its final
    value) for eval.episodes episodes per stage."""
    from envs import mario

    torch.set_num_threads(int(cfg.algo.threads))
    model = algorithm_class(str(cfg.algo.name)).load(Path(checkpoint_dir) / MODEL_FILE, device="cpu")
    model.set_random_seed(int(cfg.seed))
    gif_dir = Path(run_dir) / "eval" if bool(cfg.eval.gif) else None

    def act(obs: np.ndarray) -> int:
        return int(model.predict(obs, deterministic=bool(cfg.eval.deterministic))[0])

    return mario.evaluate_stages(cfg.env, act, mario.eval_stages(cfg.env, str(cfg.eval.stages)), int(cfg.eval.episodes),
                                 gif_dir)
