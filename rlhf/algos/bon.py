"""`algo=bon`: best-of-n sampling against proxy reward models (Gao et al. 2023; Coste et al.
2024, spec algorithms-b.md §3.3).

For each held-out prompt, N samples from the base (SFT) policy are scored by the gold
scorer and by every member of the reward ensemble. For each selection rule -- every
single member, and the ensemble objectives mean / wco / uwo -- the unbiased estimator
(rlhf.functional.best_of_n_expectation) gives the expected gold and proxy score of the
best-of-n sample for every n <= N without redrawing, and KL(best-of-n || base) is the
analytic log n - (n - 1)/n. Records stay whole: a sample's gold and all member scores are
one row, sorted together.

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
from agents.warmstart import warm_start_policy
from envs import base as env_base
from rlhf.algos.rm import env_kwargs
from rlhf.evaluate import EVAL_SEED_OFFSET, save_eval
from rlhf.functional import ENSEMBLE_OBJECTIVES, best_of_n_expectation, best_of_n_kl, ensemble_objective
from rlhf.rollout.batch import collate
from rlhf.rollout.engine import HFEngine, SamplingParams
from rlhf.rollout.runner import EpisodeRunner

log = logging.getLogger("rlhf")


def sample_and_score(cfg, policy_dir: Path, ensemble) -> tuple[np.ndarray, np.ndarray]:
    """gold [P, N] and member scores [k, P, N] for N samples of each of P held-out prompts."""
    n_prompts, n_max = int(cfg.algo.prompts), int(cfg.algo.n_max)
    tokenizer, policy = load_tokenizer(policy_dir), load_lm(policy_dir).eval()
    runner = EpisodeRunner(HFEngine(policy, tokenizer, int(cfg.rollout.max_batch_size)), tokenizer,
                           SamplingParams.from_config(cfg.rollout), max_turns=int(cfg.env.max_turns))
    torch.manual_seed(int(cfg.seed))
    gold = np.zeros((n_prompts, n_max))
    members = np.zeros((len(ensemble.members), n_prompts, n_max))
    start = time.time()
    for p in range(n_prompts):
        seeds = [EVAL_SEED_OFFSET + p] * n_max
        envs = [env_base.make(str(cfg.env.name), split="eval", **env_kwargs(cfg)) for _ in seeds]
        episodes = runner.run(envs, seeds)
        batch = collate(episodes, tokenizer.pad_token_id)
        gold[p] = [ep.env_reward("gold") for ep in episodes]
        members[:, p] = ensemble.member_scores(batch.input_ids, batch.attention_mask).numpy()
        if (p + 1) % 8 == 0 or p + 1 == n_prompts:
            log.info(f"[bon] sampled {p + 1}/{n_prompts} prompts x {n_max} ({time.time() - start:.0f}s)")
    return gold, members


def selection_rules(members: np.ndarray, uwo_lambda: float) -> dict[str, np.ndarray]:
    """Score used to pick the best sample, per rule: [P, N] each."""
    rules = {f"single_{i}": members[i] for i in range(len(members))}
    if len(members) > 1:
        stacked = torch.from_numpy(members)
        for objective in ENSEMBLE_OBJECTIVES:
            rules[objective] = ensemble_objective(stacked, objective, uwo_lambda).numpy()
    return rules


def n_grid(n_max: int) -> list[int]:
    ns, n = [], 1
    while n < n_max:
        ns.append(n)
        n *= 2
    return ns + [n_max]


def best_of_n_curves(gold: np.ndarray, rules: dict[str, np.ndarray], ns: list[int]) -> dict[str, dict[str, list[float]]]:
    """Per rule: expected gold and proxy (its own selection score) of the best-of-n sample,
    averaged over prompts, for each n."""
    curves = {}
    for name, score in rules.items():
        g = np.mean([best_of_n_expectation(score[p], gold[p], ns) for p in range(len(gold))], axis=0)
        s = np.mean([best_of_n_expectation(score[p], score[p], ns) for p in range(len(gold))], axis=0)
        curves[name] = {"gold": g.tolist(), "proxy": s.tolist()}
    return curves


def train(cfg, run_dir: Path) -> dict:
    from rlhf.trainer import reward_model_ensemble

    env = env_base.make(str(cfg.env.name), split="train", **env_kwargs(cfg))
    policy_dir = warm_start_policy(cfg, env, log.info)
    ensemble = reward_model_ensemble(cfg, policy_dir)
    gold, members = sample_and_score(cfg, policy_dir, ensemble)
    ns = n_grid(int(cfg.algo.n_max))
    curves = best_of_n_curves(gold, selection_rules(members, float(cfg.reward.uwo_lambda)), ns)
    with SummaryWriter(str(run_dir)) as writer:
        for i, n in enumerate(ns):
            writer.add_scalar("bon/kl", best_of_n_kl(n), n)
            for name, curve in curves.items():
                writer.add_scalar(f"bon/{name}/gold", curve["gold"][i], n)
                writer.add_scalar(f"bon/{name}/proxy", curve["proxy"][i], n)
    (run_dir / "bon.json").write_text(json.dumps({"ns": ns, "kl": [best_of_n_kl(n) for n in ns],
                                                  "curves": curves}, indent=2))
    final = {f"{name}/gold": c["gold"][-1] for name, c in curves.items()}
    final.update({f"{name}/gold_peak": max(c["gold"]) for name, c in curves.items()})
    save_eval(run_dir, ns[-1], final)
    log.info(f"[bon] gold at n=1: {curves['single_0']['gold'][0]:.3f}; at n={ns[-1]}: "
             + " ".join(f"{name}={c['gold'][-1]:.3f}" for name, c in curves.items()))
    return final
