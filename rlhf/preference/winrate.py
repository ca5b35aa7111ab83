"""Win rates under a preference oracle (envs/preference.py), the evaluation of DNO (Rosset et
al. 2024: win rates against the initial policy and against the teacher, GPT-4 in the paper) and
of any head-to-head between two LM policies on the text task.

The oracle gives exact probabilities, so a win rate is the exact expected P(y_a > y_b) over
held-out prompts and every pair of samples of the same prompt: no judge noise.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from agents.models import load_lm
from envs import base as env_base
from envs.base import env_settings
from envs.preference import LENGTH_CLASSES, Features, PreferenceOracle
from envs.text import corpus
from envs.text.teacher import teacher_response
from rlhf import checkpoint as ckpt
from rlhf.evaluation import EVAL_SEED_OFFSET


def sample(runner, cfg, seeds: list[int], k: int, split: str):
    """k responses per seed: (prompt ids, [response ids], [texts]) per seed."""
    repeated = [s for s in seeds for _ in range(k)]
    envs = [env_base.make(str(cfg.env.name), split=split, **env_settings(cfg.env)) for _ in repeated]
    episodes = runner.run(envs, repeated)
    groups = [episodes[i * k:(i + 1) * k] for i in range(len(seeds))]
    return [(g[0].token_ids[:g[0].prompt_len], [ep.token_ids[ep.prompt_len:] for ep in g],
             [ep.action_texts[-1] for ep in g]) for g in groups]


def win_rate(oracle: PreferenceOracle, a: list[list[Features]], b: list[list[Features]]) -> float:
    """Exact expected P(y_a > y_b) over prompts and all sample pairs of the same prompt."""
    return float(np.mean([oracle.prob(fa, fb).mean() for fa, fb in zip(a, b)]))


@torch.no_grad()
def heldout_features(cfg, runner, oracle: PreferenceOracle) -> tuple[list[list[Features]], list[list[str]]]:
    """Features of algo.eval_samples responses on each of algo.eval_prompts held-out prompts
    from the policy that `runner`'s engine holds, with a fixed sampling seed (the training
    RNG is untouched)."""
    seeds = [EVAL_SEED_OFFSET + i for i in range(int(cfg.algo.eval_prompts))]
    with torch.random.fork_rng():
        torch.manual_seed(int(cfg.seed) + EVAL_SEED_OFFSET)
        groups = sample(runner, cfg, seeds, int(cfg.algo.eval_samples), "eval")
    texts = [g[2] for g in groups]
    return [[oracle.features(t) for t in ts] for ts in texts], texts


def teacher_features(cfg, oracle: PreferenceOracle) -> list[list[Features]]:
    """The scripted teacher's response (envs/text/teacher.py) on each held-out prompt."""
    env = env_base.make(str(cfg.env.name), split="eval", **env_settings(cfg.env))
    rng = random.Random(int(cfg.seed))
    return [[oracle.features(teacher_response(env.reset(EVAL_SEED_OFFSET + i), rng))]
            for i in range(int(cfg.algo.eval_prompts))]


def iterate_metrics(oracle, feats, texts, initial, teacher) -> dict[str, float]:
    """Win rates of a policy's held-out samples against the initial policy's and the teacher's,
    their gold score, length in words and length-class shares."""
    flat = [f for fs in feats for f in fs]
    metrics = {"dno/win_rate_vs_initial": win_rate(oracle, feats, initial),
               "dno/win_rate_vs_teacher": win_rate(oracle, feats, teacher),
               "dno/gold": float(np.mean([f.gold for f in flat])),
               "dno/words": float(np.mean([len(corpus.words(t)) for ts in texts for t in ts]))}
    for c, name in enumerate(LENGTH_CLASSES):
        metrics[f"dno/class_{name}"] = float(np.mean([f.length_class == c for f in flat]))
    return metrics


def load_policy(run_or_checkpoint: str):
    """The policy of any LM run (its latest checkpoint's HF copy) or of a checkpoint dir."""
    path = Path(str(run_or_checkpoint))
    return load_lm(ckpt.resolve_resume(str(path), path) / "hf")
