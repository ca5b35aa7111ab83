"""What `env=code` adds to training data and evaluation (envs/code).

* `code_pool`: the static, off-policy training set of value-based program synthesis (B-Coder,
  Yu et al. 2024, section 5.1): every ground-truth program of the train problems, re-executed
  (one that fails its own tests is dropped, never trained on as correct), plus K samples per
  train problem from the warm-start checkpoint, each scored by the unit tests (the env's
  `unit_tests` reward: pass +1, fail -0.3, runtime error -0.6, compile error -1). The samples
  are cached by everything that determines them, so the arms of a comparison share them.
* `sampled_eval`: m sampled programs per held-out problem; unbiased pass@k (Chen et al. 2021,
  eq. 1, envs.code.tasks.pass_at_k); with a program score (B-Coder's free reward R~), the
  re-ranked pass@k of the CodeT protocol (keep the top k by score; solved if one passes), the
  AUROC of the score for pass vs fail, the mean score per outcome class and its correlation
  with length. Rows are added to the per-problem evaluation records, matched by seed.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from agents.models import load_lm
from envs import base as env_base
from envs.base import env_settings
from envs.code import dsl
from envs.code.tasks import pass_at_k
from rlhf.cache import cached, source_digest
from rlhf.preference import data as prefs
from rlhf.rollout.batch import collate
from rlhf.rollout.engine import SamplingParams
from rlhf.rollout.factory import make_engine
from rlhf.rollout.runner import EpisodeRunner
from rlhf.warmstart import encode_pairs

log = logging.getLogger("rlhf")
OUTCOMES = {1.0: "passed", -0.3: "failed", -0.6: "runtime_error", -1.0: "compile_error"}  # unit_tests reward -> class
ProgramScore = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (ids, attention, action mask) -> [N]


@dataclass
class Pool:
    """Rows (prompt ids, response ids ending with EOS, unit_tests reward)."""
    real: list[tuple[list[int], list[int], float]] = field(default_factory=list)  # ground-truth programs
    generated: list[tuple[list[int], list[int], float]] = field(default_factory=list)  # checkpoint samples
    stats: dict[str, float] = field(default_factory=dict)


def task_seeds(env, n: int, base: int) -> list[int]:
    """One reset seed for each of the first n tasks of the env's split (a train-split seed
    draws its task at random, so the seeds are searched from `base` up)."""
    wanted, seeds, seed = {t.task_id: i for i, t in enumerate(env.task_list[:n])}, [None] * min(n, len(env.task_list)), base
    while wanted:
        index = wanted.pop(env.task(seed).task_id, None)
        if index is not None:
            seeds[index] = seed
        seed += 1
    return seeds


def ground_truth(env, tasks) -> list[tuple[object, str]]:
    """(task, reference program) pairs: every canonical form of a DSL problem, else the
    task's canonical solution where it has one."""
    return [(t, s) for t in tasks for s in (dsl.solutions(*t.params) if t.params else [t.canonical_solution])
            if s is not None]


def code_pool(cfg, policy_dir: Path, env, tokenizer, problems: int, k: int, data_seed: int) -> Pool:
    """Ground-truth programs + k cached checkpoint samples for each of `problems` train problems."""
    tasks = env.task_list[:problems]
    pool, eos = Pool(), tokenizer.eos_token_id
    gt = ground_truth(env, tasks)
    rewards = [r["unit_tests"] for r, _ in env.score_many([t for t, _ in gt], [s for _, s in gt])]
    kept = [(t.prompt, s) for (t, s), r in zip(gt, rewards) if r == 1.0]
    pool.real = [(p, r, 1.0) for p, r in encode_pairs(tokenizer, kept)]
    spec = {"env": {"name": cfg.env.name, **env_settings(cfg.env)}, "policy": str(Path(policy_dir).resolve()),
            "k": k, "problems": problems, "seed": data_seed, "engine": str(cfg.rollout.name),
            "sampling": {key: cfg.rollout[key] for key in ("temperature", "top_p", "top_k", "max_new_tokens")},
            "sources": source_digest(["rlhf.code_eval", "rlhf.preference.data", "envs.code", "rlhf.rollout.engine",
                                      "rlhf.rollout.runner"])}

    def build(out: Path) -> None:
        policy = load_lm(policy_dir).eval()
        runner = EpisodeRunner(make_engine(cfg, policy, tokenizer, model_dir=str(policy_dir)), tokenizer,
                               SamplingParams.from_config(cfg.rollout), max_turns=1)
        make_env = lambda: env_base.make(str(cfg.env.name), split="train", **env_settings(cfg.env))  # noqa: E731
        with torch.random.fork_rng():
            torch.manual_seed(data_seed)
            lists = prefs.sample_lists(runner, make_env, task_seeds(env, problems, data_seed * 1_000_003), k,
                                       lambda ep: ep.env_reward("unit_tests"), log.info)
        (out / "lists.json").write_text(json.dumps(prefs.to_json(lists)))

    path = cached(cfg.cache_dir, "code_pool", spec, build, log.info) / "lists.json"
    truncated, counts = 0, dict.fromkeys(OUTCOMES.values(), 0)
    for row in prefs.from_json(json.loads(path.read_text())):
        for response, reward in zip(row.responses, row.scores):
            if not response or response[-1] != eos:  # cut off at max_new_tokens: never bootstrapped past
                truncated += 1
                continue
            counts[OUTCOMES.get(reward, "runtime_error")] += 1
            pool.generated.append((list(row.prompt_ids), list(response), float(reward)))
    n = max(1, len(pool.generated))
    pool.stats = {"data/real": float(len(pool.real)), "data/real_failed": float(len(gt) - len(kept)),
                  "data/generated": float(len(pool.generated)), "data/truncated": float(truncated),
                  **{f"data/{name}": count / n for name, count in counts.items()}}
    return pool


