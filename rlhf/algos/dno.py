"""`algo=dno`: Direct Nash Optimization, the practical DNO-Prct (Rosset et al. 2024, "Direct
Nash Optimization: Teaching Language Models to Self-Improve with General Preferences",
Algorithm 2; the regularized reference of Algorithm 4 with algo.ref_mix_tau > 0).

    pi_1 <- SFT policy
    for t = 1..T (each iteration on its own, non-overlapping partition of the train prompts):
      1. sample K responses per prompt from pi_t (temperature 0.7, top-p 0.95), plus one
         teacher response (the text grammar's best of 8 reviews for the prompt's topic,
         envs/text/teacher.py, standing in for the paper's GPT-4 outputs);
      2. annotate the K+1 candidates with the preference oracle P: score = 1 + round(5 * mean
         win probability against the other candidates) in 1..6 (rank by pairwise win rate);
         degenerate samples (a repeated word 3-gram) score 1;
      3. pairs: positives score >= 5; negatives score >= 2 lower (>= 1 when the
         positive is a student sample); all such pairs (teacher>student, student>teacher,
         student>student); plus up to 30% / 15% / ... of the new pair count carried over
         from t-1, t-2, ...;
      4. contrastive step: one epoch of DPO with beta = eta and the reference pi_t (its
         log-probs recomputed for every pair, carried-over ones included); with
         algo.ref_mix_tau = tau > 0 the reference is the geometric mixture
         pi_t^(1 - tau/eta) * pi_1^(tau/eta) instead (Algorithm 4);
      5. evaluate pi_{t+1}: exact expected win rate against pi_1 (and the teacher) under P on
         held-out prompts.
    return every iterate; `best_iteration` names the one with the highest held-out win rate.

The oracle is pluggable (envs/preference.py): `gold` (transitive) or `intransitive` (a
rock-paper-scissors cycle over review lengths on top of gold, which no Bradley-Terry reward
can represent). `algo.pairs=restrictive` builds only teacher>student pairs (the paper's DNO-Restrictive);
`algo.pairs=spin` makes the teacher the positive against every sample, no annotator (SPIN,
Chen et al. 2024); `algo.teacher=false` drops the teacher.

One harness step is one iteration. Logged per iterate pi_k at x = k (pi_1, the SFT policy,
at x = 1; iteration t's result pi_{t+1} at x = t + 1): dno/win_rate_vs_initial,
dno/win_rate_vs_teacher, dno/gold, dno/words, dno/class_{brief,standard,long}; and from
x = 2 on also dno/pairs, dno/pair_yield, dno/student_beats_teacher, dno/carried_pairs and
dpo/* of the update. Checkpoint t holds pi_{t+1}; eval/samples_step_<t>.jsonl its held-out
samples, one per line with its win rates against pi_1 and the teacher on the same prompt
(for paired comparisons prompt by prompt).
"""
from __future__ import annotations

import logging
import math
import random
from pathlib import Path

import numpy as np
import torch

from agents.models import frozen_copy, load_lm, load_tokenizer, save_lm
from envs import base as env_base
from envs.base import env_settings
from envs.preference import PreferenceOracle, oracle_from_config
from envs.text.teacher import degenerate, teacher_response
from rlhf import checkpoint as ckpt
from rlhf.config import ConfigError
from rlhf.evaluation import EVAL_SEED_OFFSET
from rlhf.harness import Job, save_samples
from rlhf.preference.data import Pair
from rlhf.preference.train import Settings, make_adam, reference_logps, train_pairs
from rlhf.preference.winrate import heldout_features, iterate_metrics, load_policy, sample, teacher_features, win_rate
from rlhf.rollout.engine import SamplingParams
from rlhf.rollout.factory import make_engine
from rlhf.rollout.runner import EpisodeRunner
from rlhf.warmstart import warm_start_policy

log = logging.getLogger("rlhf")


# --- prompts and sampling -------------------------------------------------------------------------

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


def make_runner(cfg, engine, tokenizer) -> EpisodeRunner:
    """Samples at the paper's temperature 0.7 / top-p 0.95 (algo.temperature, algo.top_p)."""
    sampling = SamplingParams(temperature=float(cfg.algo.temperature), top_p=float(cfg.algo.top_p),
                              max_new_tokens=int(cfg.rollout.max_new_tokens), stop_strings=tuple(cfg.rollout.stop_strings))
    return EpisodeRunner(engine, tokenizer, sampling, max_turns=int(cfg.env.max_turns))


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
    """(positive, negative) candidate indices by the pair rules of step 3."""
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


def collect_pairs(cfg, runner, tokenizer, oracle, env, seeds, rng) -> tuple[list[Pair], dict[str, float]]:
    """Steps 1-3 of an iteration: sample, add the teacher, annotate, build pairs."""
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


# --- the contrastive step -------------------------------------------------------------------------

