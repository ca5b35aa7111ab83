"""`algo=cmorl`: C-MORL, constrained multi-objective RL (Liu, Pan, Xu, Song, You, Chen, Bian;
ICLR 2025; arXiv 2410.02236, Algorithm 1) on MO-Gymnasium envs (`env=mo`): a set of policies
whose vector returns G approximate the Pareto front; at deployment a preference w picks
argmax_pi w.G^pi (`python -m rlhf.evaluate`).

    Pareto initialisation  one PPO policy per preference w of a simplex grid, trained on w.A
                           (a critic head per objective); every policy on the way is a candidate
    Pareto extension       select num_select archive policies by crowding distance; from each
                           pi_r and for each objective l, PPO updates maximising G_l subject to
                           G_j >= c_j (j != l) through a log barrier (the interior-point method
                           IPO, Liu, Ding, Liu 2020); the archive keeps the non-dominated ones

A step of the run ("chunk") is one policy's `update_iter` PPO updates (rlhf.control_ppo): a
weight's share of a Stage 1 round or one extension (pi_r, l). The archive (rlhf.pareto) is
updated when a round ends, and morl/* is logged then (x = env steps x envs).

Two fronts are scored. `morl/*` is the archive as the method keeps it (every intermediate
policy is a candidate, as the authors' code does). `morl/final/*` is a second archive fed only
with each Stage 1 weight's last policy and each extension's last policy: a scoring rule any
method can be held to (e.g. MPMOQLearning's policies, each the last of its weight), so that
arms are compared alike; it never steers the algorithm.

Where the authors' code and the paper differ (docs/cmorl.md): the paper's constraint, in
reference-shifted space c_j = ref_j + beta (G_j(pi_r) - ref_j) (beta G_j starts a negative
objective infeasible), on G^_j = G_j(pi_old) + H mean_t[clip(rho_t) A~_j,t] (raw centred
advantages, H the mean episode length); an extended log barrier (linear below a small slack:
it still pushes back); each extension restarts from pi_r with a fresh Adam; an infeasible
policy takes a counted recovery step (PPO on the violated objectives); deterministic
evaluation in raw reward units.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from agents.control import MLPActorCritic
from rlhf.config import ConfigError, require_ints
from rlhf.control_ppo import PPO, PPOConfig, ReturnNormalizer, Rollout, reset
from rlhf.functional import masked_whiten
from rlhf.harness import Job
from rlhf.pareto import Member, ParetoArchive, simplex_weights, write_front

log = logging.getLogger("rlhf")
FINAL_METRICS = ("hypervolume", "expected_utility", "cardinality", "igd")  # logged for the last-policies front


def shifted_threshold(g_r: np.ndarray, ref: np.ndarray, beta: float, shift: bool = True) -> np.ndarray:
    """c_j = ref_j + beta * (G_j(pi_r) - ref_j). Without the shift, the authors' beta * G_j(pi_r),
    which for a negative G_j lies ABOVE G_j(pi_r): pi_r starts infeasible."""
    g_r, ref = np.asarray(g_r, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return ref + beta * (g_r - ref) if shift else beta * g_r


def barrier_loss(g_hat: torch.Tensor, thresholds: torch.Tensor, scale: torch.Tensor, active: torch.Tensor,
                 t: float, floor: float = 1e-3) -> torch.Tensor:
    """-(1/t) * mean_{j active} phi((G^_j - c_j) / scale_j), phi = log above `floor` and its
    tangent line below it (an extended log barrier: finite, and still pushing back when a
    minibatch step crosses the boundary). Minimised together with the PPO loss."""
    slack = (g_hat - thresholds) / scale.clamp(min=1e-8)
    phi = torch.where(slack >= floor, torch.log(slack.clamp(min=floor)), math.log(floor) + (slack - floor) / floor)
    return -(phi[active].mean() / t) if bool(active.any()) else g_hat.sum() * 0.0


def barrier_term(batch: Rollout, g_old, thresholds, scale, active, t: float, clip: float, num_envs: int):
    """The barrier as an extra PPO loss on a minibatch: G^_j = G_j(pi_old) + H mean[clip(rho) A~_j]."""
    raw = batch.raw_advantages()
    centred = raw - raw.mean(0)
    horizon = raw.shape[0] / max(len(batch.episodes), num_envs)  # steps per episode (>= 1 per env)
    g_old, c, s = (torch.as_tensor(x, dtype=torch.float32) for x in (g_old, thresholds, scale))

    def term(logp: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        ratio = (logp - batch.logp[idx]).clamp(-20, 20).exp().clamp(1 - clip, 1 + clip)
        return barrier_loss(g_old + horizon * (ratio.unsqueeze(-1) * centred[idx]).mean(0), c, s,
                            torch.as_tensor(active), t)

    return term


def recovery_advantage(batch: Rollout, violated: np.ndarray) -> torch.Tensor:
    """Sum of the violated objectives' whitened advantages: a step back into the feasible set."""
    raw = batch.raw_advantages()
    return sum(masked_whiten(raw[:, j], torch.ones(raw.shape[0])) for j in np.flatnonzero(violated))


