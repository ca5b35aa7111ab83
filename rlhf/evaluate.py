"""Score a policy on held-out prompts: gold, proxy, KL to the reference, length, distinct-n.

    python -m rlhf.evaluate run=runs/<run>                  # its latest checkpoint
    python -m rlhf.evaluate run=runs/<run>/checkpoints/step_000100 eval.prompts=128

Writes <run>/eval/step_<N>.json and TensorBoard scalars `eval/*` into the run directory (or
into `out=<dir>`, e.g. to steer someone else's run with a value model without writing into
it), and prints the JSON. Settings not given on the command line come from the run's config;
config groups can be swapped too:

    python -m rlhf.evaluate run=runs/<sft-or-any-run> out=eval/vas-b4 decoding=vas \
        decoding.value_models=[runs/<vas run>] decoding.beta=4
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from agents.models import ValueModel, lm_forward
from envs import base as env_base
from envs.text.corpus import words
from rlhf.algos.rm import env_kwargs
from rlhf.config import GROUPS, compose
from rlhf.functional import kl_estimate, masked_sum, token_logprobs
from rlhf.rollout.batch import collate
from rlhf.rollout.engine import HFEngine, SamplingParams
from rlhf.rollout.guidance import VALUE_MODEL_DIR, ValueGuidance, decoding_processors
from rlhf.rollout.runner import EpisodeRunner

log = logging.getLogger("rlhf")
EVAL_SEED_OFFSET = 7_000_000_000  # eval prompt seeds never coincide with training seeds


def distinct_n(texts: list[str], n: int) -> float:
    """Unique word n-grams / all word n-grams over a set of responses (Li et al. 2016)."""
    grams = [tuple(ws[i:i + n]) for t in texts for ws in [words(t)] for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@torch.no_grad()
def evaluate_policy(cfg, policy, ref, tokenizer, reward_model=None, processors=()) -> dict[str, float]:
    """Sample eval.samples_per_prompt responses for eval.prompts held-out prompts.

    KL(pi || ref) is the mean over samples of sum_t log pi - log ref (k1, at temperature 1
    when eval.temperature is 1), the quantity of KL-reward frontiers. With a decoding mode
    (`processors`, e.g. value guidance) the sampling distribution is not the policy's own, so
    log pi is the engine's log-prob of what it actually sampled. The training RNG is
    untouched (forked), so evaluating never changes what training does next."""
    n_prompts, k = int(cfg.eval.prompts), int(cfg.eval.samples_per_prompt)
    temperature = float(cfg.eval.temperature)
    sampling = SamplingParams(temperature=temperature, max_new_tokens=int(cfg.rollout.max_new_tokens),
                              stop_strings=tuple(cfg.rollout.stop_strings))
    engine = HFEngine(policy, tokenizer, int(cfg.rollout.max_batch_size), extra_processors=list(processors))
    runner = EpisodeRunner(engine, tokenizer, sampling, max_turns=int(cfg.env.max_turns),
                           max_total_tokens=int(policy.config.max_position_embeddings))
    seeds = [EVAL_SEED_OFFSET + i for i in range(n_prompts) for _ in range(k)]
    envs = [env_base.make(str(cfg.env.name), split="eval", **env_kwargs(cfg)) for _ in seeds]
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


def save_eval(run_dir: Path, step: int, metrics: dict[str, float]) -> Path:
    out = Path(run_dir) / "eval" / f"step_{step:06d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"step": step, **metrics}, indent=2, sort_keys=True))
    return out


USAGE = ("usage: python -m rlhf.evaluate run=<run dir or checkpoint dir> [out=<dir>] "
         "[group=option ...] [key=value ...]")


def parse_args(argv: list[str]) -> tuple[str, Path | None, list[str]]:
    """`run=<dir>`, optional `out=<dir>` (default: the run's own directory), then overrides of
    the run's config: config groups (decoding=vas) and dotted keys (eval.prompts=128)."""
    runs = [a.split("=", 1)[1] for a in argv if a.startswith("run=")]
    outs = [a.split("=", 1)[1] for a in argv if a.startswith("out=")]
    if len(runs) != 1 or len(outs) > 1:
        raise SystemExit(USAGE)
    rest = [a for a in argv if not a.startswith(("run=", "out="))]
    return runs[0], Path(outs[0]) if outs else None, rest


def load_run(path: str, overrides: list[str]):
    from rlhf import checkpoint as ckpt

    checkpoint = ckpt.resolve_resume(path, Path(path), Path(path).parent)
    state = torch.load(checkpoint / ckpt.STATE, weights_only=False)
    cfg = OmegaConf.create(state["config"])
    groups = [o for o in overrides if o.split("=", 1)[0] in GROUPS]
    if groups:  # e.g. decoding=vas: take that group's config as `rlhf.train` would compose it
        fresh = compose(groups)
        for override in groups:
            group = override.split("=", 1)[0]
            cfg[group] = fresh[group]
    overrides = [o for o in overrides if o not in groups]
    OmegaConf.set_struct(cfg, True)
    missing = object()
    for override in overrides:
        key = override.split("=", 1)[0]
        if OmegaConf.select(cfg, key, default=missing) is missing and "." in key:
            parent = key.rsplit(".", 1)[0]
            valid = list(OmegaConf.select(cfg, parent, default={}) or {})
            raise SystemExit(f"unknown key '{key}'; valid keys under '{parent}': {', '.join(map(str, valid))}")
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    return checkpoint, state, cfg


def evaluate_lm_checkpoint(cfg, checkpoint: Path, state: dict) -> dict[str, float]:
    """Rebuild policy (from its warm start + checkpoint weights), reference and proxy RM."""
    from agents.models import apply_lora, frozen_copy, load_lm, load_tokenizer
    from rlhf.trainer import reward_model_ensemble

    policy_dir = Path(state["policy_dir"])
    tokenizer = load_tokenizer(checkpoint / "hf")
    ref = frozen_copy(load_lm(policy_dir))
    policy = load_lm(policy_dir)
    if int(cfg.model.lora.rank) > 0:
        policy = apply_lora(policy, cfg.model.lora)
    policy.load_state_dict(torch.load(checkpoint / "policy.pt", weights_only=True))
    reward_model = None
    if cfg.reward.name in ("rm", "ensemble"):
        reward_model = reward_model_ensemble(cfg, policy_dir)
    processors = decoding_processors(cfg.decoding)
    if not processors and (checkpoint / VALUE_MODEL_DIR).is_dir():  # a VAS run: its own value model steers
        value = ValueModel.load(checkpoint / VALUE_MODEL_DIR)
        processors = [ValueGuidance([value], [float(cfg.algo.eval_beta)], int(cfg.algo.eval_top_k))]
    return evaluate_policy(cfg, policy, ref, tokenizer, reward_model, processors)


def main(argv: list[str] | None = None) -> dict[str, float]:
    from rlhf.algos import standalone_module

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path, out_dir, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    checkpoint, state, cfg = load_run(path, overrides)
    torch.set_num_threads(int(cfg.threads) or torch.get_num_threads())
    run_dir = out_dir or checkpoint.parent.parent
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "eval_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    module = standalone_module(str(cfg.algo.name))
    if module is None and cfg.env.name == "games":  # behavioural evaluation (rlhf.games_eval)
        from rlhf.games_eval import evaluate_checkpoint

        metrics = evaluate_checkpoint(cfg, checkpoint, state, run_dir)
    elif module is None:
        metrics = evaluate_lm_checkpoint(cfg, checkpoint, state)
    elif hasattr(module, "evaluate"):
        metrics = module.evaluate(cfg, checkpoint, run_dir)
    else:
        raise SystemExit(f"algo={cfg.algo.name} runs have no evaluation; evaluate the runs that use them")
    out = save_eval(run_dir, int(state["step"]), metrics)
    with SummaryWriter(str(run_dir)) as writer:
        for key, value in metrics.items():
            writer.add_scalar(f"eval/{key}", value, int(state["step"]))
    print(json.dumps({"checkpoint": str(checkpoint), "step": int(state["step"]), **metrics}, indent=2))
    log.info(f"[eval] wrote {out}")
    return metrics


if __name__ == "__main__":
    main()
