"""`algo=dno`: Direct Nash Optimization, the practical DNO-Prct (Rosset et al. 2024, Algorithm 2;
spec algorithms-a.md §2).

    pi_1 <- SFT policy
    for t = 1..T (each iteration on its own, non-overlapping partition of the train prompts):
      1. sample K responses per prompt from pi_t (temperature 0.7, top-p 0.95), plus one
         teacher response (the text grammar's best of 8 reviews for the prompt's topic);
      2. annotate the K+1 candidates with the preference oracle P: score = 1 + round(5 * mean
         win probability against the other candidates) in 1..6 (rank by pairwise win rate);
         degenerate samples (a repeated word 3-gram) score 1;
      3. pairs: positives score >= 5; negatives score >= 2 lower (>= 1 when the positive is a
         student sample); all such pairs (teacher>student, student>teacher, student>student);
         plus up to 30% / 15% / ... of the new pair count carried over from t-1, t-2, ...;
      4. contrastive step: one epoch of DPO with beta = eta and the reference pi_t (its
         log-probs recomputed for every pair, carried-over ones included); with
         algo.ref_mix_tau = tau > 0 (the regularized Algorithm 4) the reference is the
         geometric mixture pi_t^(1 - tau/eta) * pi_1^(tau/eta) instead;
      5. evaluate pi_{t+1}: exact expected win rate against pi_1 (and the teacher) under P on
         held-out prompts.
    return every iterate; `best_iteration` names the one with the highest held-out win rate.

The oracle is pluggable (envs/preference.py): `gold` (transitive) or `intransitive` (a
rock-paper-scissors cycle over review lengths on top of gold, which no Bradley-Terry reward
can represent). `algo.pairs=restrictive` builds only teacher>student pairs (DNO-Restrictive);
`algo.pairs=spin` makes the teacher the positive against every sample, no annotator (SPIN);
`algo.teacher=false` drops the teacher candidate (pairs among on-policy samples only).
Logged per iteration (x = t + 1, the iterate's index): dno/win_rate_vs_initial,
dno/win_rate_vs_teacher, dno/pairs, dno/pair_yield, dno/student_beats_teacher, dno/gold,
dno/words, dno/class_{brief,standard,long}, and dpo/* of the update.
"""
from __future__ import annotations

import logging
import math
import random
from pathlib import Path

import numpy as np
import torch

from agents.models import frozen_copy, load_lm, load_tokenizer, save_lm
from rlhf.warmstart import warm_start_policy
from envs import base as env_base
from envs.preference import LENGTH_CLASSES, Features, PreferenceOracle, oracle_from_config
from envs.text import corpus
from envs.text.gold import gold_components
from rlhf import checkpoint as ckpt
from rlhf.algos.dpo import Settings, make_adam, reference_logps, train_pairs
from envs.base import env_settings
from rlhf.evaluation import EVAL_SEED_OFFSET
from rlhf.harness import save_eval
from rlhf.logger import Logger
from rlhf.preference.data import Pair
from rlhf.rollout.engine import HFEngine, SamplingParams
from rlhf.rollout.runner import EpisodeRunner

log = logging.getLogger("rlhf")
PAIR_MODES = ("all", "restrictive", "spin")


# --- prompts, sampling, the teacher ---------------------------------------------------------

def partition_seeds(env, iteration: int, per_iteration: int) -> list[int]:
    """Seeds whose prompts are the train prompts [t * n, (t + 1) * n): partitions never overlap.
    (The env draws its prompt from the seed; we search the first seed for each prompt.)"""
    wanted = range(iteration * per_iteration, (iteration + 1) * per_iteration)
    n, found, seed = len(env.prompts), {}, 0
    while len(found) < len(wanted):
        index = random.Random(seed).randrange(n)
        if index in wanted and index not in found:
            found[index] = seed
        seed += 1
    return [found[i] for i in wanted]