# --- evaluation ------------------------------------------------------------------------------------

def auroc(scores, labels) -> float:
    """P(score of a positive > score of a negative), ties counting 1/2 (Mann-Whitney U from
    average ranks); NaN without both classes."""
    s, y = np.asarray(scores, float), np.asarray(labels, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # 1-based, ties share their average rank
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def ranked_pass(passes: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Per problem: 1 if one of the k highest-scored samples passes (ties: lower index first)."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(passes, order, axis=1).max(1).astype(float)


@torch.no_grad()
def sampled_eval(cfg, policy, tokenizer, m: int, temperature: float, seed_offset: int,
                 score: ProgramScore | None = None, records: list | None = None, prefix: str = "sampled/") -> dict:
    """m programs per held-out problem at `temperature`: pass@k (k = 1, 2, 5, 10, ... <= m); with
    `score`, re-ranked pass@k, AUROC, mean score per outcome class, score-length correlation."""
    probe = env_base.make(str(cfg.env.name), split="eval", **env_settings(cfg.env))
    seeds = [seed_offset + i for i in range(min(int(cfg.eval.prompts), len(probe.task_list)))]
    runner = EpisodeRunner(make_engine(cfg, policy, tokenizer), tokenizer,
                           SamplingParams(temperature=temperature, max_new_tokens=int(cfg.rollout.max_new_tokens),
                                          stop_strings=tuple(cfg.rollout.stop_strings)),
                           max_turns=1, max_total_tokens=int(policy.config.max_position_embeddings))
    envs = [env_base.make(str(cfg.env.name), split="eval", **env_settings(cfg.env)) for _ in seeds for _ in range(m)]
    was_training = policy.training
    policy.eval()
    with torch.random.fork_rng():
        torch.manual_seed(int(cfg.seed) + seed_offset + 1)
        episodes = runner.run(envs, [s for s in seeds for _ in range(m)])
    policy.train(was_training)
    rewards = np.array([ep.env_reward("unit_tests") for ep in episodes]).reshape(len(seeds), m)
    passes = rewards == 1.0
    ks = [k for k in (1, 2, 5, 10, 20, 50, 100) if k <= m]
    metrics = {f"{prefix}pass@{k}": float(np.mean([pass_at_k(m, int(c), k) for c in passes.sum(1)])) for k in ks}
    rows = {}
    if score is not None:
        batch = collate(episodes, tokenizer.pad_token_id)
        scores = torch.cat([score(batch.input_ids[i:i + 256], batch.attention_mask[i:i + 256],
                                  batch.action_mask[i:i + 256]) for i in range(0, len(episodes), 256)])
        scores = scores.float().numpy().reshape(len(seeds), m)
        for k in ks:
            metrics[f"{prefix}ranked_pass@{k}"] = float(ranked_pass(passes, scores, k).mean())
        if 0 < passes.sum() < passes.size:  # both classes present
            metrics[f"{prefix}auroc"] = auroc(scores.ravel(), passes.ravel())
        for value, name in OUTCOMES.items():
            if (rewards == value).any():
                metrics[f"{prefix}score_{name}"] = float(scores[rewards == value].mean())
        lengths = batch.response_length.float().numpy()
        if lengths.std() > 0 and scores.std() > 0:
            metrics[f"{prefix}score_length_corr"] = float(np.corrcoef(scores.ravel(), lengths)[0, 1])
        rows = {s: {"ranked_pass": float(ranked_pass(passes[i:i + 1], scores[i:i + 1], 1)[0]),
                    "scores": [round(float(x), 5) for x in scores[i]]} for i, s in enumerate(seeds)}
    if records is not None:
        for i, s in enumerate(seeds):
            row = next((r for r in records if r.get("seed") == s), None)
            if row is None:
                row = {"seed": s}
                records.append(row)
            row[f"{prefix}rewards"] = rewards[i].tolist()
            row[f"{prefix}pass@1"] = pass_at_k(m, int(passes[i].sum()), 1)
            row.update({f"{prefix}{key}": value for key, value in rows.get(s, {}).items()})
    return metrics

