"""Multi-objective control environments (`env=mo`): MO-Gymnasium behind one small interface.

MO-Gymnasium envs are plain Gymnasium envs whose reward is a vector (one entry per
objective). This module adds what the multi-objective algorithms need on top:

* `make_env(cfg_env)`: one env from the `env` config (`env.id`, plus per-env defaults);
* `make_vector_env(cfg_env, n)`: n copies with episode statistics in one vector env with
  vector rewards [n, m] (gymnasium's SyncVectorEnv, same-step autoreset);
* `reference_point`, `known_front`, `objective_names`: what the metrics need.

The extra is optional: `pip install -e ".[mo]"` (mo-gymnasium[mujoco], morl-baselines).
Importing this module without it fails with a message saying so.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

os.environ.setdefault("WANDB_MODE", "disabled")  # morl-baselines imports wandb; never let it log

try:
    import gymnasium as gym
    import mo_gymnasium as mo_gym
except ImportError as err:  # pragma: no cover - depends on the install
    raise ImportError("env=mo needs the optional extra: pip install -e '.[mo]' "
                      "(mo-gymnasium[mujoco]==1.3.2, morl-baselines==1.3.0), after torch") from err


@dataclass(frozen=True)
class Preset:
    """Defaults for one env id: HV reference point, constructor kwargs, objective names."""
    ref_point: tuple[float, ...]
    objectives: tuple[str, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    float_state: bool = False  # accepts the float_state flag (deep-sea-treasure)


# Reference points: -100 per objective on MuJoCo (the C-MORL authors' scripts); (0, -25) on
# deep-sea-treasure (docs/cmorl.md).
PRESETS: dict[str, Preset] = {
    "deep-sea-treasure-concave-v0": Preset((0.0, -25.0), ("treasure", "time"), float_state=True),
    "deep-sea-treasure-v0": Preset((0.0, -25.0), ("treasure", "time"), float_state=True),
    "deep-sea-treasure-mirrored-v0": Preset((0.0, -50.0), ("treasure", "time"), float_state=True),
    # mo-hopper-2obj-v5 is mo-gymnasium's v5 name of mo-hopper-2d (forward speed, jump height)
    "mo-hopper-2obj-v5": Preset((-100.0, -100.0), ("forward", "jump")),
    "mo-hopper-2d-v4": Preset((-100.0, -100.0), ("forward", "jump")),
    "mo-halfcheetah-v5": Preset((-100.0, -100.0), ("forward", "energy")),
}


def preset(env_id: str) -> Preset | None:
    return PRESETS.get(env_id)


def make_env(env_cfg, float_state: bool | None = None, render_mode: str | None = None):
    """One MO-Gymnasium env from the `env` config. float_state=None uses env.float_state
    (deep-sea-treasure only; tabular baselines pass False to get integer cells)."""
    env_id = str(env_cfg.id)
    kwargs: dict[str, Any] = {}
    p = preset(env_id)
    if p is not None:
        kwargs.update(p.kwargs)
        if p.float_state:
            kwargs["float_state"] = bool(env_cfg.float_state if float_state is None else float_state)
    if int(env_cfg.get("max_episode_steps", 0) or 0) > 0:
        kwargs["max_episode_steps"] = int(env_cfg.max_episode_steps)
    try:
        return mo_gym.make(env_id, render_mode=render_mode, **kwargs)
    except gym.error.Error as err:
        mo_ids = sorted(k for k in gym.registry if k.startswith(("mo-", "deep-sea", "minecart", "fruit",
                                                                  "resource", "four-room", "fishwood")))
        raise ValueError(f"env.id={env_id}: {err}. Valid MO-Gymnasium ids include: {', '.join(mo_ids)}") from err


def num_objectives(env) -> int:
    return int(env.unwrapped.reward_space.shape[0])


def objective_names(env_cfg, m: int) -> list[str]:
    p = preset(str(env_cfg.id))
    return list(p.objectives) if p is not None and len(p.objectives) == m else [f"obj{j}" for j in range(m)]


def reference_point(env_cfg, m: int) -> np.ndarray:
    """env.ref_point if given, else the preset's, else -100 per objective (C-MORL's MuJoCo choice)."""
    given = list(env_cfg.get("ref_point") or [])
    if given:
        if len(given) != m:
            raise ValueError(f"env.ref_point={given} has {len(given)} entries; env.id={env_cfg.id} has {m} objectives")
        return np.asarray(given, dtype=np.float64)
    p = preset(str(env_cfg.id))
    return np.asarray(p.ref_point if p is not None else [-100.0] * m, dtype=np.float64)


def known_front(env, gamma: float) -> np.ndarray | None:
    """The env's true discounted Pareto front when it publishes one (deep-sea-treasure)."""
    fn = getattr(env.unwrapped, "pareto_front", None)
    if fn is None:
        return None
    try:
        return np.asarray(fn(gamma=gamma), dtype=np.float64)
    except TypeError:
        return None


def make_vector_env(env_cfg, n: int):
    """n copies of make_env(env_cfg), each with mo-gymnasium's MORecordEpisodeStatistics (the
    vector return of every finished episode), in a VectorRewardSyncEnv."""
    from mo_gymnasium.wrappers import MORecordEpisodeStatistics

    return VectorRewardSyncEnv([lambda: MORecordEpisodeStatistics(make_env(env_cfg)) for _ in range(n)])


class VectorRewardSyncEnv(gym.vector.SyncVectorEnv):
    """gymnasium's SyncVectorEnv (stepped in this process) in SAME_STEP autoreset mode, with
    rewards [n, m]: an ended episode's env is reset inside that step, its last observation and
    info (with the episode statistics) in info["final_obs"], info["final_info"]. (mo-gymnasium's
    own MOSyncVectorEnv autoresets only at the NEXT step, which spends one step per episode.)"""

    def __init__(self, env_fns):
        super().__init__(env_fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        self.reward_space = self.envs[0].unwrapped.reward_space
        self._rewards = np.zeros((self.num_envs, self.reward_space.shape[0]))  # gymnasium keeps one float per env


EVAL_SEED = 1_000_000  # evaluation episodes start from seeds EVAL_SEED + e: the same for every policy


def discounted_return(env, act, episodes: int, gamma: float) -> np.ndarray:
    """Discounted raw vector return of the policy `act(obs) -> action`, mean over seeded episodes."""
    total = None
    for e in range(episodes):
        obs, _ = env.reset(seed=EVAL_SEED + e)
        g, discount, done = None, 1.0, False
        while not done:
            obs, r, term, trunc, _ = env.step(act(obs))
            r = np.asarray(r, dtype=np.float64)
            g = discount * r if g is None else g + discount * r
            discount *= gamma
            done = term or trunc
        total = g if total is None else total + g
    return total / episodes