def sample(runner, cfg, seeds: list[int], k: int, split: str):
    """k responses per seed: (prompt ids, [response ids], [texts]) per seed."""
    repeated = [s for s in seeds for _ in range(k)]
    envs = [env_base.make(str(cfg.env.name), split=split, **env_settings(cfg.env)) for _ in repeated]
    episodes = runner.run(envs, repeated)
    groups = [episodes[i * k:(i + 1) * k] for i in range(len(seeds))]
    return [(g[0].token_ids[:g[0].prompt_len], [ep.token_ids[ep.prompt_len:] for ep in g],
             [ep.action_texts[-1] for ep in g]) for g in groups]


def teacher_response(prompt: str, rng: random.Random, draws: int = 8) -> str:
    """The scripted teacher (the paper's GPT-4 outputs): the best-by-gold of `draws` reviews the
    text grammar writes for the prompt's topic."""
    options = [" " + corpus.review(rng, corpus.topic_of(prompt)) for _ in range(draws)]
    return max(options, key=lambda text: gold_components(text)["gold"])


def degenerate(text: str, n: int = 3) -> bool:
    """The defect detector: a repeated word n-gram."""
    ws = corpus.words(text)
    grams = [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]
    return len(grams) != len(set(grams))


# --- annotation and pairs -----------------------------------------------------------------------

def annotate(oracle: PreferenceOracle, texts: list[str]) -> list[int]:
    """Scores 1..6 from the mean win probability against the other candidates."""
    feats = [oracle.features(t) for t in texts]
    wins = oracle.prob(feats, feats)
    mean_win = (wins.sum(1) - 0.5) / (len(texts) - 1)  # drop the diagonal's P(y > y) = 1/2
    scores = [1 + int(math.floor(5 * w + 0.5)) for w in mean_win]
    return [1 if degenerate(t) else s for t, s in zip(texts, scores)]


def build_pairs(scores: list[int], is_teacher: list[bool], texts: list[str], mode: str,
                positive_min: int = 5, margin: int = 2, student_margin: int = 1) -> list[tuple[int, int]]:
    """(positive, negative) candidate indices by the rules of spec §2.3."""
    if mode == "spin":
        teacher = is_teacher.index(True)
        return [(teacher, j) for j in range(len(texts)) if not is_teacher[j] and texts[j] != texts[teacher]]
    pairs = []
    for i, s in enumerate(scores):
        if s < positive_min:
            continue
        need = margin if is_teacher[i] else student_margin
        for j, t in enumerate(scores):
            if j == i or s - t < need or texts[i] == texts[j]:
                continue
            if mode == "restrictive" and not (is_teacher[i] and not is_teacher[j]):
                continue
            pairs.append((i, j))
    return pairs


def carried_pairs(history: list[list[Pair]], n_new: int, fraction: float, decay: float, rng: random.Random) -> list[Pair]:
    """Up to fraction * n_new pairs from t-1, fraction * decay * n_new from t-2, ..."""
    carried = []
    for age, old in enumerate(reversed(history)):
        take = min(len(old), int(fraction * decay ** age * n_new))
        carried += rng.sample(old, take)
    return carried


# --- evaluation -----------------------------------------------------------------------------------

def win_rate(oracle: PreferenceOracle, a: list[list[Features]], b: list[list[Features]]) -> float:
    """Exact expected P(y_a > y_b) over prompts and all sample pairs of the same prompt."""
    return float(np.mean([oracle.prob(fa, fb).mean() for fa, fb in zip(a, b)]))


@torch.no_grad()
def heldout_features(cfg, policy, tokenizer, oracle: PreferenceOracle) -> tuple[list[list[Features]], list[list[str]]]:
    """Features of algo.eval_samples responses on each of algo.eval_prompts held-out prompts,
    with a fixed sampling seed (the training RNG is untouched)."""
    runner = runner_for(cfg, policy, tokenizer)
    seeds = [EVAL_SEED_OFFSET + i for i in range(int(cfg.algo.eval_prompts))]
    policy.eval()
    with torch.random.fork_rng():
        torch.manual_seed(int(cfg.seed) + EVAL_SEED_OFFSET)
        groups = sample(runner, cfg, seeds, int(cfg.algo.eval_samples), "eval")
    policy.train()
    texts = [g[2] for g in groups]
    return [[oracle.features(t) for t in ts] for ts in texts], texts


