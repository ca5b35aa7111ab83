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
from rlhf import search
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


def eval_temperature(cfg) -> float:
    """eval.temperature, or the env's own default when it is null (greedy on math and code)."""
    if cfg.eval.get("temperature") is not None:
        return float(cfg.eval.temperature)
    return float(env_base.env_class(str(cfg.env.name)).eval_temperature)


@torch.no_grad()
def evaluate_policy(cfg, policy, ref, tokenizer, reward_model=None, processors=(), engine=None,
                    records: list | None = None) -> dict[str, float]:
    """Sample eval.samples_per_prompt responses for eval.prompts held-out prompts.

    KL(pi || ref) is the mean over samples of sum_t log pi - log ref (k1, at temperature 1
    when eval.temperature is 1), the quantity of KL-reward frontiers. With a decoding mode
    (`processors`, e.g. value guidance) the sampling distribution is not the policy's own, so
    log pi is the engine's log-prob of what it actually sampled. The training RNG is
    untouched (forked), so evaluating never changes what training does next. `engine`: one
    that already holds the policy's weights (the trainer's); else one from the factory.
    `records`: a list that receives one row per sample (seed, prompt, response, env rewards),
    which the harness writes to eval/samples_step_N.jsonl."""
    temperature = eval_temperature(cfg)
    n_prompts, k = int(cfg.eval.prompts), int(cfg.eval.samples_per_prompt) if temperature > 0 else 1
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
    batch = collate(episodes, tokenizer.pad_token_id).to(next(policy.parameters()).device)
    tau = temperature or 1.0
    if processors:
        logp = batch.behaviour_logprobs
    else:
        logp = token_logprobs(lm_forward(policy, batch.input_ids, batch.attention_mask), batch.input_ids, tau)
    ref_logp = token_logprobs(lm_forward(ref, batch.input_ids, batch.attention_mask), batch.input_ids, tau)
    kl = masked_sum(kl_estimate(logp, ref_logp, "k1", clamp=1e9), batch.action_mask, dim=-1)
    texts = [" ".join(ep.action_texts) for ep in episodes]
    if records is not None:
        for i, (ep, text) in enumerate(zip(episodes, texts)):
            rewards = {k: ep.env_reward(k) for k in ep.rewards[0]} if isinstance(ep.rewards[0], dict) else {
                "return": ep.env_reward("return")}
            records.append({"seed": ep.seed, "prompt": tokenizer.decode(ep.token_ids[:ep.prompt_len]),
                            "response": text, "turns": ep.action_texts, **rewards, "kl": float(kl[i])})
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


def evaluate_run_checkpoint(cfg, checkpoint: Path, run_dir: Path, records: list | None = None) -> dict[str, float]:
    """`python -m rlhf.evaluate` for an LM job's checkpoint (DPO, OREO, RFT, MCTS-DPO): its
    module exposes this as `evaluate`."""
    from rlhf import checkpoint as ckpt

    state, _ = ckpt.load_checkpoint(checkpoint)
    return evaluate_lm_checkpoint(cfg, checkpoint, state, records)


def evaluate_lm_checkpoint(cfg, checkpoint: Path, state: dict, records: list | None = None) -> dict[str, float]:
    """Rebuild policy (from its warm start + checkpoint weights), reference and proxy RM; with
    decoding=value_beam, value-guided step search instead of sampling, with decoding=value_best_of
    the best of k sampled answers by value at every turn (rlhf.search)."""
    from rlhf.rewards import reward_model_ensemble

    policy, ref, tokenizer, policy_dir = checkpoint_policy(cfg, checkpoint, state)
    if cfg.decoding.name in ("value_beam", "value_best_of"):  # OREO's searches: a value model, the run's own by default
        value = load_value_model(cfg.decoding.value_model or checkpoint)
    if cfg.decoding.name == "value_beam":
        return evaluate_value_beam(cfg, policy, tokenizer, value, records)
    if cfg.decoding.name == "value_best_of":  # the ALFWorld form of OREO's value-guided search
        engine = search.ValueBestOf(make_engine(cfg, policy, tokenizer), value, tokenizer.pad_token_id,
                                    tokenizer.eos_token_id, int(cfg.decoding.k), float(cfg.decoding.temperature))
        metrics = evaluate_policy(cfg, policy, ref, tokenizer, engine=engine, records=records)
        return {**metrics, "search/candidates_per_turn": engine.distinct / max(engine.turns, 1),
                "search/k": float(engine.k)}
    reward_model = None
    if cfg.reward.name in ("rm", "ensemble"):
        reward_model = reward_model_ensemble(cfg, policy_dir)
    processors = decoding_processors(cfg.decoding)
    # a VAS run: its own value model steers (OREO checkpoints hold a value model too, for value_beam only)
    if not processors and cfg.algo.name == "vas" and (checkpoint / VALUE_MODEL_DIR).is_dir():
        value = ValueModel.load(checkpoint / VALUE_MODEL_DIR)
        processors = [ValueGuidance([value], [float(cfg.algo.eval_beta)], int(cfg.algo.eval_top_k))]
    metrics = evaluate_policy(cfg, policy, ref, tokenizer, reward_model, processors, records=records)
    if cfg.env.name == "code":  # unbiased pass@k of eval.samples_per_prompt programs at rollout.temperature
        from rlhf.code_eval import sampled_eval
        metrics.update(sampled_eval(cfg, policy, tokenizer, int(cfg.eval.samples_per_prompt),
                                    float(cfg.rollout.temperature) or 1.0, EVAL_SEED_OFFSET, records=records))
    return metrics


