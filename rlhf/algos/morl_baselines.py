"""`algo=morl_baselines algo.method=MPMOQLearning|PQL|PGMORL`: morl-baselines (Felten et al.,
JMLR 2023; MIT) algorithms run as ordinary runs of this framework, so that the baselines of
the `cmorl_pareto` claim and of bench/cmorl_hopper.py are run dirs like every other: the
same TensorBoard metrics (morl/*), eval/step_*.json, front.json and front.png as algo=cmorl.

wandb is never called: every algorithm gets log=False and WANDB_MODE=disabled is set.

What each method's front is (the points the metrics are computed on):
  * MPMOQLearning (multi-policy scalarised Q-learning, linear scalarisation, tabular; the
    integer-cell DST): the library's own output is its convex coverage set (CCS), the values
    optimal for some linear weight. Every policy is re-evaluated greedily (eval_gamma) and
    the CCS of those values is the front; morl/hypervolume_all_policies also reports the
    Pareto front of all its policies (Q-learning can stop at a non-supported point by
    accident), so the reader sees both.
  * PQL (Pareto Q-learning, tabular): each vector of its Pareto set at the start state is
    tracked in the env (the library's track_policy), discounted with algo.gamma.
  * PGMORL (continuous actions only: it asserts a Box action space): its Pareto archive's
    individuals re-evaluated on an eval env with the library's observation normalisation
    and raw rewards, discounted with eval_gamma (its policies sample actions).
Budgets are env steps; morl-baselines counts PGMORL's as steps x envs, like algo=cmorl.
"""
from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from rlhf import checkpoint as ckpt
from rlhf.algos.cmorl import front_metrics, pareto_front, plot_front, simplex_weights, supported_points
from rlhf.config import ConfigError

log = logging.getLogger("rlhf")
Chunk = tuple[int, np.ndarray, dict[str, float]]  # (env steps so far, the front's points, extra metrics)


def evaluate_agent(agent, env, w, gamma: float, episodes: int) -> np.ndarray:
    """Discounted raw vector return of agent.eval(obs, w), mean over seeded episodes."""
    from envs import mo

    return mo.discounted_return(env, lambda obs: agent.eval(obs, w), episodes, gamma)


def mpmoql(cfg, ref: np.ndarray, known) -> Iterator[Chunk]:
    from morl_baselines.common.scalarization import weighted_sum
    from morl_baselines.multi_policy.multi_policy_moqlearning.mp_mo_q_learning import MPMOQLearning

    from envs import mo

    a = cfg.algo
    env, eval_env = mo.make_env(cfg.env, float_state=False), mo.make_env(cfg.env, float_state=False)
    per_chunk = int(a.total_steps) // int(a.chunks)
    agent = MPMOQLearning(env, scalarization=weighted_sum, learning_rate=float(a.learning_rate), gamma=float(a.gamma),
                          initial_epsilon=float(a.initial_epsilon), final_epsilon=float(a.final_epsilon),
                          epsilon_decay_steps=int(float(a.epsilon_decay_fraction) * int(a.total_steps)),
                          weight_selection_algo=str(a.weight_selection), log=False, seed=int(cfg.seed))
    for _ in range(int(a.chunks)):  # one outer-loop iteration (a new weight and policy) per chunk
        agent.train(total_timesteps=per_chunk, timesteps_per_iteration=per_chunk, eval_env=eval_env,
                    ref_point=ref, known_pareto_front=None if known is None else list(known))
        values = np.array([evaluate_agent(p, eval_env, p.weights, float(a.eval_gamma), int(a.eval_episodes))
                           for p in agent.policies])
        every = pareto_front(values, ref)
        ccs = supported_points(every) if len(every) else every
        extra = {"hypervolume_all_policies": front_metrics(every, ref, simplex_weights(len(ref), 1.0))["hypervolume"],
                 "policies": float(len(agent.policies))}
        yield agent.global_step, ccs, extra


def pql(cfg, ref: np.ndarray, known) -> Iterator[Chunk]:
    from morl_baselines.multi_policy.pareto_q_learning.pql import PQL

    from envs import mo

    a = cfg.algo
    if abs(float(a.gamma) - float(a.eval_gamma)) > 1e-12:
        log.warning(f"[morl_baselines] PQL's tracked returns are discounted with algo.gamma={a.gamma}, "
                    f"not algo.eval_gamma={a.eval_gamma}")
    env, eval_env = mo.make_env(cfg.env, float_state=False), mo.make_env(cfg.env, float_state=False)
    total, chunks = int(a.total_steps), int(a.chunks)
    agent = PQL(env, ref, gamma=float(a.gamma), initial_epsilon=float(a.initial_epsilon),
                epsilon_decay_steps=int(float(a.epsilon_decay_fraction) * total), final_epsilon=float(a.final_epsilon),
                seed=int(cfg.seed), log=False)
    for k in range(1, chunks + 1):
        agent.train(total_timesteps=total * k // chunks, eval_env=eval_env, ref_point=ref,
                    known_pareto_front=None if known is None else list(known))
        tracked = np.array([agent.track_policy(v, eval_env) for v in agent.get_local_pcs(state=0)])
        yield agent.global_step, pareto_front(tracked, ref), {"policies": float(len(tracked))}