def teacher_features(cfg, oracle: PreferenceOracle) -> list[list[Features]]:
    env = env_base.make(str(cfg.env.name), split="eval", **env_settings(cfg.env))
    rng = random.Random(int(cfg.seed))
    return [[oracle.features(teacher_response(env.reset(EVAL_SEED_OFFSET + i), rng))]
            for i in range(int(cfg.algo.eval_prompts))]


def iterate_metrics(oracle, feats, texts, initial, teacher) -> dict[str, float]:
    flat = [f for fs in feats for f in fs]
    metrics = {"dno/win_rate_vs_initial": win_rate(oracle, feats, initial),
               "dno/win_rate_vs_teacher": win_rate(oracle, feats, teacher),
               "dno/gold": float(np.mean([f.gold for f in flat])),
               "dno/words": float(np.mean([len(corpus.words(t)) for ts in texts for t in ts]))}
    for c, name in enumerate(LENGTH_CLASSES):
        metrics[f"dno/class_{name}"] = float(np.mean([f.length_class == c for f in flat]))
    return metrics


def runner_for(cfg, policy, tokenizer) -> EpisodeRunner:
    sampling = SamplingParams(temperature=float(cfg.algo.temperature), top_p=float(cfg.algo.top_p),
                              max_new_tokens=int(cfg.rollout.max_new_tokens), stop_strings=tuple(cfg.rollout.stop_strings))
    return EpisodeRunner(HFEngine(policy, tokenizer, int(cfg.rollout.max_batch_size)), tokenizer, sampling,
                         max_turns=int(cfg.env.max_turns))


# --- one iteration ---------------------------------------------------------------------------------

def collect_pairs(cfg, runner, tokenizer, oracle, env, seeds, rng) -> tuple[list[Pair], dict[str, float]]:
    """Steps 1-4 of an iteration: sample, add the teacher, annotate, build pairs."""
    pairs, prompts_with_pairs, student_wins = [], 0, 0
    eos = tokenizer.eos_token_id
    for (prompt_ids, responses, texts), seed in zip(sample(runner, cfg, seeds, int(cfg.algo.samples_per_prompt), "train"), seeds):
        is_teacher = [False] * len(texts)
        if bool(cfg.algo.teacher):  # the off-policy candidate K+1 (the paper's GPT-4 output)
            teacher = teacher_response(env.reset(seed), rng)
            texts = texts + [teacher]
            responses = responses + [tokenizer(teacher, add_special_tokens=False)["input_ids"] + [eos]]
            is_teacher.append(True)
        scores = annotate(oracle, texts)
        chosen = build_pairs(scores, is_teacher, texts, str(cfg.algo.pairs), int(cfg.algo.positive_min_score),
                             int(cfg.algo.margin), int(cfg.algo.student_margin))
        prompts_with_pairs += bool(chosen)
        student_wins += sum(1 for i, j in chosen if not is_teacher[i] and is_teacher[j])
        pairs += [Pair(prompt_ids, responses[i], responses[j], float(scores[i] - scores[j])) for i, j in chosen]
    return pairs, {"dno/pairs": float(len(pairs)), "dno/pair_yield": prompts_with_pairs / len(seeds),
                   "dno/student_beats_teacher": student_wins / max(len(pairs), 1)}


def mixture_weight(cfg) -> float:
    """tau / eta of Algorithm 4: the weight of pi_1 in the reference (0 = Algorithm 2)."""
    tau, eta = float(cfg.algo.ref_mix_tau), float(cfg.algo.eta)
    if not 0.0 <= tau <= eta:
        raise ValueError(f"algo.ref_mix_tau={tau} must lie in [0, algo.eta={eta}]: the reference "
                         f"pi_t^(1 - tau/eta) * pi_1^(tau/eta) needs 0 <= tau/eta <= 1 (0 = Algorithm 2)")
    return tau / eta


def mixed_reference_logps(logp_now: torch.Tensor, logp_initial: torch.Tensor, weight: float) -> torch.Tensor:
    """Sequence log-prob of the geometric mixture pi_t^(1-w) * pi_1^w, up to its normalizer
    log Z(x): Z depends on the prompt only, so it cancels in the DPO margin of a pair."""
    return (1.0 - weight) * logp_now + weight * logp_initial


