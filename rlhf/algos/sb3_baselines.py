"""`algo=sb3_ppo` and `algo=sb3_dqn`: stable-baselines3's PPO and DQN (CnnPolicy, NatureCNN)
on Super Mario Bros (`env=mario`), as the baselines of RAMario (Schulman et al. 2017; Mnih et
al. 2015). Thin wrappers: SB3 does the learning; this module adds what every algorithm of the
framework has:

  * the env: N copies of envs.mario.make_env (training stages sampled per episode) in SB3's
    DummyVecEnv; observations are uint8 [frame_stack, 84, 84], channels first;
  * TensorBoard in the run directory with the shared names: `mario/x_pos`, `mario/flag_rate`,
    `episode/return` (episodes finished since the last log line), `perf/env_steps_per_s`, and
    SB3's own training values (`loss/policy`, `loss/value`, `policy/entropy`,
    `policy/approxkl`, `policy/clipfrac`, DQN `loss/q`; the rest as `sb3/<name>`);
  * atomic checkpoints (rlhf.checkpoint) holding SB3's `model.save` zip (and, for DQN with
    algo.save_replay_buffer, the replay buffer); `train.resume` continues from one (SB3 restores
    weights, optimizer and buffer; the emulators start fresh episodes);
  * `evaluate`: distance / flag rate / return per stage (envs.mario.evaluate_stages), GIF.

Env steps are agent steps (each env.frame_skip NES frames), summed over the parallel envs.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from rlhf import checkpoint as ckpt
from rlhf.config import ConfigError

log = logging.getLogger("rlhf")
MODEL_FILE = "sb3_model.zip"
BUFFER_FILE = "replay_buffer.pkl"
# SB3 logger keys -> the framework's shared names (anything else is logged as sb3/<key>)
SHARED_NAMES = {"train/policy_gradient_loss": "loss/policy", "train/value_loss": "loss/value",
                "train/approx_kl": "policy/approxkl", "train/clip_fraction": "policy/clipfrac",
                "train/loss": "loss/total", "train/explained_variance": "value/explained_variance",
                "rollout/exploration_rate": "dqn/epsilon"}


def algorithm_class(name: str):
    from stable_baselines3 import DQN, PPO

    classes = {"sb3_ppo": PPO, "sb3_dqn": DQN}
    if name not in classes:
        raise ConfigError(f"algo.name={name!r} is not an SB3 baseline; valid choices: {', '.join(classes)}")
    return classes[name]


def check_config(cfg) -> None:
    from envs import mario

    mario.check_env_config(cfg.env)
    a = cfg.algo
    keys = ["total_steps", "num_envs", "threads", "log_every"] + (
        ["n_steps", "batch_size", "n_epochs"] if a.name == "sb3_ppo" else
        ["buffer_size", "batch_size", "learning_starts", "train_freq", "target_update_interval"])
    for key in keys:
        if not isinstance(a[key], int) or a[key] < (0 if key == "learning_starts" else 1):
            raise ConfigError(f"algo.{key}={a[key]!r} must be a positive integer")
    if not isinstance(a.checkpoint_every, int) or a.checkpoint_every < 0:
        raise ConfigError(f"algo.checkpoint_every={a.checkpoint_every!r} must be an integer >= 0 (env steps; 0 = only the last)")
    if a.name == "sb3_ppo" and int(a.batch_size) > int(a.n_steps) * int(a.num_envs):
        raise ConfigError(f"algo.batch_size={a.batch_size} exceeds the rollout n_steps x num_envs = "
                          f"{int(a.n_steps) * int(a.num_envs)}")


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


def make_vec_env(cfg):
    from stable_baselines3.common.vec_env import DummyVecEnv

    from envs import mario

    venv = DummyVecEnv([lambda: mario.make_env(cfg.env) for _ in range(int(cfg.algo.num_envs))])
    venv.seed(int(cfg.seed))
    return venv


def tensorboard_format(writer):
    """An SB3 logger output that writes into our SummaryWriter with the shared names."""
    from stable_baselines3.common.logger import KVWriter

    class SharedNames(KVWriter):
        def write(self, key_values: dict, key_excluded: dict, step: int = 0) -> None:
            for key, value in key_values.items():
                if isinstance(value, (int, float, np.floating, np.integer)) and not key.startswith("time/"):
                    name = SHARED_NAMES.get(key, "sb3/" + key.replace("/", "_"))
                    if key == "train/entropy_loss":  # SB3 logs -entropy
                        name, value = "policy/entropy", -float(value)
                    writer.add_scalar(name, float(value), step)

        def close(self) -> None:
            pass

    return SharedNames()


def metrics_callback(cfg, run_dir: Path, writer, save):
    """Episode statistics with the shared names every algo.log_every env steps, and a
    checkpoint every algo.checkpoint_every env steps."""
    from stable_baselines3.common.callbacks import BaseCallback

    from envs.mario import episode_metrics, episode_record

    class MarioMetrics(BaseCallback):
        def _on_training_start(self) -> None:
            n = self.training_env.num_envs
            self.returns, self.lengths = np.zeros(n), np.zeros(n, dtype=np.int64)
            self.episodes: list[dict] = []
            self.start, self.start_steps = time.time(), self.num_timesteps
            self.last_log = self.last_ckpt = self.num_timesteps

        def _on_step(self) -> bool:
            rewards, dones, infos = self.locals["rewards"], self.locals["dones"], self.locals["infos"]
            self.returns += rewards
            self.lengths += 1
            for i, done in enumerate(dones):
                if done:
                    self.episodes.append(episode_record(infos[i], self.returns[i], int(self.lengths[i])))
                    self.returns[i], self.lengths[i] = 0.0, 0
            if self.num_timesteps - self.last_log >= int(cfg.algo.log_every):
                self.flush()
            every = int(cfg.algo.checkpoint_every)
            if every and self.num_timesteps - self.last_ckpt >= every:
                self.last_ckpt = self.num_timesteps
                save(self.model)
            return True

        def flush(self) -> None:
            self.last_log = self.num_timesteps
            speed = (self.num_timesteps - self.start_steps) / max(time.time() - self.start, 1e-9)
            metrics = {**episode_metrics(self.episodes), "perf/env_steps_per_s": speed}
            for key, value in metrics.items():
                writer.add_scalar(key, value, self.num_timesteps)
            if self.episodes:
                log.info(f"[{cfg.algo.name}] steps {self.num_timesteps}/{cfg.algo.total_steps} | x_pos "
                         f"{metrics['mario/x_pos']:.0f} flag {metrics['mario/flag_rate']:.2f} return "
                         f"{metrics['episode/return']:.1f} ({len(self.episodes)} episodes) | {speed:.0f} steps/s")
            self.recent = self.episodes or getattr(self, "recent", [])
            self.episodes = []

        def _on_training_end(self) -> None:
            self.flush()

    return MarioMetrics()


def train(cfg, run_dir: Path) -> dict[str, float]:
    """`python -m rlhf.train algo=sb3_ppo env=mario` (or sb3_dqn): SB3 learns for
    algo.total_steps env steps; metrics and checkpoints as described in the module docstring."""
    check_config(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(int(cfg.algo.threads))
    try:
        return _train(cfg, Path(run_dir))
    finally:
        torch.set_num_threads(threads)


def _train(cfg, run_dir: Path) -> dict[str, float]:
    from stable_baselines3.common.logger import Logger as SB3Logger
    from torch.utils.tensorboard import SummaryWriter

    from envs.mario import episode_metrics
    from rlhf.harness import save_eval

    cls, a = algorithm_class(str(cfg.algo.name)), cfg.algo
    venv = make_vec_env(cfg)
    resume_from = ckpt.resolve_resume(cfg.train.resume, run_dir, run_dir.parent) if cfg.train.resume else None
    if resume_from is not None:
        model = cls.load(resume_from / MODEL_FILE, env=venv, device="cpu")
        if (resume_from / BUFFER_FILE).exists():
            model.load_replay_buffer(resume_from / BUFFER_FILE)
        log.info(f"[resume] from {resume_from} at {model.num_timesteps} env steps")
    else:
        model = cls("CnnPolicy", venv, seed=int(cfg.seed), device="cpu", verbose=0, **hyperparameters(cfg))
    writer = SummaryWriter(str(run_dir), purge_step=model.num_timesteps + 1 if model.num_timesteps else None)
    model.set_logger(SB3Logger(None, [tensorboard_format(writer)]))

    def save(m) -> Path:
        def write_model(tmp: Path) -> None:
            m.save(tmp / MODEL_FILE)
            if a.name == "sb3_dqn" and bool(a.save_replay_buffer):
                m.save_replay_buffer(tmp / BUFFER_FILE)

        state = {"step": int(m.num_timesteps), "config": OmegaConf.to_container(cfg, resolve=True),
                 "algo": str(a.name)}
        return ckpt.save_checkpoint(run_dir, int(m.num_timesteps), state, {}, int(cfg.train.keep_checkpoints),
                                    write_extra=write_model)

    callback = metrics_callback(cfg, run_dir, writer, save)
    log.info(f"[{a.name}] SB3 {cls.__name__} CnnPolicy on stages {list(cfg.env.stages)} x {a.num_envs} envs for "
             f"{a.total_steps} env steps | run dir {run_dir}")
    start = time.time()
    try:
        remaining = int(a.total_steps) - int(model.num_timesteps)
        if remaining > 0:
            model.learn(remaining, callback=callback, reset_num_timesteps=resume_from is None,
                        log_interval=1 if a.name == "sb3_ppo" else max(1, int(a.log_every) // 100))
            model.logger.dump(model.num_timesteps)  # SB3 dumps before each update: flush the last one's values
        final_path = save(model)
        recent = getattr(callback, "recent", [])
        final = {k.split("/", 1)[1]: v for k, v in episode_metrics(recent).items()}
        final.update({"env_steps": float(model.num_timesteps), "wall_s": time.time() - start})
        save_eval(run_dir, int(model.num_timesteps), final)
        log.info(f"[{a.name}] done: {model.num_timesteps} env steps in {final['wall_s']:.0f}s; checkpoint {final_path}")
    finally:
        writer.flush()
        writer.close()
        venv.close()
    return final


def evaluate(cfg, checkpoint_dir: Path, run_dir: Path) -> dict[str, float]:
    """`python -m rlhf.evaluate run=<run dir> [eval.episodes=N] [eval.stages=all] [eval.gif=true]`:
    the policy's sampled actions (SB3 predict, deterministic=False; DQN: epsilon at its final
    value) for eval.episodes episodes per stage."""
    from envs import mario
    from rlhf.algos.reptile import eval_stages

    torch.set_num_threads(int(cfg.algo.threads))
    model = algorithm_class(str(cfg.algo.name)).load(Path(checkpoint_dir) / MODEL_FILE, device="cpu")
    model.set_random_seed(int(cfg.seed))
    gif_dir = Path(run_dir) / "eval" if bool(cfg.eval.gif) else None

    def act(obs: np.ndarray) -> int:
        return int(model.predict(obs, deterministic=bool(cfg.eval.deterministic))[0])

    return mario.evaluate_stages(cfg.env, act, eval_stages(cfg), int(cfg.eval.episodes), gif_dir)
