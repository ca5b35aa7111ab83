"""`algo=rllib_ppo`: Ray RLlib's PPO (new API stack: EnvRunners + Learner + RLModule) on Super
Mario Bros (`env=mario`), the RAMario PPO baseline at cluster scale.

Every env runner is a Ray actor with its own emulators (envs.mario.make_env, training stages
sampled per episode), so sampling runs on algo.num_env_runners cores in parallel; the learner
runs in this process. The same config scales to a cluster: start Ray there (`ray start
--head` / `ray start --address=...`), then pass `algo.address=auto algo.num_env_runners=64`
(and `algo.num_learners=N` for remote learners, with GPUs if the cluster has them).

A step of the run is one `algo.train()` iteration (about algo.train_batch_size env steps). What
this module adds to RLlib:
  * the env adapter: RLlib's CNN encoder wants channels-last float images, so the framework's
    uint8 [stack, H, W] frames become float32 [H, W, stack] in [0, 1] (`rllib_env`);
  * clean step boundaries: before each iteration every env runner (local and remote) re-seeds
    its python/numpy/torch RNGs and resets its envs with a seed of that iteration, so the
    experience of an iteration depends only on the weights and the iteration number; the
    checkpoint holds RLlib's whole Algorithm state (learner weights and optimizer, connector
    states, metrics, iteration), so a paused run (train.stop_after) resumes exactly;
  * the shared metric names (x = env steps): an RLlib callback logs each episode's distance
    and flag; each iteration reports `mario/x_pos`, `mario/flag_rate`, `episode/return`,
    `perf/env_steps_per_s` and the learner's `loss/policy`, `loss/value`, `policy/entropy`,
    `policy/approxkl`;
  * checkpoints also hold RLlib's `save_to_path` directory, from which `evaluate` loads only the
    RLModule (no Ray needed).

Ray is started with algo.num_cpus CPUs and no dashboard when no cluster address is given, and
shut down at the end if this module started it. Set RAY_AUTH_MODE=disabled on machines without
Ray's token setup (this module sets it when unset).
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from rlhf.config import ConfigError, require_ints
from rlhf.harness import Job

log = logging.getLogger("rlhf")
RLLIB_DIR = "rllib"
MODULE_PATH = ("learner_group", "learner", "rl_module", "default_policy")
ENV_NAME = "rlhf_mario"


def rllib_env(env_config: dict):
    """The framework's Mario env (env config as a dict), observations as RLlib's CNN wants them."""
    import gymnasium as gym

    from envs import mario

    env = mario.make_env(OmegaConf.create(dict(env_config)))  # EnvContext is a dict subclass
    c, h, w = env.observation_space.shape
    return gym.wrappers.TransformObservation(
        env, lambda o: np.moveaxis(o, 0, -1).astype(np.float32) / 255.0,
        gym.spaces.Box(0.0, 1.0, (h, w, c), np.float32))


def mario_callbacks():
    """RLlib callback: each finished episode's distance and flag into the MetricsLogger (mean over
    the iteration's episodes); RLlib already logs the return."""
    from ray.rllib.callbacks.callbacks import RLlibCallback

    class MarioEpisodeMetrics(RLlibCallback):
        def on_episode_end(self, *, episode, metrics_logger=None, **kwargs) -> None:
            info = episode.get_infos(-1)
            metrics_logger.log_value("mario/x_pos", float(info.get("distance", info.get("x_pos", 0))), reduce="mean",
                                     window=1000, clear_on_reduce=True)
            metrics_logger.log_value("mario/flag_rate", float(bool(info.get("flag_get"))), reduce="mean",
                                     window=1000, clear_on_reduce=True)

    return MarioEpisodeMetrics


