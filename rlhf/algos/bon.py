"""`algo=bon`: best-of-n sampling against proxy reward models (Gao et al. 2023, "Scaling Laws
for Reward Model Overoptimization"; with ensembles, Coste et al. 2024, "Reward Model Ensembles
Help Mitigate Overoptimization").

For each held-out prompt, N samples from the base (SFT) policy are scored by the gold
scorer and by every member of the reward ensemble. For each selection rule -- every
single member, and the ensemble objectives mean / wco / uwo of Coste et al. -- the unbiased
estimator of Nakano et al. 2021 (rlhf.functional.best_of_n_expectation) gives the expected
gold and proxy score of the best-of-n sample for every n <= N without redrawing, and
KL(best-of-n || base) is the analytic log n - (n - 1)/n (Gao et al. 2023). Records stay
whole: a sample's gold and all member scores are one row, sorted together. The samples
(token ids and gold) are cached by policy, sampling settings, prompts, N and seed, so runs
that differ only in their reward models reuse them.

Three harness steps (stages): 1. sample the pool, 2. score it with every member, 3. the
curves. Logged per rule r and n (TensorBoard x = n): bon/<r>/gold, bon/<r>/proxy; and
bon/kl; the final evaluation (each rule's gold at n = N and its peak over n) at x = N.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from agents.models import load_lm, load_tokenizer
from envs import base as env_base
from envs.base import env_settings
from rlhf.cache import cached, source_digest
from rlhf.config import ConfigError
from rlhf.evaluation import EVAL_SEED_OFFSET
from rlhf.functional import ENSEMBLE_OBJECTIVES, best_of_n_expectation, best_of_n_kl, ensemble_objective
from rlhf.harness import Job
from rlhf.reward_models import score_sequences
from rlhf.rewards import reward_model_ensemble
from rlhf.rollout.engine import SamplingParams
from rlhf.rollout.factory import make_engine
from rlhf.rollout.runner import EpisodeRunner
from rlhf.warmstart import warm_start_policy

log = logging.getLogger("rlhf")


def pool_spec(cfg, policy_dir: Path) -> dict:
    """What the samples depend on. The env keys that only shape the reward models' training
    data (preference_pairs, label_noise) are left out, so runs that differ only in their reward
    models (e.g. label noise 0 and 0.25) share one pool and are compared on the same samples."""
    env = {k: v for k, v in env_settings(cfg.env).items() if k not in ("preference_pairs", "label_noise")}
    return {"policy": str(Path(policy_dir).resolve()), "env": {"name": cfg.env.name, **env},
            "prompts": int(cfg.algo.prompts), "n_max": int(cfg.algo.n_max), "seed": int(cfg.seed),
            "engine": str(cfg.rollout.name),
            "sampling": {k: cfg.rollout[k] for k in ("temperature", "top_p", "top_k", "max_new_tokens")},
            "sources": source_digest(["rlhf.algos.bon", "envs.text", "rlhf.rollout.engine", "rlhf.rollout.runner"])}


def sample_pool(cfg, policy_dir: Path) -> tuple[np.ndarray, list[list[list[int]]]]:
    """gold [P, N] and the token ids (prompt + response) of N samples from the base policy for
    each of P held-out prompts; cached, since sampling is most of a best-of-n run's time."""
    n_prompts, n_max = int(cfg.algo.prompts), int(cfg.algo.n_max)

    def build(out: Path) -> None:
        tokenizer, policy = load_tokenizer(policy_dir), load_lm(policy_dir).eval()
        runner = EpisodeRunner(make_engine(cfg, policy, tokenizer, model_dir=str(policy_dir)), tokenizer,
                               SamplingParams.from_config(cfg.rollout), max_turns=int(cfg.env.max_turns))
        torch.manual_seed(int(cfg.seed))
        gold, sequences, start = np.zeros((n_prompts, n_max)), [], time.time()
        for p in range(n_prompts):
            seeds = [EVAL_SEED_OFFSET + p] * n_max
            envs = [env_base.make(str(cfg.env.name), split="eval", **env_settings(cfg.env)) for _ in seeds]
            episodes = runner.run(envs, seeds)
            gold[p] = [ep.env_reward("gold") for ep in episodes]
            sequences.append([ep.token_ids for ep in episodes])
            if (p + 1) % 8 == 0 or p + 1 == n_prompts:
                log.info(f"[bon] sampled {p + 1}/{n_prompts} prompts x {n_max} ({time.time() - start:.0f}s)")
        (out / "pool.json").write_text(json.dumps({"gold": gold.tolist(), "sequences": sequences}))

    pool = json.loads((cached(cfg.cache_dir, "bon_pool", pool_spec(cfg, policy_dir), build, log.info)
                       / "pool.json").read_text())
    return np.asarray(pool["gold"]), pool["sequences"]


def member_scores(ensemble, sequences: list[list[list[int]]], pad_id: int) -> np.ndarray:
    """[k, P, N]: every member's (normalized) score of every sample."""
    flat = [seq for prompt_samples in sequences for seq in prompt_samples]
    scores = score_sequences(ensemble.member_scores, flat, pad_id, chunk=512).numpy().astype(np.float64)
    return scores.reshape(len(ensemble.members), len(sequences), -1)