# --- value-guided step search (rlhf.search): `python -m rlhf.evaluate run=<run> decoding=value_beam` ------

def load_value_model(path):
    """A value model from a run dir, a checkpoint dir or a value_model dir (OREO writes one into
    every checkpoint)."""
    from rlhf import checkpoint as ckpt

    path = Path(str(path)).expanduser()
    if (path / "value_head.safetensors").exists():
        return ValueModel.load(path).eval()
    checkpoint = ckpt.resolve_resume(str(path), path)
    if not (checkpoint / VALUE_MODEL_DIR).is_dir():
        raise FileNotFoundError(f"{checkpoint} has no {VALUE_MODEL_DIR}/ (an OREO or VAS run's checkpoints have one); "
                                "set decoding.value_model=<run or value_model dir>")
    return ValueModel.load(checkpoint / VALUE_MODEL_DIR).eval()


@torch.no_grad()
def evaluate_value_beam(cfg, policy, tokenizer, value_model, records: list | None = None) -> dict[str, float]:
    """Accuracy of value-guided step beam search on eval.prompts held-out problems, and (with
    decoding.calibration_samples = k > 0) the value calibration: the Pearson correlation of
    V(s_0) with each problem's success rate over k samples of the policy."""
    d, name = cfg.decoding, str(cfg.env.name)
    make_env = lambda: env_base.make(name, split="eval", **env_settings(cfg.env))  # noqa: E731
    env = make_env()
    if not getattr(env, "has_steps", False):
        raise ValueError(f"decoding=value_beam searches over reasoning steps; env={name} has none (use env=math)")
    seeds = [EVAL_SEED_OFFSET + i for i in range(int(cfg.eval.prompts))]
    prompts = [tokenizer(env.reset(s), add_special_tokens=False)["input_ids"] for s in seeds]
    engine = make_engine(cfg, policy, tokenizer)
    was_training = policy.training
    policy.eval()
    with torch.random.fork_rng():
        torch.manual_seed(int(cfg.seed) + EVAL_SEED_OFFSET)
        chosen, stats = search.value_beam_search(engine, tokenizer, value_model, prompts, env.splitter, int(d.beams),
                                          int(d.max_steps), int(d.max_step_tokens), float(d.temperature),
                                          int(policy.config.max_position_embeddings))
        correct = []
        for seed, c in zip(seeds, chosen):
            env.reset(seed)
            text = tokenizer.decode([t for t in c.response if t != tokenizer.eos_token_id], skip_special_tokens=True)
            reward = env.step(text)[1]
            correct.append(float(reward["accuracy"]))
            if records is not None:
                records.append({"seed": seed, "prompt": tokenizer.decode(prompts[len(correct) - 1]), "response": text,
                                "accuracy": correct[-1], "value": c.value})
        metrics = {"accuracy": float(np.mean(correct)), "beams": float(d.beams), **stats}
        k = int(d.get("calibration_samples", 0))
        if k > 0:
            v0 = search.values_of(value_model, prompts, tokenizer.pad_token_id)
            runner = EpisodeRunner(engine, tokenizer, SamplingParams(temperature=1.0, max_new_tokens=int(cfg.rollout.max_new_tokens)))
            episodes = runner.run([make_env() for _ in seeds for _ in range(k)], [s for s in seeds for _ in range(k)])
            success = np.array([ep.env_reward("accuracy") for ep in episodes]).reshape(len(seeds), k).mean(1)
            r = float(np.corrcoef(v0, success)[0, 1]) if success.std() > 0 and np.std(v0) > 0 else float("nan")
            metrics.update({"value_calibration_r": r, "value_s0_mean": float(np.mean(v0)),
                            "sampled_accuracy": float(success.mean())})
            if records is not None:
                for row, v, s in zip(records[-len(seeds):], v0, success):
                    row.update(value_s0=v, success_rate=float(s))
    policy.train(was_training)
    return metrics