def contrastive_step(cfg, policy, pairs: list[Pair], pad_id: int, rng: random.Random,
                     initial=None) -> dict[str, float]:
    """Step 5: DPO against the reference pi_t (a snapshot of the policy now), or against its
    geometric mixture with the initial policy `initial` (Algorithm 4, algo.ref_mix_tau > 0)."""
    if not pairs:
        log.warning("[dno] no pairs this iteration: the policy is unchanged")
        return {}
    ref = frozen_copy(policy)
    ref_chosen, ref_rejected = reference_logps(ref, pairs, pad_id)
    weight = mixture_weight(cfg)
    if weight > 0:
        initial_chosen, initial_rejected = reference_logps(initial, pairs, pad_id)
        ref_chosen = mixed_reference_logps(ref_chosen, initial_chosen, weight)
        ref_rejected = mixed_reference_logps(ref_rejected, initial_rejected, weight)
    nll = float(cfg.algo.nll_alpha)
    update_cfg = {"loss": "rpo" if nll > 0 else "dpo", "beta": float(cfg.algo.eta), "label_smoothing": 0.0,
                  "sft_weight": nll, "sft_reduction": "sum", "batch_size": int(cfg.algo.batch_size),
                  "max_grad_norm": float(cfg.algo.max_grad_norm)}
    optimizer = make_adam(policy, cfg.algo)  # a fresh optimizer per iteration (the paper lowers lr later)
    metrics = {}
    for _ in range(int(cfg.algo.epochs)):
        metrics = train_pairs(policy, ref, optimizer, pairs, ref_chosen, ref_rejected, Settings(update_cfg), pad_id, rng)
    return metrics


# --- entry points ----------------------------------------------------------------------------------

def train(cfg, run_dir: Path) -> dict:
    anchored = mixture_weight(cfg) > 0  # checks algo.ref_mix_tau before the warm start's minutes
    env = env_base.make(str(cfg.env.name), split="train", **env_settings(cfg.env))
    policy_dir = warm_start_policy(cfg, env, log.info)
    tokenizer = load_tokenizer(policy_dir)
    oracle = oracle_from_config(cfg.algo)
    iterations, per_iteration = int(cfg.algo.iterations), int(cfg.algo.prompts_per_iteration)
    if iterations * per_iteration > len(env.prompts):
        raise ValueError(f"algo.iterations * algo.prompts_per_iteration = {iterations * per_iteration} exceeds the "
                         f"{len(env.prompts)} train prompts: partitions must not overlap")
    torch.manual_seed(int(cfg.seed))
    policy = load_lm(policy_dir)
    pi_1 = frozen_copy(policy) if anchored else None  # Algorithm 4's anchor
    initial, names = heldout_features(cfg, policy, tokenizer, oracle)
    teacher = teacher_features(cfg, oracle)
    state = {"iteration": 0, "history": [], "rng": random.Random(int(cfg.seed)), "results": []}
    if cfg.train.resume:
        restore(cfg, run_dir, policy, state)
    logger = Logger(run_dir, iterations + 1, 1, first_step=state["iteration"] + 1)
    if state["iteration"] == 0:
        first = iterate_metrics(oracle, initial, names, initial, teacher)
        logger.log(1, first)
        state["results"].append(first)
    runner = runner_for(cfg, policy, tokenizer)
    for t in range(state["iteration"], iterations):
        seeds = partition_seeds(env, t, per_iteration)
        pairs, metrics = collect_pairs(cfg, runner, tokenizer, oracle, env, seeds, state["rng"])
        old = carried_pairs(state["history"], len(pairs), float(cfg.algo.old_pair_fraction),
                            float(cfg.algo.old_pair_decay), state["rng"])
        metrics.update(contrastive_step(cfg, policy, pairs + old, tokenizer.pad_token_id, state["rng"], pi_1))
        feats, texts = heldout_features(cfg, policy, tokenizer, oracle)
        metrics.update(iterate_metrics(oracle, feats, texts, initial, teacher))
        metrics["dno/carried_pairs"] = float(len(old))
        state["history"].append(pairs)
        state["iteration"] = t + 1
        state["results"].append(metrics)
        logger.log(t + 2, metrics)
        log.info(f"[dno] iterate {t + 2}: win rate vs pi_1 {metrics['dno/win_rate_vs_initial']:.3f}, "
                 f"vs teacher {metrics['dno/win_rate_vs_teacher']:.3f}, {len(pairs)} new + {len(old)} old pairs, "
                 f"student>teacher {metrics['dno/student_beats_teacher']:.2f}, words {metrics['dno/words']:.1f}")
        save(cfg, run_dir, policy, state, policy_dir, tokenizer)
    logger.close()
    curve = [r["dno/win_rate_vs_initial"] for r in state["results"]]
    final = {**state["results"][-1], "best_iteration": float(int(np.argmax(curve)) + 1)}
    save_eval(run_dir, iterations + 1, final)
    return final


