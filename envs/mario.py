"""Super Mario Bros (`env=mario`): the NES game as a Gymnasium env with composable preprocessing.

Backend: gym-super-mario-bros 9.1.0 + nes-py 9.0.1 (Gymnasium-native, numpy 2). Their metadata
says Python >= 3.13 but the code runs on 3.11, so they are installed as a separate step:

    pip install --no-deps --ignore-requires-python nes-py==9.0.1 gym-super-mario-bros==9.1.0

`make_env(env_cfg)` builds, from the inside out (each layer an ordinary Gymnasium wrapper, so a
researcher can drop, reorder or add one):

    MarioStages        one emulator per stage ("1-1", "4-2", or "full" for the whole game); the
                       stage of each episode is sampled at reset (the "tasks"), or fixed with
                       set_task(stage) / reset(options={"stage": ...})
    CopyObservation    nes-py returns a VIEW of the emulator's screen buffer: copy it, or a
                       stored frame changes under you at the next step
    JoypadSpace        nes-py's: button combinations -> Discrete(n) (right_only | simple | complex)
    EpisodicLife       full game only: losing a life ends the episode for the learner
    MarioInfo          info gains `distance` (max x this episode), `stage_name` ("1-2"),
                       `flag_get` (already there), `x_pos` (already there)
    MaxAndSkipObservation  (gymnasium) repeat the action frame_skip frames, sum the rewards,
                       max-pool the last two frames (sprite flicker)
    NoProgressTimeout  truncate when the max x has not grown for no_progress_steps agent steps
    TimeLimit          (gymnasium) max_episode_steps agent steps
    Grayscale          OpenCV luminance (gymnasium's GrayscaleObservation is ~20x slower)
    ResizeObservation, FrameStackObservation  (gymnasium) -> uint8 [frame_stack, H, W], channels first

The reward is the env's own shaped reward (9.1.0: progress capped at 5 px per frame, clock,
score/100, coins, power-ups, +50 at the flag, death; clipped per frame to [-15, 15]), summed over
the skipped frames. `make_vector_env` puts N of these, with episode statistics, in gymnasium's
SyncVectorEnv. Stage evaluation, shared by every Mario algorithm's `evaluate`: `evaluate_stages`
runs a policy for N episodes per stage (distance, flag rate, return; optionally a GIF),
`eval_stages` resolves eval.stages, and `adaptation_curve` measures few-shot adaptation to a
held-out stage with any learner's update step (Reptile's inner loop).
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from envs.base import EnvConfigError

ACTION_SETS = ("right_only", "simple", "complex")
STAGE_PATTERN = re.compile(r"^([1-8])-([1-4])$")
FULL_GAME = "full"


class MarioConfigError(EnvConfigError):
    """A bad env=mario setting (raised before any emulator starts)."""


def parse_stage(stage: str) -> tuple[int, int] | None:
    """'4-2' -> (4, 2); 'full' -> None (the whole game from 1-1, three lives)."""
    text = str(stage).strip()
    if text == FULL_GAME:
        return None
    match = STAGE_PATTERN.match(text)
    if not match:
        raise MarioConfigError(f"stage {stage!r} is not valid; valid stages: 'W-S' with world 1-8 and stage 1-4 "
                               f"(e.g. 1-1, 4-2), or '{FULL_GAME}' for the whole game")
    return int(match.group(1)), int(match.group(2))


def stage_list(value) -> list[str]:
    """A single stage ('1-1') or a list of stages -> list of validated stage names."""
    items = [value] if isinstance(value, (str, int, float)) else list(value or [])
    stages = [str(s).strip() for s in items]
    for s in stages:
        parse_stage(s)
    return stages


def check_env_config(env_cfg) -> None:
    """Everything about env=mario that can be checked without an emulator."""
    if str(env_cfg.actions) not in ACTION_SETS:
        raise MarioConfigError(f"env.actions={env_cfg.actions!r} is not valid; valid choices: {', '.join(ACTION_SETS)}")
    if not stage_list(env_cfg.stages):
        raise MarioConfigError("env.stages is empty; give one stage (1-1), a list ([1-1, 2-1]) or 'full'")
    stage_list(env_cfg.held_out)
    for key in ("frame_skip", "frame_stack", "max_episode_steps"):
        if not isinstance(env_cfg[key], int) or env_cfg[key] < 1:
            raise MarioConfigError(f"env.{key}={env_cfg[key]!r} must be a positive integer")
    if not isinstance(env_cfg.no_progress_steps, int) or env_cfg.no_progress_steps < 0:
        raise MarioConfigError(f"env.no_progress_steps={env_cfg.no_progress_steps!r} must be an integer >= 0 (0 = off)")
    size = list(env_cfg.resize)
    if len(size) != 2 or any(not isinstance(v, int) or v < 8 for v in size):
        raise MarioConfigError(f"env.resize={size} must be [height, width], each an integer >= 8")


try:
    import cv2
    import gymnasium as gym
    from gym_super_mario_bros import SuperMarioBrosEnv
    from gym_super_mario_bros.actions import COMPLEX_MOVEMENT, RIGHT_ONLY, SIMPLE_MOVEMENT
    from gymnasium import spaces
    from gymnasium.wrappers import FrameStackObservation, MaxAndSkipObservation, ResizeObservation, TimeLimit
    from nes_py.wrappers import JoypadSpace
except ImportError as err:  # pragma: no cover - depends on the install
    raise ImportError("env=mario needs the optional Mario packages (a separate step, see docs/mario.md): "
                      "pip install --no-deps --ignore-requires-python nes-py==9.0.1 gym-super-mario-bros==9.1.0"
                      ) from err

BUTTONS = {"right_only": RIGHT_ONLY, "simple": SIMPLE_MOVEMENT, "complex": COMPLEX_MOVEMENT}


class MarioStages(gym.Env):
    """Several NES emulators behind one env: each reset plays one stage, sampled uniformly from
    `stages` with the env's np_random (seeded by reset(seed=...)), unless a task is set.
    Emulators are built on first use (~0.5 s each: the ROM boots and skips the title screen)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 60}  # noqa: RUF012

    def __init__(self, stages: Sequence[str], render_mode: str | None = None):
        self.stages = stage_list(stages)
        if not self.stages:
            raise MarioConfigError("MarioStages needs at least one stage")
        self.render_mode = render_mode
        self._emulators: dict[str, SuperMarioBrosEnv] = {}
        self.task: str | None = None  # fixed stage for every reset (None: sample per episode)
        self.current = self.stages[0]
        self.observation_space = SuperMarioBrosEnv.observation_space
        self.action_space = SuperMarioBrosEnv.action_space

    def emulator(self, stage: str) -> SuperMarioBrosEnv:
        if stage not in self._emulators:
            self._emulators[stage] = SuperMarioBrosEnv(target=parse_stage(stage))
        return self._emulators[stage]

    def set_task(self, stage: str | None) -> None:
        """Play `stage` at every reset from now on (None: sample from `stages` again). The stage
        need not be a training stage: adaptation to a held-out stage uses this."""
        if stage is not None:
            parse_stage(stage)
        self.task = stage

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        stage = (options or {}).get("stage") or self.task
        self.current = str(stage) if stage else self.stages[int(self.np_random.integers(len(self.stages)))]
        return self.emulator(self.current).reset()

    def step(self, action):
        return self.emulator(self.current).step(action)

    def render(self):
        return np.array(self.emulator(self.current).screen)

    def close(self) -> None:
        for emulator in self._emulators.values():
            emulator.close()
        self._emulators.clear()