def selection_rules(members: np.ndarray, uwo_lambda: float, extra_uwo_lambdas=()) -> dict[str, np.ndarray]:
    """Score used to pick the best sample, per rule: [P, N] each. `uwo` uses uwo_lambda;
    each extra lambda adds a rule `uwo_l<lambda>` (UWO's variance penalty at another strength)."""
    rules = {f"single_{i}": members[i] for i in range(len(members))}
    if len(members) > 1:
        stacked = torch.from_numpy(members)
        for objective in ENSEMBLE_OBJECTIVES:
            rules[objective] = ensemble_objective(stacked, objective, uwo_lambda).numpy()
        for extra in extra_uwo_lambdas:
            rules[f"uwo_l{float(extra):g}"] = ensemble_objective(stacked, "uwo", float(extra)).numpy()
    return rules


def n_grid(n_max: int) -> list[int]:
    ns, n = [], 1
    while n < n_max:
        ns.append(n)
        n *= 2
    return ns + [n_max]


def best_of_n_curves(gold: np.ndarray, rules: dict[str, np.ndarray], ns: list[int]) -> dict[str, dict[str, list]]:
    """Per rule: expected gold and proxy (its own selection score) of the best-of-n sample,
    averaged over prompts, for each n; and `gold_per_prompt` [P][len(ns)], from which paired
    comparisons between rules get their standard errors (the rules score the same samples)."""
    curves = {}
    for name, score in rules.items():
        g = np.array([best_of_n_expectation(score[p], gold[p], ns) for p in range(len(gold))])
        s = np.array([best_of_n_expectation(score[p], score[p], ns) for p in range(len(gold))])
        curves[name] = {"gold": g.mean(axis=0).tolist(), "proxy": s.mean(axis=0).tolist(),
                        "gold_per_prompt": g.tolist()}
    return curves


class BestOfN(Job):
    """Stages: 1. sample the pool (cached), 2. score it with every member, 3. the curves."""

    unit = "stage"

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.reward.name not in ("rm", "ensemble"):
            raise ConfigError(f"algo=bon needs proxy reward models; got reward={cfg.reward.name} "
                              "(valid choices for algo=bon: reward=rm, reward=ensemble)")

    def __init__(self, cfg, run_dir):
        super().__init__(cfg, run_dir)
        self.total = 3
        env = env_base.make(str(cfg.env.name), split="train", **env_settings(cfg.env))
        self.policy_dir = warm_start_policy(cfg, env, log.info)
        self.ensemble = reward_model_ensemble(cfg, self.policy_dir)
        self.ns = n_grid(int(cfg.algo.n_max))
        self.pool: tuple | None = None  # gold [P, N] and token ids (stage 1)
        self.members: torch.Tensor | None = None  # [k, P, N] member scores (stage 2)
        self.curves: dict | None = None  # per rule (stage 3)

    def step(self) -> dict[str, float]:
        if self.pool is None:  # stage 1 builds the pool (or finds it cached); a resumed run reads it back
            self.pool = sample_pool(self.cfg, self.policy_dir)
        gold, sequences = self.pool
        if self.steps_done == 1:
            pad_id = load_tokenizer(self.policy_dir).pad_token_id
            self.members = torch.from_numpy(member_scores(self.ensemble, sequences, pad_id))
        elif self.steps_done == 2:
            self.curves = self.best_of_n(gold, self.members.numpy())
        return {}

    def best_of_n(self, gold: np.ndarray, members: np.ndarray) -> dict:
        ns, cfg = self.ns, self.cfg
        rules = selection_rules(members, float(cfg.reward.uwo_lambda), list(cfg.algo.extra_uwo_lambdas))
        curves = best_of_n_curves(gold, rules, ns)
        for i, n in enumerate(ns):
            self.logger.scalars("bon/", {"kl": best_of_n_kl(n)}, n)
            for name, curve in curves.items():
                self.logger.scalars(f"bon/{name}/", {"gold": curve["gold"][i], "proxy": curve["proxy"][i]}, n)
        (self.run_dir / "bon.json").write_text(json.dumps({"ns": ns, "kl": [best_of_n_kl(n) for n in ns],
                                                           "curves": curves}))
        log.info(f"[bon] gold at n=1: {curves['single_0']['gold'][0]:.3f}; at n={ns[-1]}: "
                 + " ".join(f"{name}={c['gold'][-1]:.3f}" for name, c in curves.items()))
        return curves

    def log_x(self) -> int:
        return self.ns[-1]  # x is n: the final evaluation is best-of-N

    def evaluate(self) -> dict[str, float]:
        """Each rule's expected gold at n = N and its peak over n."""
        final = {f"{name}/gold": c["gold"][-1] for name, c in self.curves.items()}
        final.update({f"{name}/gold_peak": max(c["gold"]) for name, c in self.curves.items()})
        return final

    @property
    def eval_every(self) -> int:
        return 0  # the evaluation is the curves of stage 3

    @property
    def checkpoint_every(self) -> int:
        return 1

    def state_dict(self) -> dict:
        return {"members": self.members, "curves": self.curves}

    def load_state_dict(self, state: dict) -> None:
        self.members, self.curves = state["members"], state["curves"]
