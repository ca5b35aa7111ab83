"""Proxy reward models (built and cached for `reward=rm|ensemble`; `algo=rm` builds them alone) trained with the Bradley-Terry loss (after
Gao et al.): pairs of responses sampled from the SFT policy for the same prompt, labelled
by the environment's gold scorer (label flipped with probability env.label_noise), and
a transformer + scalar head fitted to -log sigma(r_chosen - r_rejected). With
`reward.labels=intransitive` the labels come from a preference oracle instead (DNO's
baseline: a Bradley-Terry model fitted to preferences it cannot represent).

The preference data depends on `reward.data_seed` only; each reward model (an ensemble
member) on `reward.seed` + its index (head init and data order). So the k members of an
ensemble (reward=ensemble, Coste et al.) see the same, equally noisy labels, and the single
RM of `reward=rm reward.seed=s` is member 0 of the ensemble that starts at seed s. Data and
models are cached like the SFT warm start.
"""
from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel

from agents.models import ValueModel, load_lm, load_tokenizer, pad_right
from envs.base import env_settings
from envs import base as env_base
from envs.preference import PreferenceOracle
from rlhf.cache import cached, source_digest
from rlhf.functional import bradley_terry_loss
from rlhf.rollout.engine import SamplingParams
from rlhf.rollout.factory import make_engine
from rlhf.rollout.runner import EpisodeRunner

log = logging.getLogger("rlhf")


def sample_preference_pairs(cfg, policy_dir: Path, seed: int, log=print) -> list[dict]:
    """Two responses per train prompt from the SFT policy, each with its gold score."""
    tokenizer, policy = load_tokenizer(policy_dir), load_lm(policy_dir)
    engine = make_engine(cfg, policy, tokenizer, model_dir=str(policy_dir))
    runner = EpisodeRunner(engine, tokenizer, SamplingParams.from_config(cfg.rollout), max_turns=int(cfg.env.max_turns))
    n_pairs = int(cfg.env.preference_pairs)
    torch.manual_seed(seed)
    pairs, start, chunk = [], time.time(), 256
    for begin in range(0, n_pairs, chunk):
        seeds = [seed * 1_000_003 + i for i in range(begin, min(n_pairs, begin + chunk))]
        both = [s for s in seeds for _ in range(2)]
        envs = [env_base.make(cfg.env.name, split="train", **env_settings(cfg.env)) for _ in both]
        episodes = runner.run(envs, both)
        for a, b in zip(episodes[::2], episodes[1::2]):
            pairs.append({"ids": [a.token_ids, b.token_ids],
                          "gold": [a.env_reward("gold"), b.env_reward("gold")],
                          "texts": [a.action_texts[-1], b.action_texts[-1]]})
        log(f"[rm] sampled {len(pairs)}/{n_pairs} pairs ({time.time() - start:.0f}s)")
    return pairs


def label_pairs(pairs: list[dict], label_noise: float, rng: random.Random,
                labels: str = "gold") -> list[tuple[list[int], list[int]]]:
    """(chosen, rejected) by gold score (ties broken by the rng), or drawn from a preference
    oracle (envs/preference.py: `labels=intransitive`, a rater who prefers the first response
    with probability P(a > b)); each label then flipped with probability label_noise."""
    oracle = None if labels == "gold" else PreferenceOracle(labels)
    labelled = []
    for pair in pairs:
        g0, g1 = pair["gold"]
        if oracle is not None:
            first_wins = oracle.sample_label(*[oracle.features(t) for t in pair["texts"]], rng)
        else:
            first_wins = g0 > g1 if g0 != g1 else rng.random() < 0.5
        if rng.random() < label_noise:
            first_wins = not first_wins
        a, b = pair["ids"]
        labelled.append((a, b) if first_wins else (b, a))
    return labelled


def train_bradley_terry(model: ValueModel, labelled, rm_cfg, pad_id: int, seed: int, log=print) -> None:
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(rm_cfg.lr), weight_decay=0.0)
    batch_size = int(rm_cfg.batch_size)
    model.train()
    for epoch in range(int(rm_cfg.epochs)):
        order = list(range(len(labelled)))
        rng.shuffle(order)
        losses = []
        for begin in range(0, len(order), batch_size):
            chunk = [labelled[i] for i in order[begin:begin + batch_size]]
            ids, mask = pad_right([c for c, _ in chunk] + [r for _, r in chunk], pad_id)
            scores = model.score(ids, mask)
            loss = bradley_terry_loss(scores[:len(chunk)], scores[len(chunk):])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
        log(f"[rm] epoch {epoch + 1}/{rm_cfg.epochs} loss {np.mean(losses):.4f}")
    model.eval()


