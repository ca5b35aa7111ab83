"""Super Mario Bros (env=mario) and its algorithms: wrapper shapes and dtypes, gymnasium's
check_env, observation copies, stage selection, the vector env's episode statistics, the Reptile
outer step on hand-made weights, exact Reptile resume (both meta modes), short SB3 (PPO, DQN) and
RLlib runs that log the shared metric names and whose checkpoints load again (resume,
rlhf.evaluate), and the quick `mario_reptile` claim.

The Mario packages are installed in CI (a separate pip step, see docs/mario.md): nothing here
is skipped there."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from rlhf.config import CONFIG_ERRORS, validate
from tests.conftest import compose_cfg, read_scalars

from envs import mario  # noqa: E402  fails loudly (no skip) when setup.sh's Mario step did not run

ENV_CFG = Path(__file__).resolve().parents[1] / "configs" / "env" / "mario.yaml"
SHARED = ("mario/x_pos", "mario/flag_rate", "episode/return", "perf/env_steps_per_s")
# short episodes and one or two emulators keep every run here to seconds
SMALL_ENV = ["env=mario", "env.stages=[1-1]", "env.max_episode_steps=12", "env.no_progress_steps=25",
             "eval.episodes=1"]


def env_cfg(**changes):
    cfg = OmegaConf.load(ENV_CFG)
    for key, value in changes.items():
        cfg[key] = value
    return cfg


# --- the env and its wrappers ----------------------------------------------------------------

def test_wrapper_shapes_dtypes_and_info():
    env = mario.make_env(env_cfg(stages=["1-1"]))
    obs, info = env.reset(seed=0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8 and env.observation_space.contains(obs)
    assert env.action_space.n == 7
    obs, reward, _, _, info = env.step(1)  # right
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8 and isinstance(reward, float)
    assert {"x_pos", "flag_get", "stage_name", "distance", "world", "stage"} <= set(info)
    assert info["stage_name"] == "1-1" and info["distance"] >= info["x_pos"] > 0
    env.close()
    for actions, n in (("right_only", 5), ("complex", 12)):
        env = mario.make_env(env_cfg(stages=["1-1"], actions=actions))
        assert env.action_space.n == n
        env.close()
    rgb = mario.make_env(env_cfg(stages=["1-1"], grayscale=False, resize=[42, 48], frame_stack=2))
    obs, _ = rgb.reset(seed=0)
    assert obs.shape == (6, 42, 48) == mario.observation_shape(rgb_cfg := env_cfg(grayscale=False, resize=[42, 48],
                                                                                 frame_stack=2))
    assert rgb.observation_space.contains(obs) and mario.num_actions(rgb_cfg) == 7
    rgb.close()


def test_preprocessed_env_passes_gymnasium_check_env():
    from gymnasium.utils.env_checker import check_env

    env = mario.make_env(env_cfg(stages=["1-1"]))
    check_env(env, skip_render_check=True)
    env.close()


def test_observations_are_copies_of_the_emulator_buffer():
    from gym_super_mario_bros import SuperMarioBrosEnv

    raw = SuperMarioBrosEnv(target=(1, 1))
    frame, _ = raw.reset()
    assert np.shares_memory(frame, raw.screen)  # nes-py hands out a view: the reason for CopyObservation
    raw.close()
    for cfg in (env_cfg(stages=["1-1"]), env_cfg(stages=["1-1"], frame_skip=1, frame_stack=1)):
        env = mario.make_env(cfg)
        stored, _ = env.reset(seed=0)
        snapshot = stored.copy()
        for _ in range(30):
            newest, *_ = env.step(1)
        assert not np.array_equal(newest, snapshot)  # the screen did move on ...
        np.testing.assert_array_equal(stored, snapshot)  # ... but the stored frame did not change
        env.close()
    base = mario.MarioStages(["1-1"])
    copied = mario.CopyObservation(base)
    frame, _ = copied.reset(seed=0)
    assert not np.shares_memory(frame, base.emulator("1-1").screen)
    copied.close()


def test_stages_are_sampled_fixed_by_task_and_validated():
    env = mario.make_env(env_cfg(stages=["1-1", "2-1"], max_episode_steps=1))
    seen = {env.reset(seed=s)[1]["stage_name"] for s in range(8)}
    assert seen == {"1-1", "2-1"}
    mario.set_task(env, "1-2")  # a held-out stage: not among the training stages
    assert {env.reset(seed=s)[1]["stage_name"] for s in range(3)} == {"1-2"}
    assert env.reset(seed=0, options={"stage": "2-1"})[1]["stage_name"] == "2-1"
    env.close()
    with pytest.raises(mario.MarioConfigError, match=r"'9-1' is not valid; valid stages: 'W-S'"):
        mario.make_env(env_cfg(stages=["9-1"]))
    with pytest.raises(CONFIG_ERRORS, match=r"env.actions='jump' is not valid; valid choices: right_only, simple, complex"):
        validate(compose_cfg(["algo=reptile", "env=mario", "env.actions=jump"]))
    with pytest.raises(CONFIG_ERRORS, match=r"env.resize=\[84\] must be \[height, width\]"):  # envs/ raise their own type
        validate(compose_cfg(["algo=reptile", "env=mario", "env.resize=[84]"]))
    with pytest.raises(CONFIG_ERRORS, match="runs on env kinds mario"):
        validate(compose_cfg(["algo=reptile", "env=text"]))


def test_no_progress_timeout_and_time_limit_end_episodes():
    env = mario.make_env(env_cfg(stages=["1-1"], no_progress_steps=10))
    env.reset(seed=0)
    steps, done, info = 0, False, {}
    while not done:  # NOOP: Mario stands still
        _, _, terminated, truncated, info = env.step(0)
        steps, done = steps + 1, terminated or truncated
    assert truncated and info["stuck"] and steps == 10
    env.close()
    env = mario.make_env(env_cfg(stages=["1-1"], max_episode_steps=5, no_progress_steps=0))
    env.reset(seed=0)
    assert [env.step(1)[3] for _ in range(5)] == [False] * 4 + [True]
    env.close()


def test_episodic_life_ends_the_episode_at_a_death_and_continues_the_game():
    env = mario.make_env(env_cfg(stages=["full"], no_progress_steps=0))
    _, info = env.reset(seed=0)
    lives, distances = [info["life"]], []
    for _ in range(2):
        terminated = truncated = False
        while not (terminated or truncated):  # running right into the first Goomba
            _, _, terminated, truncated, info = env.step(1)
        assert terminated and not truncated
        distances.append(info["distance"])
        _, info = env.reset()
        lives.append(info["life"])
        assert info["distance"] == info["x_pos"] < distances[-1]  # a new learner episode
    assert lives == [2, 1, 0]  # the same game went on: no life came back
    env.close()


# --- Reptile -----------------------------------------------------------------------------------

def test_reptile_outer_update_by_hand():
    from rlhf.algos.reptile import outer_lr, reptile_update

    theta = {"w": torch.tensor([[1.0, 2.0], [0.0, -4.0]]), "b": torch.tensor([0.5])}
    phi = {"w": torch.tensor([[3.0, 6.0], [1.0, -4.0]]), "b": torch.tensor([1.5])}
    out = reptile_update(theta, [phi], 0.25)  # theta + 0.25 (phi - theta)
    torch.testing.assert_close(out["w"], torch.tensor([[1.5, 3.0], [0.25, -4.0]]))
    torch.testing.assert_close(out["b"], torch.tensor([0.75]))
    torch.testing.assert_close(reptile_update(theta, [phi], 1.0)["w"], phi["w"])  # eps = 1: theta <- phi
    torch.testing.assert_close(reptile_update(theta, [phi], 0.0)["w"], theta["w"])
    phi2 = {"w": torch.tensor([[-1.0, 2.0], [1.0, 0.0]]), "b": torch.tensor([0.5])}
    batched = reptile_update(theta, [phi, phi2], 0.5)  # theta + 0.5 (mean(phi, phi2) - theta)
    torch.testing.assert_close(batched["w"], torch.tensor([[1.0, 3.0], [0.5, -3.0]]))
    assert theta["w"][0, 0] == 1.0  # inputs untouched
    cfg = OmegaConf.create({"outer_lr": 0.5, "outer_lr_final": 0.1})
    assert [round(outer_lr(cfg, i, 5), 6) for i in range(5)] == [0.5, 0.4, 0.3, 0.2, 0.1]


TINY_REPTILE = ["algo=reptile", *SMALL_ENV, "env.stages=[1-1,2-1]", "algo.num_envs=1", "algo.num_steps=16",
                "algo.inner_updates=1", "algo.epochs=1", "algo.minibatches=2", "algo.checkpoint_every=1"]


@pytest.mark.parametrize("meta", ["reptile", "joint"])
def test_reptile_meta_step_resume_is_exact_and_evaluate_adapts(tmp_path, train_run, meta):
    """2 meta-iterations of 16 env steps in one go == 1 + pause + resume (joint: its Adam too);
    total_steps=0 saves the seeded random init; evaluate adapts to the held-out stage."""
    from rlhf import checkpoint as ckpt
    from rlhf.evaluate import main as evaluate
    from rlhf.train import run

    overrides = [*TINY_REPTILE, f"algo.meta={meta}", "algo.total_steps=32"]
    full = train_run(overrides, "full")
    half = train_run([*overrides, "train.stop_after=1"], "half")
    theta1 = torch.load(half / "checkpoints" / "step_000001" / "policy.pt")
    init = train_run([*TINY_REPTILE, f"algo.meta={meta}", "algo.total_steps=0"], "init")  # the seeded random init
    start = torch.load(init / "checkpoints" / "step_000000" / "policy.pt")
    assert all(torch.equal(a, b) for a, b in zip(start.values(), mario_policy_init().values()))
    assert any(not torch.equal(theta1[k], start[k]) for k in start)  # one meta-step moved theta
    run(compose_cfg([*overrides, "train.resume=true"]), half)
    a = torch.load(full / "checkpoints" / "step_000002" / "policy.pt")
    b = torch.load(half / "checkpoints" / "step_000002" / "policy.pt")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    scalars = read_scalars(full)
    assert all(name in scalars for name in SHARED)
    assert [s for s, _ in scalars["reptile/outer_lr"]] == [16, 32]  # x = env steps
    assert [v for _, v in scalars["reptile/outer_lr"]] == pytest.approx([0.5, 0.05] if meta == "reptile" else [1.0, 1.0])
    assert ckpt.latest_checkpoint(full).name == "step_000002"
    if meta == "joint":
        return
    metrics = evaluate([f"run={full}", "eval.adapt_steps=16", "eval.adapt_points=2", "eval.gif=true"])
    assert {"1-2/mario/x_pos", "adapt/x_pos", "adapt/flag_rate", "mario/flag_rate"} <= set(metrics)
    curve = read_scalars(full)["adapt/x_pos"]
    assert [s for s, _ in curve] == [0, 16] and curve[-1][1] == metrics["adapt/x_pos"]
    assert (full / "eval" / "episode_1-2.gif").stat().st_size > 1000


def mario_policy_init() -> dict[str, torch.Tensor]:
    """The network algo=reptile builds right after the harness seeds torch with seed=0."""
    from rlhf.algos.reptile import build_policy
    from rlhf.harness import seed_everything

    seed_everything(0)
    return build_policy(compose_cfg(TINY_REPTILE)).state_dict()


# --- stable-baselines3 and RLlib -----------------------------------------------------------------

@pytest.mark.parametrize("algo, extra", [
    ("sb3_ppo", ["algo.num_envs=2", "algo.n_steps=32", "algo.batch_size=32", "algo.n_epochs=1", "algo.chunk_steps=64"]),
    ("sb3_dqn", ["algo.learning_starts=16", "algo.buffer_size=200", "algo.target_update_interval=32",
                 "algo.chunk_steps=32", "algo.exploration_fraction=1.0"]),
])
def test_sb3_short_run_logs_shared_names_and_checkpoint_round_trips(tmp_path, train_run, algo, extra):
    """A run extended by resume (a larger budget) logs one point per chunk (x = env steps) and its
    SB3 zip evaluates; DQN's epsilon decays over the whole budget, not over each chunk."""
    from rlhf.evaluate import main as evaluate
    from rlhf.train import run

    overrides = [f"algo={algo}", *SMALL_ENV, *extra]
    run_dir = train_run([*overrides, "algo.total_steps=64"], algo)
    run(compose_cfg([*overrides, "algo.total_steps=128", f"train.resume={run_dir}"]), run_dir)  # resume, extend
    scalars = read_scalars(run_dir)
    assert all(name in scalars for name in SHARED), sorted(scalars)
    chunk = 64 if algo == "sb3_ppo" else 32
    assert [s for s, _ in scalars["perf/env_steps_per_s"]] == list(range(chunk, 129, chunk))
    if algo == "sb3_ppo":
        assert "loss/policy" in scalars and "policy/entropy" in scalars
    else:  # epsilon decays linearly 1 -> 0.05 over the budget: 64 steps in the first run, 128 after the resume
        eps = dict(scalars["dqn/epsilon"])
        assert [eps[32], eps[96], eps[128]] == pytest.approx([1 - 0.95 * 32 / 64, 1 - 0.95 * 96 / 128, 0.05])
    state = torch.load(run_dir / "checkpoints" / f"step_{128 // chunk:06d}" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 128 // chunk and state["counters"]["num_timesteps"] == 128
    metrics = evaluate([f"run={run_dir}", "eval.stages=all"])
    assert {"1-1/mario/x_pos", "1-2/mario/x_pos", "mario/flag_rate", "episode/return"} <= set(metrics)


@pytest.mark.slow
def test_rllib_short_run_with_two_env_runners(tmp_path, train_run):
    import ray

    from rlhf.evaluate import main as evaluate

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        run_dir = train_run(["algo=rllib_ppo", *SMALL_ENV, "algo.num_env_runners=2", "algo.total_steps=64",
                             "algo.train_batch_size=32", "algo.minibatch_size=32", "algo.num_epochs=1"], "rllib")
    finally:
        ray.shutdown()
    assert not ray.is_initialized()
    scalars = read_scalars(run_dir)
    assert all(name in scalars for name in SHARED), sorted(scalars)
    assert scalars["perf/env_steps_per_s"][-1][0] >= 64
    metrics = evaluate([f"run={run_dir}"])  # loads the RLModule from the checkpoint, no Ray
    assert {"1-2/mario/x_pos", "mario/x_pos", "episode/return"} <= set(metrics)


# --- the claim --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_quick_mario_reptile_claim(tmp_path):
    from rlhf.reproduce import run_claim

    out = tmp_path / "claim"
    verdict = run_claim("mario_reptile", quick=True, out=out)
    report = (out / "report.md").read_text()
    line = re.search(r"\*\*Verdict:\*\* (NOT REPRODUCED|REPRODUCED|INCONCLUSIVE): (.+)", report)
    assert line and "measured:" in line.group(2) and line.group(1) == verdict.word
    assert len(re.findall(r"^- Reptile - .*AUC.*\[95% CI", report, flags=re.M)) == 2
    assert (out / "x_distance_vs_adaptation.png").stat().st_size > 1000
    results = json.loads((out / "results.json").read_text())
    assert {r["arm"] for r in results["runs"]} == {"reptile", "joint", "random", "reptile-adapt", "joint-adapt",
                                                   "random-adapt"}
    for arm in ("reptile", "joint", "random"):  # the table's x @ K is the adapt run's last logged adapt/x_pos
        adapt = next(r for r in results["runs"] if r["arm"] == f"{arm}-adapt")
        curve = read_scalars(Path(adapt["run_dir"]))["adapt/x_pos"]
        assert [s for s, _ in curve] == [0, 64]
        row = next(r for r in report.splitlines() if r.startswith("| ") and r.split("|")[1].strip().lower().startswith(
            {"reptile": "reptile", "joint": "ppo", "random": "random"}[arm]))
        assert row.split("|")[6].strip().startswith(f"{curve[-1][1]:.0f} ")
        assert row.split("|")[5].strip().startswith(f"{(curve[0][1] + curve[1][1]) / 2:.0f} ")  # AUC of 2 points
