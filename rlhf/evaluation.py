"""Held-out evaluation of an LM policy on a text environment: gold, proxy, KL to the
reference, length, distinct-n. Used by the trainer, by standalone algorithms and by the
`python -m rlhf.evaluate` command (rlhf.evaluate)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from agents.models import ValueModel, lm_forward
from envs import base as env_base
from envs.text.corpus import words
from envs.base import env_settings
from rlhf.functional import kl_estimate, masked_sum, token_logprobs
from rlhf.rollout.batch import collate
from rlhf.rollout.engine import SamplingParams
from rlhf.rollout.factory import make_engine
from rlhf.rollout.guidance import VALUE_MODEL_DIR, ValueGuidance, decoding_processors
from rlhf.rollout.runner import EpisodeRunner

log = logging.getLogger("rlhf")
EVAL_SEED_OFFSET = 7_000_000_000  # eval prompt seeds never coincide with training seeds


def distinct_n(texts: list[str], n: int) -> float:
    """Unique word n-grams / all word n-grams over a set of responses (Li et al. 2016)."""
    grams = [tuple(ws[i:i + n]) for t in texts for ws in [words(t)] for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@torch.no_grad()
def evaluate_policy(cfg, policy, ref, tokenizer, reward_model=None, processors=(), engine=None) -> dict[str, float]:
    """Sample eval.samples_per_prompt responses for eval.prompts held-out prompts.

    KL(pi || ref) is the mean over samples of sum_t log pi - log ref (k1, at temperature 1
    when eval.temperature is 1), the quantity of KL-reward frontiers. With a decoding mode
    (`processors`, e.g. value guidance) the sampling distribution is not the policy's own, so
    log pi is the engine's log-prob of what it actually sampled. The training RNG is
    untouched (forked), so evaluating never changes what training does next. `engine`: one
    that already holds the policy's weights (the trainer's); else one from the factory."""
    n_prompts, k = int(cfg.eval.prompts), int(cfg.eval.samples_per_prompt)
    temperature = float(cfg.eval.temperature)
    sampling = SamplingParams(temperature=temperature, max_new_tokens=int(cfg.rollout.max_new_tokens),
                              stop_strings=tuple(cfg.rollout.stop_strings))
    if engine is None or processors:
        engine = make_engine(cfg, policy, tokenizer, processors=processors)
    runner = EpisodeRunner(engine, tokenizer, sampling, max_turns=int(cfg.env.max_turns),
                           max_total_tokens=int(policy.config.max_position_embeddings))
    seeds = [EVAL_SEED_OFFSET + i for i in range(n_prompts) for _ in range(k)]
    envs = [env_base.make(str(cfg.env.name), split="eval", **env_settings(cfg.env)) for _ in seeds]
    was_training = policy.training
    policy.eval()
    with torch.random.fork_rng():
        torch.manual_seed(int(cfg.seed) + EVAL_SEED_OFFSET)
        episodes = runner.run(envs, seeds)
    policy.train(was_training)
    batch = collate(episodes, tokenizer.pad_token_id)
    tau = temperature or 1.0
    if processors:
        logp = batch.behaviour_logprobs
    else:
        logp = token_logprobs(lm_forward(policy, batch.input_ids, batch.attention_mask), batch.input_ids, tau)
    ref_logp = token_logprobs(lm_forward(ref, batch.input_ids, batch.attention_mask), batch.input_ids, tau)
    kl = masked_sum(kl_estimate(logp, ref_logp, "k1", clamp=1e9), batch.action_mask, dim=-1)
    texts = [" ".join(ep.action_texts) for ep in episodes]
    metrics = {"kl": float(kl.mean()),
               "response_length": float(batch.response_length.float().mean()),
               "eos_rate": float(batch.finished.float().mean()),
               "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2)}
    first = episodes[0].rewards[0]
    for component in (first if isinstance(first, dict) else ["return"]):
        metrics[component] = float(np.mean([ep.env_reward(component) for ep in episodes]))
    if reward_model is not None:
        metrics["proxy"] = float(reward_model.score(batch.input_ids, batch.attention_mask).mean())
    if cfg.reward.name == "composite":  # the components and the hidden evaluation score (envs.composite)
        from envs.composite import CompositeScorer

        scorer = CompositeScorer.from_config(cfg.reward)
        scored = [scorer.score(text) for text in texts]
        metrics.update({f"composite/{key}": float(np.mean([s[key] for s in scored])) for key in scored[0]})
    return metrics


def checkpoint_policy(cfg, checkpoint: Path, state: dict):
    """(policy with the checkpoint's weights, its frozen warm start as reference, tokenizer,
    warm-start directory) of an LM run's checkpoint."""
    from agents.models import apply_lora, frozen_copy, load_lm, load_tokenizer

    policy_dir = Path(state["policy_dir"])
    tokenizer = load_tokenizer(checkpoint / "hf")
    ref = frozen_copy(load_lm(policy_dir))
    policy = load_lm(policy_dir)
    if int(cfg.model.lora.rank) > 0:
        policy = apply_lora(policy, cfg.model.lora)
    policy.load_state_dict(torch.load(checkpoint / "policy.pt", weights_only=True))
    return policy, ref, tokenizer, policy_dir


def evaluate_lm_checkpoint(cfg, checkpoint: Path, state: dict) -> dict[str, float]:
    """Rebuild policy (from its warm start + checkpoint weights), reference and proxy RM."""
    from rlhf.rewards import reward_model_ensemble

    policy, ref, tokenizer, policy_dir = checkpoint_policy(cfg, checkpoint, state)
    reward_model = None
    if cfg.reward.name in ("rm", "ensemble"):
        reward_model = reward_model_ensemble(cfg, policy_dir)
    processors = decoding_processors(cfg.decoding)
    if not processors and (checkpoint / VALUE_MODEL_DIR).is_dir():  # a VAS run: its own value model steers
        value = ValueModel.load(checkpoint / VALUE_MODEL_DIR)
        processors = [ValueGuidance([value], [float(cfg.algo.eval_beta)], int(cfg.algo.eval_top_k))]
    return evaluate_policy(cfg, policy, ref, tokenizer, reward_model, processors)