def build_config(cfg):
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    a = cfg.algo
    return (PPOConfig()
            .environment(ENV_NAME, env_config=OmegaConf.to_container(cfg.env, resolve=True))
            .framework("torch", torch_compile_learner=False)
            .env_runners(num_env_runners=int(a.num_env_runners), num_envs_per_env_runner=int(a.num_envs_per_env_runner),
                         num_cpus_per_env_runner=1, rollout_fragment_length="auto", sample_timeout_s=600)
            .learners(num_learners=int(a.num_learners))
            .training(lr=float(a.lr), gamma=float(a.gamma), lambda_=float(a.gae_lambda), clip_param=float(a.clip),
                      vf_loss_coeff=float(a.vf_coef), entropy_coeff=float(a.entropy_coef), grad_clip=float(a.max_grad_norm),
                      train_batch_size_per_learner=int(a.train_batch_size), minibatch_size=int(a.minibatch_size),
                      num_epochs=int(a.num_epochs), use_kl_loss=False, vf_clip_param=float(a.vf_clip))
            .rl_module(model_config=DefaultModelConfig(conv_filters=[list(f) for f in a.conv_filters] or None,
                                                        head_fcnet_hiddens=list(a.head_hiddens)))
            .callbacks(mario_callbacks())
            .debugging(seed=int(cfg.seed), log_level="ERROR")
            .reporting(metrics_num_episodes_for_smoothing=1))


