"""`algo=bon`: best-of-n sampling against proxy reward models (Gao et al. 2023; Coste et al.
2024, spec algorithms-b.md §3.3).

For each held-out prompt, N samples from the base (SFT) policy are scored by the gold
scorer and by every member of the reward ensemble. For each selection rule -- every
single member, and the ensemble objectives mean / wco / uwo -- the unbiased estimator
(rlhf.functional.best_of_n_expectation) gives the expected gold and proxy score of the
best-of-n sample for every n <= N without redrawing, and KL(best-of-n || base) is the
analytic log n - (n - 1)/n. Records stay whole: a sample's gold and all member scores are
one row, sorted together. The samples (token ids and gold) are cached by policy, sampling
settings, prompts, N and seed, so runs that differ only in their reward models reuse them.

Logged per rule r and n (TensorBoard step = n): bon/<r>/gold, bon/<r>/proxy; and bon/kl.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from agents.models import load_lm, load_tokenizer
from rlhf.warmstart import warm_start_policy
from envs import base as env_base
from envs.base import env_settings
from rlhf.reward_models import score_sequences
from rlhf.cache import cached, source_digest
from rlhf.evaluation import EVAL_SEED_OFFSET
from rlhf.harness import save_eval
from rlhf.functional import ENSEMBLE_OBJECTIVES, best_of_n_expectation, best_of_n_kl, ensemble_objective
from rlhf.rollout.engine import HFEngine, SamplingParams
from rlhf.rollout.runner import EpisodeRunner

log = logging.getLogger("rlhf")


def pool_spec(cfg, policy_dir: Path) -> dict:
    """What the samples depend on. The env keys that only shape the reward models' training
    data (preference_pairs, label_noise) are left out, so runs that differ only in their reward
    models (e.g. label noise 0 and 0.25) share one pool and are compared on the same samples."""
    env = {k: v for k, v in env_settings(cfg.env).items() if k not in ("preference_pairs", "label_noise")}
    return {"policy": str(Path(policy_dir).resolve()), "env": {"name": cfg.env.name, **env},
            "prompts": int(cfg.algo.prompts), "n_max": int(cfg.algo.n_max), "seed": int(cfg.seed),
            "sampling": {k: cfg.rollout[k] for k in ("temperature", "top_p", "top_k", "max_new_tokens")},
            "sources": source_digest(["rlhf.algos.bon", "envs.text", "rlhf.rollout.engine", "rlhf.rollout.runner"])}


def sample_pool(cfg, policy_dir: Path) -> tuple[np.ndarray, list[list[list[int]]]]:
    """gold [P, N] and the token ids (prompt + response) of N samples from the base policy for
    each of P held-out prompts; cached, since sampling is most of a best-of-n run's time."""
    n_prompts, n_max = int(cfg.algo.prompts), int(cfg.algo.n_max)

    def build(out: Path) -> None:
        tokenizer, policy = load_tokenizer(policy_dir), load_lm(policy_dir).eval()
        runner = EpisodeRunner(HFEngine(policy, tokenizer, int(cfg.rollout.max_batch_size)), tokenizer,
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
    each extra lambda adds a rule `uwo_l<lambda>` (the spec reports lambda 0.5 and 1)."""
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


def train(cfg, run_dir: Path) -> dict:
    from rlhf.trainer import reward_model_ensemble

    env = env_base.make(str(cfg.env.name), split="train", **env_settings(cfg.env))
    policy_dir = warm_start_policy(cfg, env, log.info)
    ensemble = reward_model_ensemble(cfg, policy_dir)
    gold, sequences = sample_pool(cfg, policy_dir)
    members = member_scores(ensemble, sequences, load_tokenizer(policy_dir).pad_token_id)
    ns = n_grid(int(cfg.algo.n_max))
    rules = selection_rules(members, float(cfg.reward.uwo_lambda), list(cfg.algo.extra_uwo_lambdas))
    curves = best_of_n_curves(gold, rules, ns)
    with SummaryWriter(str(run_dir)) as writer:
        for i, n in enumerate(ns):
            writer.add_scalar("bon/kl", best_of_n_kl(n), n)
            for name, curve in curves.items():
                writer.add_scalar(f"bon/{name}/gold", curve["gold"][i], n)
                writer.add_scalar(f"bon/{name}/proxy", curve["proxy"][i], n)
    (run_dir / "bon.json").write_text(json.dumps({"ns": ns, "kl": [best_of_n_kl(n) for n in ns],
                                                  "curves": curves}))
    final = {f"{name}/gold": c["gold"][-1] for name, c in curves.items()}
    final.update({f"{name}/gold_peak": max(c["gold"]) for name, c in curves.items()})
    save_eval(run_dir, ns[-1], final)
    log.info(f"[bon] gold at n=1: {curves['single_0']['gold'][0]:.3f}; at n={ns[-1]}: "
             + " ".join(f"{name}={c['gold'][-1]:.3f}" for name, c in curves.items()))
    return final