@torch.no_grad()
def score_sequences(score, sequences: list[list[int]], pad_id: int, chunk: int = 256) -> torch.Tensor:
    """score(input_ids, attention_mask) -> [..., B] (one reward model's `score`, or an
    ensemble's `member_scores`) for every sequence, in input order. Chunks hold sequences of
    similar length (sorted by length): padding every chunk to its longest member doubled the
    scoring time of best-of-n pools (mean length 30 tokens, max 63)."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    parts = []
    for begin in range(0, len(order), chunk):
        ids, mask = pad_right([sequences[i] for i in order[begin:begin + chunk]], pad_id)
        parts.append(score(ids, mask))
    if not parts:
        return torch.zeros(0)
    by_length = torch.cat(parts, dim=-1)
    scores = torch.empty_like(by_length)
    scores[..., order] = by_length
    return scores


def validation_metrics(model: ValueModel, pairs: list[dict], pad_id: int) -> dict[str, float]:
    """Accuracy against noiseless gold labels and correlation of scores with gold."""
    seqs = [ids for p in pairs for ids in p["ids"]]
    gold = np.array([g for p in pairs for g in p["gold"]])
    scores = score_sequences(model.score, seqs, pad_id).numpy()
    s0, s1, g0, g1 = scores[::2], scores[1::2], gold[::2], gold[1::2]
    decided = g0 != g1
    accuracy = float(np.mean((s0 > s1)[decided] == (g0 > g1)[decided])) if decided.any() else float("nan")
    corr = float(np.corrcoef(scores, gold)[0, 1]) if gold.std() > 0 and scores.std() > 0 else float("nan")
    return {"rm/val_accuracy": accuracy, "rm/val_gold_corr": corr}


# env settings that cannot change the preference data or a reward model trained on it: which
# held-out prompts evaluation reads, and the per-prompt offset added to the optimized reward
NOT_IN_DATA = ("eval_on", "prompt_reward_offset")


def data_env(env_cfg) -> dict:
    """The env part of the preference data's and reward models' cache keys."""
    return {"name": env_cfg.name, **{k: v for k, v in env_settings(env_cfg).items() if k not in NOT_IN_DATA}}


def preference_data(cfg, policy_dir: Path, log=print) -> dict:
    """Train/validation pairs with their (noisy) labels, shared by every ensemble member."""
    spec = {"env": data_env(cfg.env),  # every other env setting can change labels
            "data_seed": int(cfg.reward.data_seed), "validation_fraction": cfg.reward.validation_fraction,
            "labels": str(cfg.reward.labels),
            "policy": str(Path(policy_dir).resolve()), "engine": str(cfg.rollout.name),
            "sampling": {k: cfg.rollout[k] for k in ("temperature", "top_p", "top_k", "max_new_tokens")},
            "sources": source_digest(["rlhf.reward_models", "envs.text", "rlhf.rollout.engine", "rlhf.rollout.runner"])}

    def build(out: Path) -> None:
        seed = int(cfg.reward.data_seed)
        pairs = sample_preference_pairs(cfg, policy_dir, seed, log)
        rng = random.Random(seed)
        rng.shuffle(pairs)
        n_val = max(1, int(len(pairs) * float(cfg.reward.validation_fraction)))
        val, train_pairs = pairs[:n_val], pairs[n_val:]
        labelled = label_pairs(train_pairs, float(cfg.env.label_noise), rng, str(cfg.reward.labels))
        (out / "data.json").write_text(json.dumps({"train": labelled, "validation": val,
                                                   "train_pairs": train_pairs}))

    return json.loads((cached(cfg.cache_dir, "prefs", spec, build, log) / "data.json").read_text())


def reward_model_dir(cfg, policy_dir: Path, log=print, seed: int | None = None) -> Path:
    """Directory of the reward model trained with `seed` (default reward.seed) on the shared
    preference data (built and cached if needed)."""
    seed = int(cfg.reward.seed) if seed is None else int(seed)
    training = {k: cfg.reward[k] for k in ("init", "epochs", "batch_size", "lr", "data_seed", "validation_fraction", "labels")}
    spec = {"training": training, "seed": seed, "policy": str(Path(policy_dir).resolve()),
            "engine": str(cfg.rollout.name),
            "env": data_env(cfg.env),
            "sampling": {k: cfg.rollout[k] for k in ("temperature", "top_p", "top_k", "max_new_tokens")},
            "sources": source_digest(["rlhf.reward_models", "agents.models", "envs.text",
                                      "rlhf.rollout.engine", "rlhf.rollout.runner"])}

    def build(out: Path) -> None:
        data = preference_data(cfg, policy_dir, log)
        torch.manual_seed(seed)
        tokenizer = load_tokenizer(policy_dir)
        lm = load_lm(policy_dir)
        model = ValueModel.from_lm(lm) if cfg.reward.init == "policy" else ValueModel(AutoModel.from_config(lm.config))
        train_bradley_terry(model, data["train"], cfg.reward, tokenizer.pad_token_id, seed, log)
        metrics = validation_metrics(model, data["validation"], tokenizer.pad_token_id)
        train_scores = score_sequences(model.score, [ids for p in data["train_pairs"] for ids in p["ids"]],
                                       tokenizer.pad_token_id)
        metrics.update({"rm/train_pairs": len(data["train"]), "rm/score_mean": float(train_scores.mean()),
                        "rm/score_std": float(train_scores.std())})
        log(f"[rm] seed {seed}: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        model.save(out)
        tokenizer.save_pretrained(str(out))
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))

    return cached(cfg.cache_dir, "rm", spec, build, log)


def reward_model_dirs(cfg, policy_dir: Path, log=print) -> list[Path]:
    """The reward.members models of an ensemble: seeds reward.seed, reward.seed + 1, ..."""
    return [reward_model_dir(cfg, policy_dir, log, int(cfg.reward.seed) + i) for i in range(int(cfg.reward.members))]