def save(cfg, run_dir, policy, state: dict, policy_dir, tokenizer) -> None:
    from omegaconf import OmegaConf

    payload = {"step": state["iteration"] + 1, "iteration": state["iteration"],
               "config": OmegaConf.to_container(cfg, resolve=True), "policy_dir": str(policy_dir),
               "history": [[vars(p) for p in pairs] for pairs in state["history"]], "results": state["results"],
               "python_rng": state["rng"].getstate(), "torch_rng": torch.get_rng_state()}
    keep = max(int(cfg.train.keep_checkpoints), int(cfg.algo.iterations) + 1)  # every iterate stays selectable
    ckpt.save_checkpoint(run_dir, state["iteration"] + 1, payload, {"policy": policy}, keep,
                         write_extra=lambda tmp: save_lm(policy, tokenizer, tmp / "hf"))


def restore(cfg, run_dir, policy, state: dict) -> None:
    path = ckpt.resolve_resume(cfg.train.resume, run_dir, run_dir.parent)
    payload, modules = ckpt.load_checkpoint(path)
    policy.load_state_dict(modules["policy"])
    state["iteration"], state["results"] = int(payload["iteration"]), payload["results"]
    state["history"] = [[Pair(**p) for p in pairs] for pairs in payload["history"]]
    state["rng"].setstate(payload["python_rng"])
    torch.set_rng_state(payload["torch_rng"])
    log.info(f"[dno] resumed from {path} (iteration {state['iteration']})")


def load_policy(run_or_checkpoint: str):
    """The policy of any LM run (its latest checkpoint's HF copy) or of a checkpoint dir."""
    path = Path(str(run_or_checkpoint))
    checkpoint = ckpt.resolve_resume(str(path), path, path.parent)
    return load_lm(checkpoint / "hf")


def evaluate(cfg, checkpoint: Path, run_dir: Path) -> dict[str, float]:
    """`python -m rlhf.evaluate run=<dno run> [algo.opponent=<any LM run>]`: held-out win rates
    of the checkpoint's policy against the SFT policy and the teacher, under the run's oracle;
    with an opponent (e.g. a PPO run) also the head-to-head win rate against it and the
    opponent's own win rate against the SFT policy."""
    payload, modules = ckpt.load_checkpoint(checkpoint)
    policy_dir = Path(payload["policy_dir"])
    tokenizer, initial_policy, policy = load_tokenizer(policy_dir), load_lm(policy_dir), load_lm(policy_dir)
    policy.load_state_dict(modules["policy"])
    oracle = oracle_from_config(cfg.algo)
    initial, _ = heldout_features(cfg, initial_policy, tokenizer, oracle)
    feats, texts = heldout_features(cfg, policy, tokenizer, oracle)
    teacher = teacher_features(cfg, oracle)
    metrics = iterate_metrics(oracle, feats, texts, initial, teacher)
    if cfg.algo.get("opponent"):
        opponent, opponent_texts = heldout_features(cfg, load_policy(cfg.algo.opponent), tokenizer, oracle)
        metrics["dno/win_rate_vs_opponent"] = win_rate(oracle, feats, opponent)
        for key, value in iterate_metrics(oracle, opponent, opponent_texts, initial, teacher).items():
            metrics[key.replace("dno/", "opponent/")] = value
    return metrics