def mixture_weight(cfg) -> float:
    """tau / eta of Algorithm 4: the weight of pi_1 in the reference (0 = Algorithm 2)."""
    return float(cfg.algo.ref_mix_tau) / float(cfg.algo.eta)


def mixed_reference_logps(logp_now: torch.Tensor, logp_initial: torch.Tensor, weight: float) -> torch.Tensor:
    """Sequence log-prob of the geometric mixture pi_t^(1-w) * pi_1^w, up to its normalizer
    log Z(x): Z depends on the prompt only, so it cancels in the DPO margin of a pair."""
    return (1.0 - weight) * logp_now + weight * logp_initial


def contrastive_step(cfg, policy, pairs: list[Pair], pad_id: int, rng: random.Random,
                     initial=None) -> dict[str, float]:
    """Step 4: DPO against the reference pi_t (a snapshot of the policy now), or against its
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


def heldout_rows(oracle, feats, texts, against: dict) -> list[dict]:
    """One row per held-out sample: its prompt's eval seed, its text and, for each name in
    `against`, its mean win probability over that policy's samples of the same prompt (the mean
    over a prompt's rows is the prompt's win rate; over all rows, dno/win_rate_vs_<name>)."""
    return [{"seed": EVAL_SEED_OFFSET + i, "response": text,
             **{f"win_rate_vs_{name}": float(oracle.prob([f], other[i]).mean()) for name, other in against.items()}}
            for i, (fs, ts) in enumerate(zip(feats, texts)) for f, text in zip(fs, ts)]


# --- the run ----------------------------------------------------------------------------------------

class DNO(Job):
    """One step = one iteration t of Algorithm 2: pi_t -> pi_{t+1}."""

    unit = "iteration"

    @classmethod
    def check(cls, cfg) -> None:
        a = cfg.algo
        if not bool(a.teacher) and a.pairs != "all":
            raise ConfigError(f"algo.pairs={a.pairs} pairs the teacher with student samples, but algo.teacher=false; "
                              "valid choices: algo.teacher=true, or algo.pairs=all")
        tau, eta = float(a.ref_mix_tau), float(a.eta)
        if not 0.0 <= tau <= eta:
            raise ConfigError(f"algo.ref_mix_tau={tau} must lie in [0, algo.eta={eta}]: the reference "
                              f"pi_t^(1 - tau/eta) * pi_1^(tau/eta) needs 0 <= tau/eta <= 1 (0 = Algorithm 2)")
        n_train = len(env_base.make(str(cfg.env.name), split="train", **env_settings(cfg.env)).prompts)
        needed = int(a.iterations) * int(a.prompts_per_iteration)
        if needed > n_train:
            raise ConfigError(f"algo.iterations * algo.prompts_per_iteration = {needed} exceeds the {n_train} "
                              "train prompts: partitions must not overlap")

    def __init__(self, cfg, run_dir):
        super().__init__(cfg, run_dir)
        self.total = int(cfg.algo.iterations)
        self.env = env_base.make(str(cfg.env.name), split="train", **env_settings(cfg.env))
        self.policy_dir = warm_start_policy(cfg, self.env, log.info)
        self.tokenizer = load_tokenizer(self.policy_dir)
        self.oracle = oracle_from_config(cfg.algo)
        torch.manual_seed(int(cfg.seed))
        self.policy = load_lm(self.policy_dir)
        self.pi_1 = frozen_copy(self.policy) if mixture_weight(cfg) > 0 else None  # Algorithm 4's anchor
        # one engine for every iterate: it holds pi_t (rollout=hf shares the module; others are synced)
        self.engine = make_engine(cfg, self.policy, self.tokenizer, model_dir=str(self.policy_dir))
        self.runner = make_runner(cfg, self.engine, self.tokenizer)
        self.initial, self.initial_texts = self.heldout()
        self.teacher = teacher_features(cfg, self.oracle)
        self.results = [iterate_metrics(self.oracle, self.initial, self.initial_texts, self.initial, self.teacher)]
        self.history: list[list[Pair]] = []
        self.rng = random.Random(int(cfg.seed))  # teacher drafts, carried-over pairs, pair order

    def heldout(self):
        self.policy.eval()
        out = heldout_features(self.cfg, self.runner, self.oracle)
        self.policy.train()
        return out

    def save_heldout(self, t: int, feats, texts) -> None:
        """eval/samples_step_<t>.jsonl: pi_{t+1}'s held-out samples and their win rates."""
        save_samples(self.run_dir, t, heldout_rows(self.oracle, feats, texts,
                                                   {"initial": self.initial, "teacher": self.teacher}))

    def step(self) -> dict[str, float]:
        t, a = self.steps_done, self.cfg.algo
        if t == 0:
            self.logger.scalars("", self.results[0], 1)  # pi_1 itself
            self.save_heldout(0, self.initial, self.initial_texts)
        seeds = partition_seeds(self.env, t, int(a.prompts_per_iteration))
        pairs, metrics = collect_pairs(self.cfg, self.runner, self.tokenizer, self.oracle, self.env, seeds, self.rng)
        old = carried_pairs(self.history, len(pairs), float(a.old_pair_fraction), float(a.old_pair_decay), self.rng)
        metrics.update(contrastive_step(self.cfg, self.policy, pairs + old, self.tokenizer.pad_token_id, self.rng,
                                        self.pi_1))
        self.engine.load_weights(self.policy.named_parameters(), version=t + 1)
        feats, texts = self.heldout()
        metrics.update(iterate_metrics(self.oracle, feats, texts, self.initial, self.teacher))
        self.save_heldout(t + 1, feats, texts)
        metrics["dno/carried_pairs"] = float(len(old))
        self.history.append(pairs)
        self.results.append(metrics)
        log.info(f"[dno] iterate {t + 2}: win rate vs pi_1 {metrics['dno/win_rate_vs_initial']:.3f}, "
                 f"vs teacher {metrics['dno/win_rate_vs_teacher']:.3f}, {len(pairs)} new + {len(old)} old pairs, "
                 f"student>teacher {metrics['dno/student_beats_teacher']:.2f}, words {metrics['dno/words']:.1f}")
        return metrics

    def log_x(self) -> int:
        return self.steps_done + 1  # the index k of the iterate pi_k just evaluated

    def evaluate(self) -> dict[str, float]:
        """The last iterate's held-out metrics and the index of the best iterate."""
        curve = [r["dno/win_rate_vs_initial"] for r in self.results]
        return {**self.results[-1], "best_iteration": float(int(np.argmax(curve)) + 1)}

    @property
    def eval_every(self) -> int:
        return 0  # every iteration evaluates its iterate (step 5)

    @property
    def checkpoint_every(self) -> int:
        return 1

    @property
    def keep_checkpoints(self) -> int:
        """Every iterate stays selectable (best_iteration names one): keep all T checkpoints."""
        return max(int(self.cfg.train.keep_checkpoints), self.total)

    def modules(self):
        return {"policy": self.policy}

    def generators(self):
        return {"dno": self.rng}

    def state_dict(self) -> dict:
        return {"history": [[vars(p) for p in pairs] for pairs in self.history], "results": self.results,
                "policy_dir": str(self.policy_dir)}

    def load_state_dict(self, state: dict) -> None:
        self.history = [[Pair(**p) for p in pairs] for pairs in state["history"]]
        self.results = list(state["results"])
        self.engine.load_weights(self.policy.named_parameters(), version=len(self.history))

    def write_extra(self, checkpoint_dir: Path) -> None:
        save_lm(self.policy, self.tokenizer, checkpoint_dir / "hf")