class CopyObservation(gym.ObservationWrapper):
    """nes-py observations are views of the emulator's screen buffer (the next frame overwrites
    them): hand out a copy."""

    def observation(self, observation):
        return np.array(observation, copy=True)


class Grayscale(gym.ObservationWrapper):
    """RGB [H, W, 3] -> luminance [H, W] uint8 with OpenCV (ITU-R 601 weights). Gymnasium's
    GrayscaleObservation does the same in float64 numpy and measured ~20x slower here."""

    def __init__(self, env):
        super().__init__(env)
        h, w, _ = env.observation_space.shape
        self.observation_space = spaces.Box(0, 255, (h, w), np.uint8)

    def observation(self, observation):
        return cv2.cvtColor(observation, cv2.COLOR_RGB2GRAY)


class MarioInfo(gym.Wrapper):
    """Adds `distance` (the largest x position so far in this episode) and `stage_name` to info."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._distance = int(info.get("x_pos", 0))
        return obs, self._annotate(info)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._distance = max(self._distance, int(info.get("x_pos", 0)))
        return obs, reward, terminated, truncated, self._annotate(info)

    def _annotate(self, info: dict) -> dict:
        info["distance"] = self._distance
        info["stage_name"] = f"{info.get('world', 0)}-{info.get('stage', 0)}"
        return info


class EpisodicLife(gym.Wrapper):
    """Losing a life ends the episode for the learner (DeepMind's Atari trick); the game itself
    goes on at the next reset until it is over. Stage envs already end at a death."""

    def __init__(self, env):
        super().__init__(env)
        self._lives, self._game_over = 0, True

    def reset(self, **kwargs):
        if self._game_over:
            obs, info = self.env.reset(**kwargs)
        else:  # continue the same game: a no-op step past the death
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        self._lives, self._game_over = int(info.get("life", 0)), False
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._game_over = terminated or truncated
        lives = int(info.get("life", 0))
        lost = lives < self._lives and lives != 0xFF
        self._lives = lives
        return obs, reward, terminated or lost, truncated, info


class NoProgressTimeout(gym.Wrapper):
    """Truncates an episode when Mario's best x has not grown for `patience` agent steps (a
    policy that stands still or walks into a wall would otherwise run until the 400-second clock
    runs out: ~2,400 agent steps of nothing)."""

    def __init__(self, env, patience: int):
        super().__init__(env)
        self.patience = patience

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._best, self._since = int(info.get("x_pos", 0)), 0
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        x = int(info.get("x_pos", 0))
        self._best, self._since = (x, 0) if x > self._best else (self._best, self._since + 1)
        stuck = self.patience > 0 and self._since >= self.patience
        info["stuck"] = stuck
        return obs, reward, terminated, truncated or stuck, info


def make_env(env_cfg, stages: Sequence[str] | None = None, render_mode: str | None = None) -> gym.Env:
    """The preprocessed env of the `env` config: obs uint8 [frame_stack, H, W]; `stages` defaults
    to env.stages (training tasks); pass env.held_out to evaluate or adapt on held-out stages."""
    check_env_config(env_cfg)
    stages = stage_list(env_cfg.stages if stages is None else stages)
    env: gym.Env = MarioStages(stages, render_mode=render_mode)
    env = CopyObservation(env)
    env = JoypadSpace(env, BUTTONS[str(env_cfg.actions)])
    if FULL_GAME in stages and bool(env_cfg.episodic_life):
        env = EpisodicLife(env)
    env = MarioInfo(env)  # after EpisodicLife: `distance` restarts with every learner episode
    if int(env_cfg.frame_skip) > 1:
        env = MaxAndSkipObservation(env, skip=int(env_cfg.frame_skip))
    if int(env_cfg.no_progress_steps) > 0:
        env = NoProgressTimeout(env, int(env_cfg.no_progress_steps))
    env = TimeLimit(env, max_episode_steps=int(env_cfg.max_episode_steps))
    if bool(env_cfg.grayscale):
        env = Grayscale(env)
    env = ResizeObservation(env, tuple(int(v) for v in env_cfg.resize))
    env = FrameStackObservation(env, stack_size=int(env_cfg.frame_stack))
    if not bool(env_cfg.grayscale):  # [stack, H, W, 3] -> [stack * 3, H, W]: still one image per channel
        shape = env.observation_space.shape
        env = gym.wrappers.TransformObservation(
            env, lambda o: np.ascontiguousarray(np.moveaxis(o, -1, 1).reshape(-1, *o.shape[1:3])),
            spaces.Box(0, 255, (shape[0] * 3, shape[1], shape[2]), np.uint8))
    return env


def set_task(env: gym.Env, stage: str | None) -> None:
    """Fix the stage of every following episode of a make_env env (None: sample again)."""
    env.unwrapped.set_task(stage)


def observation_shape(env_cfg) -> tuple[int, int, int]:
    channels = int(env_cfg.frame_stack) * (1 if bool(env_cfg.grayscale) else 3)
    return channels, int(env_cfg.resize[0]), int(env_cfg.resize[1])


def num_actions(env_cfg) -> int:
    return len(BUTTONS[str(env_cfg.actions)])


# ---------------------------------------------------------------------------------------
# Vector env and episode statistics


def make_vector_env(env_cfg, n: int, stages: Sequence[str] | None = None):
    """n make_env envs, each with gymnasium's RecordEpisodeStatistics, in gymnasium's SyncVectorEnv
    (stepped in this process) in SAME_STEP autoreset mode: an ended episode's env is reset inside
    that step, its last info (distance, flag, episode statistics) in info["final_info"]. Switch
    the stage of every env with `envs.call("set_task", stage)`."""
    from gymnasium.vector import AutoresetMode, SyncVectorEnv
    from gymnasium.wrappers import RecordEpisodeStatistics

    return SyncVectorEnv([lambda: RecordEpisodeStatistics(make_env(env_cfg, stages)) for _ in range(n)],
                         autoreset_mode=AutoresetMode.SAME_STEP)


def episode_record(info: dict, episode_return: float, length: int) -> dict:
    return {"distance": float(info.get("distance", info.get("x_pos", 0))), "flag": float(bool(info.get("flag_get"))),
            "return": float(episode_return), "length": length, "stage": str(info.get("stage_name", ""))}


def vector_episode_record(episode: dict) -> dict:
    """A finished episode of a vector env ({"return", "length", "info"}: rlhf.control_ppo's
    episodes, from each env's RecordEpisodeStatistics) as an episode_record."""
    return episode_record(episode["info"], float(episode["return"]), int(episode["length"]))


def episode_metrics(episodes: list[dict]) -> dict[str, float]:
    """The metric names every Mario algorithm logs (mario/x_pos, mario/flag_rate, episode/return)."""
    if not episodes:
        return {}
    return {"mario/x_pos": float(np.mean([e["distance"] for e in episodes])),
            "mario/flag_rate": float(np.mean([e["flag"] for e in episodes])),
            "episode/return": float(np.mean([e["return"] for e in episodes])),
            "episode/length": float(np.mean([e["length"] for e in episodes])),
            "episode/count": float(len(episodes))}


# ---------------------------------------------------------------------------------------
# Evaluation shared by all Mario algorithms


EVAL_SEED = 1_000_000  # evaluation episodes use seeds EVAL_SEED + e: the same for every policy


def run_episodes(env: gym.Env, act: Callable[[np.ndarray], int], stage: str, episodes: int, seed: int = EVAL_SEED,
                 gif_path: Path | None = None) -> list[dict]:
    """`episodes` episodes of `stage` with `act(obs) -> action`; returns their records. With
    gif_path, the first episode's raw frames (every agent step) are written as a GIF."""
    set_task(env, stage)
    records = []
    for e in range(episodes):
        obs, info = env.reset(seed=seed + e)
        frames = [env.render()] if gif_path is not None and e == 0 else None
        total, length, done = 0.0, 0, False
        while not done:
            obs, reward, terminated, truncated, info = env.step(act(obs))
            total, length, done = total + float(reward), length + 1, terminated or truncated
            if frames is not None:
                frames.append(env.render())
        records.append(episode_record(info, total, length))
        if frames is not None:
            write_gif(frames, gif_path)
    return records


def write_gif(frames: list[np.ndarray], path: Path, fps: int = 15) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


def evaluate_stages(env_cfg, act: Callable[[np.ndarray], int], stages: Sequence[str], episodes: int,
                    gif_dir: Path | None = None, seed: int = EVAL_SEED) -> dict[str, float]:
    """Distance, flag rate and return over `episodes` episodes per stage, plus their means over
    stages (`mario/x_pos`, ...). `act` sees preprocessed observations."""
    env = make_env(env_cfg, stages=stages, render_mode="rgb_array")
    metrics: dict[str, float] = {}
    everything: list[dict] = []
    start, steps = time.time(), 0
    try:
        for stage in stages:
            gif = gif_dir / f"episode_{stage}.gif" if gif_dir is not None else None
            records = run_episodes(env, act, stage, episodes, seed, gif)
            everything += records
            steps += sum(r["length"] for r in records)
            for key, value in episode_metrics(records).items():
                if key != "episode/count":
                    metrics[f"{stage}/{key}"] = value
    finally:
        env.close()
    metrics.update({k: v for k, v in episode_metrics(everything).items() if k != "episode/count"})
    metrics["perf/env_steps_per_s"] = steps / max(time.time() - start, 1e-9)
    return metrics


def eval_stages(env_cfg, which: str) -> list[str]:
    """eval.stages: held_out | train | all | none -> the stage list (every Mario algorithm's evaluate)."""
    choices = {"held_out": stage_list(env_cfg.held_out), "train": stage_list(env_cfg.stages)}
    choices["all"] = list(dict.fromkeys(choices["train"] + choices["held_out"]))
    choices["none"] = []  # e.g. only the adaptation curve (algo=reptile)
    if which not in choices:
        raise MarioConfigError(f"eval.stages={which!r} is not valid; valid choices: {', '.join(choices)}")
    return choices[which]


def adaptation_curve(env_cfg, stage: str, updates: int, points: int, steps_per_update: int, episodes: int,
                     update: Callable[[], Any], make_act: Callable[[], Callable[[np.ndarray], int]]
                     ) -> list[tuple[int, dict[str, float]]]:
    """Few-shot adaptation to one stage: `update()` (one learner update on that stage, e.g. an
    inner-loop PPO update) `updates` times; at `points` evenly spaced update counts (0 and the
    last included) run `episodes` episodes with a fresh `make_act()`. -> [(env steps, metrics)]."""
    marks = sorted({round(u) for u in np.linspace(0, updates, max(points, 1))}) if updates else [0]
    env = make_env(env_cfg, stages=[stage])
    curve = []
    try:
        for u in range(updates + 1):
            if u in marks:
                curve.append((u * steps_per_update, episode_metrics(run_episodes(env, make_act(), stage, episodes))))
            if u < updates:
                update()
    finally:
        env.close()
    return curve


def curve_scalars(curves: dict[str, list[tuple[int, dict[str, float]]]]) -> list[tuple[int, dict[str, float]]]:
    """Adaptation curves per stage -> TensorBoard points: adapt/<stage>/<metric> and the mean over
    stages adapt/x_pos, adapt/flag_rate, adapt/return, at each adaptation step."""
    stages = list(curves)
    out = []
    for i, (k, _) in enumerate(curves[stages[0]]):
        point = {f"adapt/{s}/{key.split('/', 1)[1]}": v for s in stages for key, v in curves[s][i][1].items()}
        for name, key in (("x_pos", "mario/x_pos"), ("flag_rate", "mario/flag_rate"), ("return", "episode/return")):
            point[f"adapt/{name}"] = float(np.mean([curves[s][i][1][key] for s in stages]))
        out.append((k, point))
    return out