class CMORL(Job):
    unit = "chunk"

    @classmethod
    def check(cls, cfg) -> None:
        a = cfg.algo
        require_ints(a, ("total_steps", "init_steps", "num_envs", "num_steps", "update_iter", "num_select", "policy_buffer",
                         "eval_episodes", "checkpoint_every", "threads"), zero_ok=("checkpoint_every",))
        if a.stages == "both" and int(a.init_steps) > int(a.total_steps):
            raise ConfigError(f"algo.init_steps={a.init_steps} exceeds algo.total_steps={a.total_steps}")
        if not 0.0 < float(a.beta) < 1.0:
            raise ConfigError(f"algo.beta={a.beta} must lie in (0, 1)")
        if float(a.barrier_t) <= 0:
            raise ConfigError(f"algo.barrier_t={a.barrier_t} must be > 0")
        if int(a.minibatches) > int(a.num_envs) * int(a.num_steps):
            raise ConfigError(f"algo.minibatches={a.minibatches} exceeds the batch num_envs x num_steps")

    def __init__(self, cfg, run_dir: Path):
        from envs import mo

        super().__init__(cfg, run_dir)
        a = cfg.algo
        self.ppo_cfg = PPOConfig.from_cfg(a)
        self.eval_env, self.envs = mo.make_env(cfg.env), mo.make_vector_env(cfg.env, self.ppo_cfg.num_envs)
        self.m = mo.num_objectives(self.eval_env)
        self.names, self.ref = mo.objective_names(cfg.env, self.m), mo.reference_point(cfg.env, self.m)
        self.known = mo.known_front(self.eval_env, float(a.eval_gamma))
        self.eu_weights = simplex_weights(self.m, float(a.eu_delta))
        self.weights = simplex_weights(self.m, float(a.weight_delta), float(a.min_weight), float(a.max_weight))
        spu, per = self.ppo_cfg.steps_per_update, int(a.update_iter)
        budget = int(a.total_steps) if a.stages == "init" else int(a.init_steps)
        self.init_updates = budget // (len(self.weights) * spu)
        if self.init_updates < 1:
            raise ConfigError(f"Stage 1 budget {budget} env steps is below one update per weight ({len(self.weights)} "
                              f"weights x {spu} steps); raise algo.{'total_steps' if a.stages == 'init' else 'init_steps'}"
                              " or lower num_steps")
        self.stage1_jobs = math.ceil(self.init_updates / per) * len(self.weights)
        self.stage2_updates = 0 if a.stages == "init" else \
            (int(a.total_steps) - len(self.weights) * self.init_updates * spu) // spu
        self.total = self.stage1_jobs + math.ceil(self.stage2_updates / per)
        self.stage1 = [PPO(self.new_agent(), self.ppo_cfg, ReturnNormalizer(self.m, self.ppo_cfg.gamma))
                       for _ in self.weights]
        self.archive = ParetoArchive(self.ref, int(a.policy_buffer))
        self.finals = ParetoArchive(self.ref, int(a.policy_buffer))  # scoring only: last policies (docstring)
        self.pool: list[Member] = []  # this round's candidates
        self.final_pool: list[Member] = []  # this round's last policies (a subset of pool)
        self.queue: list[tuple[Member, int]] = []  # this round's pending extensions (pi_r, l)
        self.env_steps, self.next_uid = 0, 0
        self.counters = {"ipo_updates": 0, "recovery_updates": 0, "infeasible_starts": 0, "stalled_chunks": 0}

    # --- building blocks --------------------------------------------------------------------------
    def new_agent(self) -> MLPActorCritic:
        return MLPActorCritic(int(np.prod(self.eval_env.observation_space.shape)), self.eval_env.action_space, self.m,
                              list(self.cfg.algo.hidden), bool(self.cfg.algo.normalize_obs))

    def ppo_from(self, member: Member) -> PPO:
        """A copy of an archive policy with a fresh Adam at the base lr."""
        agent, norm = self.new_agent(), ReturnNormalizer(self.m, self.ppo_cfg.gamma)
        agent.load_state_dict(member.policy)
        norm.load_state_dict(member.obj_norm)
        return PPO(agent, self.ppo_cfg, norm)

    def candidate(self, ppo: PPO, origin: dict, last: bool = False) -> Member:
        """Evaluate the policy (deterministic, raw discounted returns) and add it to the round's pool
        (`last`: also to the pool of last policies scored as morl/final/*)."""
        from envs import mo

        g = mo.discounted_return(self.eval_env, ppo.agent.act_deterministic, int(self.cfg.algo.eval_episodes),
                                 float(self.cfg.algo.eval_gamma))
        self.next_uid += 1
        policy = {k: v.detach().clone() for k, v in ppo.agent.state_dict().items()}
        self.pool.append(Member(np.asarray(g, dtype=np.float64), policy, ppo.normalizer.state_dict(), origin,
                                self.next_uid))
        if last:
            self.final_pool.append(self.pool[-1])
        return self.pool[-1]

    def reset_envs(self):
        """Every chunk starts from freshly seeded episodes: a resumed run replays it exactly."""
        base = int(self.cfg.seed) * 1_000_003 + self.steps_done * 101
        return reset(self.envs, [base + i for i in range(self.ppo_cfg.num_envs)])

    # --- one chunk ---------------------------------------------------------------------------------
    def step(self) -> dict[str, float]:
        j, per, start, steps = self.steps_done, int(self.cfg.algo.update_iter), time.time(), self.env_steps
        if j < self.stage1_jobs:
            stats = self.initialise(j // len(self.weights), j % len(self.weights))
            round_done = j % len(self.weights) == len(self.weights) - 1
        else:
            stats = self.extend(min(per, self.stage2_updates - (j - self.stage1_jobs) * per))
            round_done = not self.queue
        out = {k: float(np.mean([s[k] for s in stats])) for k in stats[0]} if stats else {}
        out["cmorl/stage"] = 1.0 if j < self.stage1_jobs else 2.0
        out["perf/env_steps_per_s"] = (self.env_steps - steps) / max(time.time() - start, 1e-9)
        if round_done or j + 1 == self.total:
            out["morl/pool_size"] = float(len(self.pool))
            self.archive.update(self.pool)
            self.finals.update(self.final_pool)
            self.pool, self.final_pool = [], []
            out.update(self.metrics())
            log.info(f"[cmorl] chunk {j + 1}/{self.total} env steps {self.env_steps} | HV {out['morl/hypervolume']:.4g}"
                     f" EU {out['morl/expected_utility']:.4g} archive {len(self.archive.members)}")
        return out

    def initialise(self, iteration: int, k: int) -> list[dict]:
        """Pareto initialisation: weight k's policy takes update_iter more PPO updates on the
        scalarised advantage w.A (raw units), lr decaying linearly over its init_updates."""
        a, ppo, w = self.cfg.algo, self.stage1[k], torch.as_tensor(self.weights[k], dtype=torch.float32)
        cursor, stats = self.reset_envs(), []
        for u in range(iteration * int(a.update_iter), min((iteration + 1) * int(a.update_iter), self.init_updates)):
            ppo.set_lr(self.ppo_cfg.lr * (1.0 - u / self.init_updates) if a.lr_decay else self.ppo_cfg.lr)
            batch = ppo.collect(self.envs, cursor)
            stats.append(ppo.update(batch, batch.raw_advantages() @ w))
            self.env_steps += self.ppo_cfg.steps_per_update
            self.candidate(ppo, {"stage": 1, "weight": self.weights[k].tolist(), "update": u + 1},
                           last=u + 1 == self.init_updates)
        return stats

    def extend(self, updates: int) -> list[dict]:
        """Pareto extension of one (pi_r, l): maximise G_l subject to G_j >= c_j, j != l. A round
        starts by selecting num_select archive policies by crowding distance."""
        a = self.cfg.algo
        if not self.queue:
            self.queue = [(member, l) for member in self.archive.select(int(a.num_select)) for l in range(self.m)]
        if not self.queue:  # nothing to extend: every policy so far is below the reference point
            if not self.counters["stalled_chunks"]:
                log.warning(f"[cmorl] Stage 2 has no archive policy to extend: every policy so far fell below the "
                            f"reference point {self.ref.tolist()} (env.ref_point); its budget stays unspent")
            self.counters["stalled_chunks"] += 1
            self.env_steps += updates * self.ppo_cfg.steps_per_update
            return []
        member, target = self.queue.pop(0)
        thresholds = shifted_threshold(member.objectives, self.ref, float(a.beta), bool(a.reference_shift))
        scale = np.maximum(np.abs(member.objectives - self.ref), 1e-6)
        active = np.arange(self.m) != target
        ppo, g, cursor, stats = self.ppo_from(member), member.objectives.copy(), self.reset_envs(), []
        for u in range(updates):
            batch = ppo.collect(self.envs, cursor)
            violated = active & (g - thresholds <= 0)
            self.counters["ipo_updates"] += 1
            if violated.any():  # infeasible: a recovery step on the violated objectives
                self.counters["recovery_updates"] += 1
                self.counters["infeasible_starts"] += int(u == 0)
                s = ppo.update(batch, recovery_advantage(batch, violated))
                s["loss/extra"] = 0.0
            else:
                s = ppo.update(batch, batch.raw_advantages()[:, target],
                               barrier_term(batch, g, thresholds, scale, active, float(a.barrier_t),
                                            self.ppo_cfg.clip, self.ppo_cfg.num_envs))
            s["cmorl/barrier_loss"] = s.pop("loss/extra")
            s["cmorl/constraint_slack_min"] = float(np.min(((g - thresholds) / scale)[active])) if active.any() else 0.0
            s["cmorl/recovery"] = float(violated.any())
            stats.append(s)
            self.env_steps += self.ppo_cfg.steps_per_update
            g = self.candidate(ppo, {"stage": 2, "parent": member.uid, "objective": target, "update": u + 1,
                                     "beta": float(a.beta)}, last=u + 1 == updates).objectives
        return stats

    # --- what the harness asks ----------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        out = {f"morl/{k}": v for k, v in self.archive.metrics(self.eu_weights, self.known).items()}
        out["cmorl/history_resets"] = out.pop("morl/history_resets")
        finals = self.finals.metrics(self.eu_weights, self.known)
        out.update({f"morl/final/{k}": v for k, v in finals.items() if k in FINAL_METRICS})
        out.update({"cmorl/recovery_updates": float(self.counters["recovery_updates"]),
                    "cmorl/infeasible_fraction": self.counters["recovery_updates"] / max(1, self.counters["ipo_updates"])})
        return out

    def log_x(self) -> int:
        return self.env_steps

    @property
    def eval_every(self) -> int:
        return 0  # evaluate() is the final front; every policy is evaluated as it is trained

    def modules(self) -> dict[str, torch.nn.Module]:
        return {f"stage1_w{k}": ppo.agent for k, ppo in enumerate(self.stage1)}

    def state_dict(self) -> dict:
        return {"env_steps": self.env_steps, "next_uid": self.next_uid, "counters": dict(self.counters),
                "archive": self.archive.state_dict(), "pool": [p.to_state() for p in self.pool],
                "finals": self.finals.state_dict(), "final_pool": [p.uid for p in self.final_pool],
                "queue": [(member.to_state(), target) for member, target in self.queue],
                "stage1": [{"optimizer": p.optimizer.state_dict(), "normalizer": p.normalizer.state_dict()}
                           for p in self.stage1]}

    def load_state_dict(self, state: dict) -> None:
        self.env_steps, self.next_uid, self.counters = int(state["env_steps"]), int(state["next_uid"]), state["counters"]
        self.archive = ParetoArchive.from_state(state["archive"])
        self.pool = [Member.from_state(p) for p in state["pool"]]
        self.finals = ParetoArchive.from_state(state["finals"])
        self.final_pool = [p for p in self.pool if p.uid in set(state["final_pool"])]
        self.queue = [(Member.from_state(member), int(target)) for member, target in state["queue"]]
        for ppo, s in zip(self.stage1, state["stage1"]):
            ppo.optimizer.load_state_dict(s["optimizer"])
            ppo.normalizer.load_state_dict(s["normalizer"])

    def write_front(self, out_dir: Path, plot: bool) -> None:
        write_front(out_dir, self.archive.objectives(), self.names, self.ref, float(self.cfg.algo.eval_gamma),
                    self.known, "C-MORL archive", f"{self.cfg.env.id}: archive after {self.env_steps} env steps",
                    origins=[p.origin for p in self.archive.members], plot=plot)

    def write_extra(self, checkpoint_dir: Path) -> None:
        self.write_front(checkpoint_dir, plot=False)

    def evaluate(self) -> dict[str, float]:
        """The final archive's metrics; writes front.json and front.png into the run dir."""
        self.write_front(self.run_dir, plot=True)
        final = {k.split("/", 1)[1]: v for k, v in self.metrics().items() if k.startswith("morl/")}
        final.update({"env_steps": float(self.env_steps), "recovery_updates": float(self.counters["recovery_updates"]),
                      "infeasible_starts": float(self.counters["infeasible_starts"])})
        return final

    def describe(self) -> str:
        return (f"cmorl on {self.cfg.env.id} {self.names} ref={self.ref.tolist()}: Stage 1 {len(self.weights)} weights x "
                f"{self.init_updates} updates, Stage 2 {self.stage2_updates} updates; {self.total} chunks")

    def close(self) -> None:
        self.envs.close()


def evaluate(cfg, checkpoint_dir: Path, run_dir: Path) -> dict[str, float]:
    """`python -m rlhf.evaluate run=<run dir> eval.preference=[0.5,0.5]`: the archive policy
    maximising w.G (stored, evaluated G), re-run deterministically; its returns, utility and
    the archive's metrics; writes eval/front_step_<N>.png (archive, choice, known front)."""
    from envs import mo
    from rlhf.checkpoint import STATE
    from rlhf.pareto import plot_front, preference

    state = torch.load(Path(checkpoint_dir) / STATE, weights_only=False)
    archive, env = ParetoArchive.from_state(state["archive"]), mo.make_env(cfg.env)
    m = mo.num_objectives(env)
    names, gamma = mo.objective_names(cfg.env, m), float(cfg.algo.eval_gamma)
    known = mo.known_front(env, gamma)
    w = preference(cfg.eval.get("preference"), names)
    index, member = archive.choose(w)
    agent = MLPActorCritic(int(np.prod(env.observation_space.shape)), env.action_space, m, list(cfg.algo.hidden),
                           bool(cfg.algo.normalize_obs))
    agent.load_state_dict(member.policy)
    measured = mo.discounted_return(env, agent.act_deterministic, int(cfg.algo.eval_episodes), gamma)
    metrics = {**{f"preference/{n}": float(x) for n, x in zip(names, w)}, "chosen/index": float(index),
               "chosen/uid": float(member.uid), "chosen/utility": float(w @ measured),
               **{f"chosen/{n}": float(x) for n, x in zip(names, measured)},
               **{f"chosen/archived_{n}": float(x) for n, x in zip(names, member.objectives)},
               **archive.metrics(simplex_weights(m, float(cfg.algo.eu_delta)), known)}
    objs = archive.objectives()
    plot = plot_front(Path(run_dir) / "eval" / f"front_step_{int(state['step']):06d}.png",
                      {"archive": objs, f"chosen for w={np.round(w, 3).tolist()}": objs[index:index + 1]},
                      names, known, f"{cfg.env.id}: archive and the policy chosen for w")
    log.info(f"[cmorl] w={np.round(w, 3).tolist()} -> archive policy #{member.uid} ({member.origin}); returns "
             + ", ".join(f"{n}={x:.4g}" for n, x in zip(names, measured)) + (f"; plot {plot}" if plot else ""))
    return metrics