def pgmorl(cfg, ref: np.ndarray, known) -> Iterator[Chunk]:
    import gymnasium as gym
    from morl_baselines.multi_policy.pgmorl.pgmorl import PGMORL

    from envs import mo

    a = cfg.algo
    agent = PGMORL(env_id=str(cfg.env.id), origin=ref, num_envs=int(a.num_envs), pop_size=int(a.pop_size),
                   warmup_iterations=int(a.warmup_iterations), steps_per_iteration=int(a.steps_per_iteration),
                   evolutionary_iterations=int(a.evolutionary_iterations), delta_weight=float(a.delta_weight),
                   gamma=float(a.gamma), seed=int(cfg.seed), log=False, device="cpu")
    # the library's eval env (mo_ppo.make_env) minus its reward normalisation: raw returns
    eval_env = gym.wrappers.ClipAction(mo.make_env(cfg.env))
    eval_env = gym.wrappers.NormalizeObservation(eval_env)
    eval_env = gym.wrappers.TransformObservation(eval_env, lambda o: np.clip(o, -10, 10), eval_env.observation_space)
    agent.train(total_timesteps=int(a.total_steps), eval_env=eval_env, ref_point=ref,
                known_pareto_front=None if known is None else list(known))
    values = np.array([evaluate_agent(ind, eval_env, ind.np_weights, float(a.eval_gamma), int(a.eval_episodes))
                       for ind in agent.archive.individuals])
    yield agent.global_step, pareto_front(values, ref), {"policies": float(len(values))}


METHODS = {"MPMOQLearning": mpmoql, "PQL": pql, "PGMORL": pgmorl}


def train(cfg, run_dir: Path) -> dict[str, float]:
    """Run algo.method with log=False; after every chunk log morl/* of its front (TensorBoard
    step = env steps); write eval/step_*.json, front.json, front.png and a checkpoint."""
    threads = torch.get_num_threads()
    torch.set_num_threads(int(cfg.algo.threads))  # PGMORL's tiny MLPs: extra threads only add synchronisation
    try:
        return _train(cfg, run_dir)
    finally:
        torch.set_num_threads(threads)


def _train(cfg, run_dir: Path) -> dict[str, float]:
    from torch.utils.tensorboard import SummaryWriter

    from envs import mo
    from rlhf.harness import save_eval

    os.environ["WANDB_MODE"] = "disabled"
    if cfg.train.resume:
        raise ConfigError("algo=morl_baselines runs cannot resume (the libraries keep no checkpoints); "
                          "valid value here: train.resume=null")
    a, run_dir = cfg.algo, Path(run_dir)
    seed = int(cfg.seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    probe = mo.make_env(cfg.env)
    m = mo.num_objectives(probe)
    names, ref = mo.objective_names(cfg.env, m), mo.reference_point(cfg.env, m)
    known = mo.known_front(probe, float(a.eval_gamma))
    eu_weights = simplex_weights(m, float(a.eu_delta))
    log.info(f"[morl_baselines] {a.method} on {cfg.env.id}, {a.total_steps} env steps, ref={ref.tolist()}, seed {seed}")
    start, steps, front, metrics = time.time(), 0, np.zeros((0, m)), {}
    with SummaryWriter(str(run_dir)) as writer:
        for steps, front, extra in METHODS[str(a.method)](cfg, ref, known):
            metrics = {f"morl/{k}": v for k, v in front_metrics(front, ref, eu_weights, known).items()}
            metrics.update({"morl/archive_size": float(len(front)), **{f"morl/{k}": v for k, v in extra.items()},
                            "perf/env_steps_per_s": steps / max(time.time() - start, 1e-9)})
            for key, value in metrics.items():
                writer.add_scalar(key, value, steps)
            log.info(f"[morl_baselines] {a.method} steps {steps} | HV {metrics['morl/hypervolume']:.4g} "
                     f"EU {metrics['morl/expected_utility']:.4g} front {len(front)} | {time.time() - start:.0f}s")
    final = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("morl/")}
    final.update({"env_steps": float(steps), "wall_s": time.time() - start})
    (run_dir / "front.json").write_text(json.dumps({
        "objectives": names, "ref_point": ref.tolist(), "eval_gamma": float(a.eval_gamma), "points": front.tolist(),
        "known_front": known.tolist() if known is not None else None}, indent=1))
    plot_front(run_dir / "front.png", {str(a.method): front}, names, known, f"{cfg.env.id}: {a.method}, {steps} env steps")
    ckpt.save_checkpoint(run_dir, steps, {"step": steps, "front": front.tolist(),
                                          "config": OmegaConf.to_container(cfg, resolve=True)}, {},
                         int(cfg.train.keep_checkpoints))
    save_eval(run_dir, steps, final)
    log.info(f"[morl_baselines] done in {final['wall_s']:.0f}s: " + " ".join(f"{k}={v:.4g}" for k, v in final.items()))
    return final
