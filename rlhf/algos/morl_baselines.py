"""`algo=morl_baselines algo.method=MPMOQLearning|PQL|PGMORL`: morl-baselines (Felten et al.,
JMLR 2023; MIT) algorithms run as ordinary runs of this framework, so that the baselines of
the `cmorl_pareto` claim and of bench/cmorl_hopper.py are run dirs like every other: the same
TensorBoard metrics (morl/*, x = env steps), eval/step_*.json, front.json and front.png as
algo=cmorl, scored by rlhf.pareto. wandb is never called (log=False, WANDB_MODE=disabled).

What each method's front is (the points the metrics are computed on):
  * MPMOQLearning (multi-policy scalarised Q-learning, linear scalarisation, tabular; the
    integer-cell DST): each chunk is one outer iteration (a new weight and policy). Every
    policy is re-evaluated greedily (eval_gamma) and the convex coverage set (CCS) of those
    values is the front; morl/hypervolume_all_policies reports the Pareto front of all of them.
  * PQL (Pareto Q-learning, tabular): each vector of its Pareto set at the start state is
    tracked in the env (the library's track_policy), discounted with algo.gamma.
  * PGMORL (continuous actions only): one chunk; its Pareto archive's individuals re-evaluated
    with the library's observation normalisation and raw rewards, discounted with eval_gamma.

A step of the run is one chunk. The tabular agents (Q-tables, counters, their own RNGs) are
pickled whole into each checkpoint, and every chunk starts from freshly seeded envs (the
pickled envs are rebuilt from their constructor arguments), so a resumed run continues exactly.
PGMORL runs as a single step and is not checkpointed mid-way.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from rlhf.config import ConfigError, require_ints
from rlhf.harness import Job
from rlhf.pareto import front_metrics, pareto_front, simplex_weights, supported_points, write_front

log = logging.getLogger("rlhf")


def evaluate_agent(agent, env, w, gamma: float, episodes: int) -> np.ndarray:
    """Discounted raw vector return of agent.eval(obs, w), mean over seeded episodes."""
    from envs import mo

    return mo.discounted_return(env, lambda obs: agent.eval(obs, w), episodes, gamma)


class MPMOQL:
    """MPMOQLearning: one outer iteration (new weight, new policy) per chunk."""

    def __init__(self, cfg, ref: np.ndarray, known):
        from morl_baselines.common.scalarization import weighted_sum
        from morl_baselines.multi_policy.multi_policy_moqlearning.mp_mo_q_learning import MPMOQLearning

        from envs import mo

        a, self.ref, self.known = cfg.algo, ref, known
        self.per_chunk = int(a.total_steps) // int(a.chunks)
        self.eval_env = mo.make_env(cfg.env, float_state=False)
        self.agent = MPMOQLearning(mo.make_env(cfg.env, float_state=False), scalarization=weighted_sum,
                                   learning_rate=float(a.learning_rate), gamma=float(a.gamma),
                                   initial_epsilon=float(a.initial_epsilon), final_epsilon=float(a.final_epsilon),
                                   epsilon_decay_steps=int(float(a.epsilon_decay_fraction) * int(a.total_steps)),
                                   weight_selection_algo=str(a.weight_selection), log=False, seed=int(cfg.seed))
        self.gamma, self.episodes = float(a.eval_gamma), int(a.eval_episodes)

    def chunk(self, k: int) -> tuple[np.ndarray, dict[str, float]]:
        self.agent.train(total_timesteps=self.per_chunk, timesteps_per_iteration=self.per_chunk, eval_env=self.eval_env,
                         ref_point=self.ref, known_pareto_front=None if self.known is None else list(self.known))
        values = np.array([evaluate_agent(p, self.eval_env, p.weights, self.gamma, self.episodes)
                           for p in self.agent.policies])
        every = pareto_front(values, self.ref)
        extra = {"hypervolume_all_policies": front_metrics(every, self.ref, np.eye(len(self.ref)))["hypervolume"],
                 "policies": float(len(self.agent.policies))}
        return (supported_points(every) if len(every) else every), extra


class PQLMethod:
    """Pareto Q-learning: chunk k trains up to k/chunks of the budget."""

    def __init__(self, cfg, ref: np.ndarray, known):
        from morl_baselines.multi_policy.pareto_q_learning.pql import PQL

        from envs import mo

        a, self.ref, self.known = cfg.algo, ref, known
        if abs(float(a.gamma) - float(a.eval_gamma)) > 1e-12:
            log.warning(f"[morl_baselines] PQL's tracked returns are discounted with algo.gamma={a.gamma}, "
                        f"not algo.eval_gamma={a.eval_gamma}")
        self.total, self.chunks = int(a.total_steps), int(a.chunks)
        self.eval_env = mo.make_env(cfg.env, float_state=False)
        self.agent = PQL(mo.make_env(cfg.env, float_state=False), ref, gamma=float(a.gamma),
                         initial_epsilon=float(a.initial_epsilon), final_epsilon=float(a.final_epsilon),
                         epsilon_decay_steps=int(float(a.epsilon_decay_fraction) * self.total), seed=int(cfg.seed),
                         log=False)

    def chunk(self, k: int) -> tuple[np.ndarray, dict[str, float]]:
        self.agent.train(total_timesteps=self.total * (k + 1) // self.chunks, eval_env=self.eval_env, ref_point=self.ref,
                         known_pareto_front=None if self.known is None else list(self.known))
        tracked = np.array([self.agent.track_policy(v, self.eval_env) for v in self.agent.get_local_pcs(state=0)])
        return pareto_front(tracked, self.ref), {"policies": float(len(tracked))}


class PGMORLMethod:
    """PGMORL: the whole budget in one chunk."""

    def __init__(self, cfg, ref: np.ndarray, known):
        import gymnasium as gym
        from morl_baselines.multi_policy.pgmorl.pgmorl import PGMORL

        from envs import mo

        a, self.ref, self.known, self.cfg = cfg.algo, ref, known, cfg
        self.agent = PGMORL(env_id=str(cfg.env.id), origin=ref, num_envs=int(a.num_envs), pop_size=int(a.pop_size),
                            warmup_iterations=int(a.warmup_iterations), steps_per_iteration=int(a.steps_per_iteration),
                            evolutionary_iterations=int(a.evolutionary_iterations), delta_weight=float(a.delta_weight),
                            gamma=float(a.gamma), seed=int(cfg.seed), log=False, device="cpu")
        # the library's eval env (mo_ppo.make_env) minus its reward normalisation: raw returns
        env = gym.wrappers.NormalizeObservation(gym.wrappers.ClipAction(mo.make_env(cfg.env)))
        self.eval_env = gym.wrappers.TransformObservation(env, lambda o: np.clip(o, -10, 10), env.observation_space)

    def chunk(self, k: int) -> tuple[np.ndarray, dict[str, float]]:
        a = self.cfg.algo
        self.agent.train(total_timesteps=int(a.total_steps), eval_env=self.eval_env, ref_point=self.ref,
                         known_pareto_front=None if self.known is None else list(self.known))
        values = np.array([evaluate_agent(ind, self.eval_env, ind.np_weights, float(a.eval_gamma), int(a.eval_episodes))
                           for ind in self.agent.archive.individuals])
        return pareto_front(values, self.ref), {"policies": float(len(values))}


METHODS = {"MPMOQLearning": MPMOQL, "PQL": PQLMethod, "PGMORL": PGMORLMethod}


class MORLBaselines(Job):
    unit = "chunk"

    @classmethod
    def check(cls, cfg) -> None:
        a = cfg.algo
        require_ints(a, ("total_steps", "chunks", "eval_episodes", "threads"))
        if a.method == "PGMORL" and cfg.train.resume:
            raise ConfigError("algo.method=PGMORL runs in one step and keeps no mid-run checkpoint; valid value here: "
                              "train.resume=null")

    def __init__(self, cfg, run_dir: Path):
        from envs import mo

        super().__init__(cfg, run_dir)
        os.environ["WANDB_MODE"] = "disabled"
        probe = mo.make_env(cfg.env)
        m = mo.num_objectives(probe)
        self.names, self.ref = mo.objective_names(cfg.env, m), mo.reference_point(cfg.env, m)
        self.known = mo.known_front(probe, float(cfg.algo.eval_gamma))
        self.eu_weights = simplex_weights(m, float(cfg.algo.eu_delta))
        self.method = METHODS[str(cfg.algo.method)](cfg, self.ref, self.known)
        self.total = 1 if cfg.algo.method == "PGMORL" else int(cfg.algo.chunks)
        self.front, self.extra, self.env_steps = np.zeros((0, m)), {}, 0

    def step(self) -> dict[str, float]:
        seed = int(self.cfg.seed) * 1_000_003 + self.steps_done * 101  # clean chunk boundaries (see the docstring)
        for i, env in enumerate((getattr(self.method.agent, "env", None), getattr(self.method, "eval_env", None))):
            if env is not None and self.cfg.algo.method != "PGMORL":
                env.reset(seed=seed + i)
                env.action_space.seed(seed + i)
        self.front, self.extra = self.method.chunk(self.steps_done)
        self.env_steps = int(self.method.agent.global_step)
        out = self.metrics()
        log.info(f"[morl_baselines] {self.cfg.algo.method} steps {self.env_steps} | HV {out['morl/hypervolume']:.4g} "
                 f"EU {out['morl/expected_utility']:.4g} front {len(self.front)}")
        return out

    def metrics(self) -> dict[str, float]:
        out = {f"morl/{k}": v for k, v in front_metrics(self.front, self.ref, self.eu_weights, self.known).items()}
        out.update({"morl/archive_size": float(len(self.front)), **{f"morl/{k}": v for k, v in self.extra.items()}})
        return out

    def log_x(self) -> int:
        return self.env_steps

    @property
    def checkpoint_every(self) -> int:
        return 0  # the last step, and a train.stop_after pause

    @property
    def eval_every(self) -> int:
        return 0

    def state_dict(self) -> dict:
        tabular = self.cfg.algo.method != "PGMORL"
        return {"agent": self.method.agent if tabular else None, "front": self.front.tolist(), "extra": self.extra,
                "env_steps": self.env_steps}

    def load_state_dict(self, state: dict) -> None:
        self.method.agent = state["agent"]
        self.front, self.extra = np.asarray(state["front"]).reshape(-1, len(self.ref)), dict(state["extra"])
        self.env_steps = int(state["env_steps"])

    def write_front(self, out_dir: Path, plot: bool) -> None:
        a = self.cfg.algo
        write_front(out_dir, self.front, self.names, self.ref, float(a.eval_gamma), self.known, str(a.method),
                    f"{self.cfg.env.id}: {a.method}, {self.env_steps} env steps", plot=plot)

    def write_extra(self, checkpoint_dir: Path) -> None:
        self.write_front(checkpoint_dir, plot=False)

    def evaluate(self) -> dict[str, float]:
        """The final front's metrics; writes front.json and front.png into the run dir."""
        self.write_front(self.run_dir, plot=True)
        return {**{k.split("/", 1)[1]: v for k, v in self.metrics().items()}, "env_steps": float(self.env_steps)}

    def describe(self) -> str:
        a = self.cfg.algo
        return f"morl_baselines {a.method} on {self.cfg.env.id}: {a.total_steps} env steps in {self.total} chunks"