def evaluate(cfg, checkpoint: Path, run_dir: Path, records: list | None = None) -> dict[str, float]:
    """`python -m rlhf.evaluate run=<dno run> [algo.opponent=<any LM run>]`: held-out win rates
    of the checkpoint's policy against the SFT policy and the teacher, under the run's oracle;
    with an opponent (e.g. a PPO run) also the head-to-head win rate against it and the
    opponent's own win rate against the SFT policy. One engine samples each policy in turn.
    `records` receives the checkpoint's held-out samples (heldout_rows, eval/samples_step_<N>.jsonl)."""
    payload, modules = ckpt.load_checkpoint(checkpoint)
    policy_dir = Path(payload["policy_dir"])
    tokenizer, initial_policy, policy = load_tokenizer(policy_dir), load_lm(policy_dir), load_lm(policy_dir)
    policy.load_state_dict(modules["policy"])
    oracle = oracle_from_config(cfg.algo)
    holder = frozen_copy(initial_policy)  # the engine's own module: each policy's weights are loaded into it
    runner = make_runner(cfg, make_engine(cfg, holder, tokenizer, model_dir=str(policy_dir)), tokenizer)

    def features(model, version: int):
        runner.engine.load_weights(model.named_parameters(), version)
        return heldout_features(cfg, runner, oracle)

    initial, _ = features(initial_policy, 0)
    feats, texts = features(policy, 1)
    teacher = teacher_features(cfg, oracle)
    metrics = iterate_metrics(oracle, feats, texts, initial, teacher)
    against = {"initial": initial, "teacher": teacher}
    if cfg.algo.get("opponent"):
        opponent, opponent_texts = features(load_policy(cfg.algo.opponent), 2)
        against["opponent"] = opponent
        metrics["dno/win_rate_vs_opponent"] = win_rate(oracle, feats, opponent)
        for key, value in iterate_metrics(oracle, opponent, opponent_texts, initial, teacher).items():
            metrics[key.replace("dno/", "opponent/")] = value
    if records is not None:
        records += heldout_rows(oracle, feats, texts, against)
    return metrics