def start_ray(cfg) -> bool:
    """Connect to algo.address, or start a local Ray (num_cpus, no dashboard). -> started here."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return False
    repo = str(Path(__file__).resolve().parents[2])
    runtime_env = {"env_vars": {"PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", ""),
                                "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": os.environ["RAY_AUTH_MODE"]}}
    if cfg.algo.address:
        ray.init(address=str(cfg.algo.address), runtime_env=runtime_env, log_to_driver=False)
    else:
        # address="local": a fresh Ray even when another cluster on this machine was started with `ray start`
        ray.init(address="local", num_cpus=int(cfg.algo.num_cpus), include_dashboard=False, runtime_env=runtime_env,
                 log_to_driver=False, configure_logging=False)
    return True


def _get(result: dict, *path, default=None):
    for key in path:
        if not isinstance(result, dict) or key not in result:
            return default
        result = result[key]
    return result


def shared_metrics(result: dict, env_steps: int, seconds: float) -> dict[str, float]:
    """RLlib's result dict -> the framework's metric names (missing values are left out)."""
    runners = result.get("env_runners", {})
    learner = _get(result, "learners", "default_policy", default={})
    pairs = {"mario/x_pos": runners.get("mario/x_pos"), "mario/flag_rate": runners.get("mario/flag_rate"),
             "episode/return": runners.get("episode_return_mean"), "episode/length": runners.get("episode_len_mean"),
             "episode/count": runners.get("num_episodes"), "perf/env_steps_per_s": env_steps / max(seconds, 1e-9),
             "loss/policy": learner.get("policy_loss"), "loss/value": learner.get("vf_loss"),
             "policy/entropy": learner.get("entropy"), "policy/approxkl": learner.get("mean_kl_loss"),
             "value/explained_variance": learner.get("vf_explained_var")}
    return {k: float(v) for k, v in pairs.items() if isinstance(v, (int, float, np.floating, np.integer))
            and np.isfinite(float(v))}


def sampled_steps(result: dict) -> int:
    """Env steps sampled in this training iteration (all runners together)."""
    return int(_get(result, "env_runners", "num_env_steps_sampled", default=0) or 0)


def reseed_runner(runner, seed: int) -> None:
    """Run on an env runner before an iteration: its RNGs and env resets depend on `seed` only."""
    import random

    s = seed + 7919 * int(runner.worker_index)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
    runner._seed = s  # RLlib seeds the envs with it at the next (initial) reset
    runner._needs_initial_reset = True


class RLlibPPO(Job):
    unit = "iteration"

    @classmethod
    def check(cls, cfg) -> None:
        from envs import mario

        mario.check_env_config(cfg.env)
        a = cfg.algo
        require_ints(a, ("total_steps", "num_env_runners", "num_envs_per_env_runner", "train_batch_size", "minibatch_size",
                         "num_epochs", "num_cpus", "threads", "checkpoint_every"), zero_ok=("num_env_runners", "checkpoint_every"))
        if int(a.minibatch_size) > int(a.train_batch_size):
            raise ConfigError(f"algo.minibatch_size={a.minibatch_size} exceeds algo.train_batch_size={a.train_batch_size}")
        if a.address is None and int(a.num_env_runners) > int(a.num_cpus):
            raise ConfigError(f"algo.num_env_runners={a.num_env_runners} needs one CPU each but the local Ray gets "
                              f"algo.num_cpus={a.num_cpus}; raise algo.num_cpus or lower the runners")

    def __init__(self, cfg, run_dir: Path):
        from ray.tune.registry import register_env

        super().__init__(cfg, run_dir)
        a = cfg.algo
        self.started = start_ray(cfg)
        register_env(ENV_NAME, rllib_env)
        self.algo = build_config(cfg).build_algo()
        self.total = math.ceil(int(a.total_steps) / int(a.train_batch_size))
        self.env_steps = 0

    def step(self) -> dict[str, float]:
        seed = int(self.cfg.seed) * 1_000_003 + self.steps_done * 101
        self.algo.env_runner_group.foreach_env_runner(lambda runner: reseed_runner(runner, seed), local_env_runner=True)
        start = time.time()
        result = self.algo.train()
        steps = sampled_steps(result)
        self.env_steps += steps
        return shared_metrics(result, steps, time.time() - start)

    def log_x(self) -> int:
        return self.env_steps

    @property
    def eval_every(self) -> int:
        return 0  # held-out evaluation: python -m rlhf.evaluate

    def modules(self) -> dict[str, torch.nn.Module]:
        learner = getattr(self.algo.learner_group, "_learner", None)  # None with remote learners
        return {"policy": learner.module[MODULE_PATH[-1]]} if learner is not None else {}

    def state_dict(self) -> dict:
        return {"rllib": self.algo.get_state(), "env_steps": self.env_steps}

    def load_state_dict(self, state: dict) -> None:
        self.algo.set_state(state["rllib"])
        self.env_steps = int(state["env_steps"])

    def write_extra(self, checkpoint_dir: Path) -> None:
        self.algo.save_to_path(str((Path(checkpoint_dir) / RLLIB_DIR).resolve()))

    def describe(self) -> str:
        a = self.cfg.algo
        return (f"rllib_ppo on stages {list(self.cfg.env.stages)}: {a.num_env_runners} env runners x "
                f"{a.num_envs_per_env_runner} envs, {self.total} iterations of ~{a.train_batch_size} env steps")

    def close(self) -> None:
        import ray

        self.algo.stop()
        if self.started:
            ray.shutdown()


def load_module(checkpoint_dir: Path):
    """The trained RLModule from a checkpoint, without Ray."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    return RLModule.from_checkpoint(str(Path(checkpoint_dir).resolve().joinpath(RLLIB_DIR, *MODULE_PATH)))


def evaluate(cfg, checkpoint_dir: Path, run_dir: Path) -> dict[str, float]:
    """`python -m rlhf.evaluate run=<run dir> [eval.episodes=N] [eval.stages=all] [eval.gif=true]`:
    actions sampled from the RLModule's distribution (eval.deterministic=true: argmax)."""
    from envs import mario

    torch.set_num_threads(int(cfg.algo.threads))
    module = load_module(checkpoint_dir)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    gif_dir = Path(run_dir) / "eval" if bool(cfg.eval.gif) else None

    @torch.no_grad()
    def act(obs: np.ndarray) -> int:
        frames = torch.as_tensor(np.moveaxis(obs, 0, -1).astype(np.float32) / 255.0).unsqueeze(0)
        logits = module.forward_inference({"obs": frames})["action_dist_inputs"][0]
        if bool(cfg.eval.deterministic):
            return int(logits.argmax())
        return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))

    return mario.evaluate_stages(cfg.env, act, mario.eval_stages(cfg.env, str(cfg.eval.stages)), int(cfg.eval.episodes),
                                 gif_dir)
