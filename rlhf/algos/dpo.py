"""`algo=dpo algo.loss=<name>`: offline preference optimization with the DPO family
(spec algorithms-b.md §6; the losses themselves are in rlhf.preference.losses).

    python -m rlhf.train algo=dpo algo.loss=ipo
    python -m rlhf.train algo=dpo algo.loss=lipo algo.responses_per_prompt=4
    python -m rlhf.train algo=dpo algo.curriculum=iterative        # Curry-DPO
    python -m rlhf.train algo=dpo algo.data=/path/prefs.jsonl      # your own pairs/lists

Data: ranked lists of responses per train prompt, sampled from the SFT policy and scored by
the env's gold scorer (cached), or a local JSONL file (rlhf.preference.data). Pairwise
losses train on each list's best-vs-worst pair; `lipo` trains on whole lists; Curry-DPO
trains on the pairs (R_1, R_K), ..., (R_1, R_2) easy to hard, one stage each, and with
`curriculum=iterative` the reference of stage s+1 is the policy after stage s.

Reference log-probs are computed once per stage (one no-grad pass) and kept for every
epoch; TDPO needs the reference's full next-token distributions, so it runs the reference
forward with each batch instead. Logged: dpo/loss, dpo/rewards_{chosen,rejected,margin,
accuracy} (beta * Delta), dpo/logps_{chosen,rejected} (likelihood displacement shows up
here), and the held-out evaluation (gold, KL to the SFT policy) at the end.

DNO (rlhf/algos/dno.py) and MCTS-DPO reuse `reference_logps` and `train_pairs`.
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import torch

from agents.models import frozen_copy, lm_forward, load_lm, load_tokenizer, save_lm
from rlhf.warmstart import warm_start_policy
from envs import base as env_base
from rlhf import checkpoint as ckpt
from rlhf.algos.base import optimizer_step
from envs.base import env_settings
from rlhf.cache import cached, source_digest
from rlhf.evaluation import evaluate_lm_checkpoint, evaluate_policy
from rlhf.harness import save_eval
from rlhf.functional import sequence_logprob, token_logprobs
from rlhf.logger import Logger
from rlhf.preference import data as prefs
from rlhf.preference.losses import NEEDS_NO_REFERENCE, PAIR_LOSSES, PairTerms, lipo_lambda_loss, pair_loss, sequential_kl
from rlhf.rollout.engine import HFEngine, SamplingParams
from rlhf.rollout.runner import EpisodeRunner

log = logging.getLogger("rlhf")
DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "simpo": 2.0, "fdpo": 0.1, "tdpo": 0.1, "asft": 0.1, "rpo": 0.1, "lipo": 0.05}
CURRICULA = ("none", "iterative", "single_run")


def beta_of(algo_cfg) -> float:
    """algo.beta, or the loss's default from the spec's table when `auto`."""
    return DEFAULT_BETA[str(algo_cfg.loss)] if str(algo_cfg.beta) == "auto" else float(algo_cfg.beta)


# --- log-probabilities ------------------------------------------------------------------------

def response_logps(model, prompts, responses, pad_id: int, with_logits: bool = False):
    """log pi(y|x) summed over response tokens [N] (fp32), response lengths [N], and
    optionally the logits aligned with the tokens they predict plus the response mask."""
    ids, attention, response_mask = prefs.collate_sequences(prompts, responses, pad_id)
    logits = lm_forward(model, ids, attention)
    logp = sequence_logprob(token_logprobs(logits, ids), response_mask)
    if not with_logits:
        return logp, response_mask.sum(-1)
    aligned = torch.nn.functional.pad(logits[:, :-1], (0, 0, 1, 0))  # position t predicts token t
    return logp, response_mask.sum(-1), aligned, response_mask


@torch.no_grad()
def reference_logps(ref, pairs: list[prefs.Pair], pad_id: int, chunk: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference log-probs of every pair's chosen and rejected response, computed once."""
    chosen, rejected = [], []
    for begin in range(0, len(pairs), chunk):
        part = pairs[begin:begin + chunk]
        prompts = [p.prompt_ids for p in part]
        chosen.append(response_logps(ref, prompts, [p.chosen for p in part], pad_id)[0])
        rejected.append(response_logps(ref, prompts, [p.rejected for p in part], pad_id)[0])
    return torch.cat(chosen), torch.cat(rejected)


def pair_batch_terms(policy, ref, part: list[prefs.Pair], ref_chosen, ref_rejected, pad_id: int, loss: str) -> PairTerms:
    """Chosen and rejected in one forward pass (concatenated), as the spec advises."""
    prompts = [p.prompt_ids for p in part] * 2
    responses = [p.chosen for p in part] + [p.rejected for p in part]
    n = len(part)
    if loss != "tdpo":
        logp, lengths = response_logps(policy, prompts, responses, pad_id)
        return PairTerms(logp[:n], logp[n:], ref_chosen, ref_rejected, lengths[:n], lengths[n:])
    # TDPO: the reference's full next-token distributions (its sequence log-probs come with them)
    logp, lengths, logits, mask = response_logps(policy, prompts, responses, pad_id, with_logits=True)
    with torch.no_grad():
        ref_logp, _, ref_logits, _ = response_logps(ref, prompts, responses, pad_id, with_logits=True)
    kl = sequential_kl(logits, ref_logits, mask)
    return PairTerms(logp[:n], logp[n:], ref_logp[:n], ref_logp[n:], lengths[:n], lengths[n:], kl[:n], kl[n:])


# --- training -----------------------------------------------------------------------------------

def train_pairs(policy, ref, optimizer, pairs, ref_chosen, ref_rejected, algo_cfg, pad_id: int,
                rng: random.Random, on_step=None) -> dict[str, float]:
    """One epoch over `pairs` with the pairwise loss `algo_cfg.loss` (DNO calls it with
    loss=dpo and beta=eta). Returns the epoch's mean metrics."""
    loss_name, beta = str(algo_cfg.loss), beta_of(algo_cfg)
    settings = {**algo_cfg, "beta": beta}
    order = list(range(len(pairs)))
    rng.shuffle(order)
    totals: dict[str, float] = {}
    batches = 0
    for begin in range(0, len(order), int(algo_cfg.batch_size)):
        index = order[begin:begin + int(algo_cfg.batch_size)]
        terms = pair_batch_terms(policy, ref, [pairs[i] for i in index], ref_chosen[index], ref_rejected[index],
                                 pad_id, loss_name)
        loss = pair_loss(loss_name, terms, Settings(settings)).mean()
        optimizer_step(optimizer, loss, float(algo_cfg.max_grad_norm))
        metrics = pair_metrics(terms, beta, loss, reference_free=loss_name in NEEDS_NO_REFERENCE)
        if on_step is not None:
            on_step(metrics)
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0.0) + value
        batches += 1
    return {key: value / max(batches, 1) for key, value in totals.items()}


class Settings(dict):
    """Attribute access over a plain dict (pair_loss reads cfg.beta etc.)."""
    __getattr__ = dict.__getitem__


@torch.no_grad()
def pair_metrics(terms: PairTerms, beta: float, loss: torch.Tensor, reference_free: bool = False) -> dict[str, float]:
    """Implicit rewards: beta * Delta(y); for the reference-free losses (SimPO, ASFT) the
    quantity they optimize instead, beta * log pi(y) / |y|."""
    if reference_free:
        reward_chosen, reward_rejected = beta * terms.chosen / terms.len_chosen, beta * terms.rejected / terms.len_rejected
    else:
        reward_chosen, reward_rejected = beta * terms.delta_chosen, beta * terms.delta_rejected
    return {"dpo/loss": float(loss), "dpo/rewards_chosen": float(reward_chosen.mean()),
            "dpo/rewards_rejected": float(reward_rejected.mean()),
            "dpo/rewards_margin": float((reward_chosen - reward_rejected).mean()),
            "dpo/rewards_accuracy": float((reward_chosen > reward_rejected).float().mean()),
            "dpo/logps_chosen": float(terms.chosen.mean()), "dpo/logps_rejected": float(terms.rejected.mean())}


def pad_lists(lists: list[prefs.RankedList]):
    """Flatten lists padded to K (a padding slot repeats the list's first response and is
    marked invalid): prompts, responses, labels [n, K], valid [n, K]."""
    k = max(len(r.responses) for r in lists)
    prompts, responses, labels, valid = [], [], torch.zeros(len(lists), k), torch.zeros(len(lists), k, dtype=torch.bool)
    for i, r in enumerate(lists):
        for j in range(k):
            prompts.append(r.prompt_ids)
            responses.append(r.responses[j] if j < len(r.responses) else r.responses[0])
        labels[i, :len(r.scores)] = torch.tensor(list_labels(r.scores))
        valid[i, :len(r.scores)] = True
    return prompts, responses, labels, valid


def list_labels(scores: list[float]) -> list[float]:
    """LiPO's psi_k: the mean pairwise win rate of response k against the rest of its list
    (ties count half) -- the paper's label from pairwise judgements."""
    k = len(scores)
    return [sum(1.0 if s > t else 0.5 if s == t else 0.0 for j, t in enumerate(scores) if j != i) / (k - 1)
            for i, s in enumerate(scores)]


def train_lists(policy, ref, optimizer, lists, algo_cfg, pad_id: int, rng: random.Random, on_step=None) -> dict[str, float]:
    """One epoch of LiPO-lambda over ranked lists."""
    beta = beta_of(algo_cfg)
    order = list(range(len(lists)))
    rng.shuffle(order)
    losses = []
    for begin in range(0, len(order), int(algo_cfg.batch_size)):
        part = [lists[i] for i in order[begin:begin + int(algo_cfg.batch_size)]]
        prompts, responses, labels, valid = pad_lists(part)
        logp, _ = response_logps(policy, prompts, responses, pad_id)
        with torch.no_grad():
            ref_logp, _ = response_logps(ref, prompts, responses, pad_id)
        scores = (beta * (logp - ref_logp)).view(len(part), -1)
        loss = lipo_lambda_loss(scores, labels, valid, bool(algo_cfg.lipo_lambda_weight)).mean()
        optimizer_step(optimizer, loss, float(algo_cfg.max_grad_norm))
        losses.append(loss.item())
        if on_step is not None:
            on_step({"dpo/loss": float(loss)})
    return {"dpo/loss": sum(losses) / max(len(losses), 1)}


# --- data ---------------------------------------------------------------------------------------

def env_lists(cfg, policy_dir: Path) -> list[prefs.RankedList]:
    """K gold-scored samples per train prompt from the SFT policy (cached)."""
    k, n_prompts = int(cfg.algo.responses_per_prompt), int(cfg.algo.prompts)
    spec = {"env": {"name": cfg.env.name, **env_settings(cfg.env)}, "policy": str(Path(policy_dir).resolve()),
            "k": k, "prompts": n_prompts, "seed": int(cfg.algo.data_seed),
            "sampling": {key: cfg.rollout[key] for key in ("temperature", "top_p", "top_k", "max_new_tokens")},
            "sources": source_digest(["rlhf.preference.data", "envs.text", "rlhf.rollout.engine", "rlhf.rollout.runner"])}

    def build(out: Path) -> None:
        tokenizer, policy = load_tokenizer(policy_dir), load_lm(policy_dir).eval()
        runner = EpisodeRunner(HFEngine(policy, tokenizer, int(cfg.rollout.max_batch_size)), tokenizer,
                               SamplingParams.from_config(cfg.rollout), max_turns=int(cfg.env.max_turns))
        torch.manual_seed(int(cfg.algo.data_seed))
        seeds = [int(cfg.algo.data_seed) * 1_000_003 + i for i in range(n_prompts)]
        lists = prefs.sample_lists(runner, lambda: env_base.make(str(cfg.env.name), split="train", **env_settings(cfg.env)),
                                   seeds, k, lambda ep: ep.env_reward("gold"), log.info)
        (out / "lists.json").write_text(json.dumps(prefs.to_json(lists)))

    path = cached(cfg.cache_dir, "pref_lists", spec, build, log.info) / "lists.json"
    return prefs.from_json(json.loads(path.read_text()))


def stages_of(cfg, lists) -> list[list]:
    """What each stage trains on: pairs (or lists, for LiPO)."""
    if str(cfg.algo.loss) == "lipo":
        return [lists]
    if str(cfg.algo.curriculum) == "none":
        return [prefs.best_vs_worst(lists)]
    stages = prefs.curriculum_stages(lists)
    if str(cfg.algo.curriculum) == "single_run":  # one stage, easy to hard, fixed reference
        return [[pair for stage in stages for pair in stage]]
    return stages


# --- entry points ------------------------------------------------------------------------------

def train(cfg, run_dir: Path) -> dict:
    env = env_base.make(str(cfg.env.name), split="train", **env_settings(cfg.env))
    policy_dir = warm_start_policy(cfg, env, log.info)
    tokenizer = load_tokenizer(policy_dir)
    lists = prefs.load_jsonl(cfg.algo.data, tokenizer) if cfg.algo.data else env_lists(cfg, policy_dir)
    stages = stages_of(cfg, lists)
    log.info(f"[dpo] loss={cfg.algo.loss} beta={beta_of(cfg.algo)} curriculum={cfg.algo.curriculum}: "
             f"{len(lists)} lists -> stages of {[len(s) for s in stages]} {'lists' if cfg.algo.loss == 'lipo' else 'pairs'}")
    torch.manual_seed(int(cfg.seed))
    policy = load_lm(policy_dir)
    sft = frozen_copy(policy)
    run = {"optimizer": make_adam(policy, cfg.algo), "ref": sft, "epoch": 0, "opt_steps": 0,
           "rng": random.Random(int(cfg.seed))}
    if cfg.train.resume:
        restore(cfg, run_dir, policy, run)
    epochs, pad_id = int(cfg.algo.epochs), tokenizer.pad_token_id
    total = len(stages) * epochs
    logger = Logger(run_dir, total, 1, first_step=run["epoch"] + 1)

    def on_step(metrics):  # every optimizer step, for fine-grained curves (x = optimizer steps)
        run["opt_steps"] += 1
        for key, value in metrics.items():
            logger.writer.add_scalar(key.replace("dpo/", "dpo_step/"), value, run["opt_steps"])

    for epoch in range(run["epoch"], total):
        stage = epoch // epochs
        if epoch % epochs == 0 and stage > 0 and cfg.algo.curriculum == "iterative":
            run["ref"] = frozen_copy(policy)  # Curry-DPO: stage s+1 is referenced to the policy after stage s
            if bool(cfg.algo.reset_optimizer_per_stage):
                run["optimizer"] = make_adam(policy, cfg.algo)
        if epoch % epochs == 0 or "ref_logps" not in run:  # once per stage (and after a resume)
            run["ref_logps"] = stage_reference_logps(cfg, run["ref"], stages[stage], pad_id)
        metrics = run_epoch(cfg, policy, run, stages[stage], pad_id, on_step)
        logger.log(epoch + 1, {**metrics, "dpo/stage": float(stage)})
        run["epoch"] = epoch + 1
        save(cfg, run_dir, policy, run, policy_dir, tokenizer, ref_is_sft=run["ref"] is sft)
    final = evaluate_policy(cfg, policy, sft, tokenizer)
    for key, value in final.items():
        logger.writer.add_scalar(f"eval/{key}", value, total)
    logger.close()
    save_eval(run_dir, total, final)
    log.info(f"[dpo] held-out gold {final['gold']:.3f}, KL to SFT {final['kl']:.2f}, length {final['response_length']:.1f}")
    return final


def stage_reference_logps(cfg, ref, items, pad_id):
    """Reference log-probs of a stage's pairs, computed once. SimPO and ASFT use no
    reference; LiPO and TDPO need the reference inside each batch (lists; full logits)."""
    if str(cfg.algo.loss) in NEEDS_NO_REFERENCE or str(cfg.algo.loss) in ("lipo", "tdpo"):
        zeros = torch.zeros(len(items))
        return zeros, zeros
    return reference_logps(ref, items, pad_id)


def run_epoch(cfg, policy, run: dict, items, pad_id, on_step) -> dict[str, float]:
    policy.train()
    if str(cfg.algo.loss) == "lipo":
        return train_lists(policy, run["ref"], run["optimizer"], items, cfg.algo, pad_id, run["rng"], on_step)
    ref_chosen, ref_rejected = run["ref_logps"]
    return train_pairs(policy, run["ref"], run["optimizer"], items, ref_chosen, ref_rejected, cfg.algo, pad_id,
                       run["rng"], on_step)


def make_adam(policy, algo_cfg) -> torch.optim.Optimizer:
    return torch.optim.AdamW(policy.parameters(), lr=float(algo_cfg.lr), weight_decay=0.0)


def save(cfg, run_dir, policy, run: dict, policy_dir, tokenizer, ref_is_sft: bool) -> None:
    """Atomic checkpoint after each epoch: policy, optimizer, RNGs, position, and the
    reference when it is not the SFT policy (iterative Curry-DPO), so resume is exact."""
    from omegaconf import OmegaConf

    state = {"step": run["epoch"], "opt_steps": run["opt_steps"], "config": OmegaConf.to_container(cfg, resolve=True),
             "policy_dir": str(policy_dir), "optimizer": run["optimizer"].state_dict(),
             "python_rng": run["rng"].getstate(), "torch_rng": torch.get_rng_state()}
    modules = {"policy": policy} if ref_is_sft else {"policy": policy, "ref": run["ref"]}
    ckpt.save_checkpoint(run_dir, run["epoch"], state, modules, int(cfg.train.keep_checkpoints),
                         write_extra=lambda tmp: save_lm(policy, tokenizer, tmp / "hf"))


def restore(cfg, run_dir, policy, run: dict) -> None:
    path = ckpt.resolve_resume(cfg.train.resume, run_dir, run_dir.parent)
    state, modules = ckpt.load_checkpoint(path)
    policy.load_state_dict(modules["policy"])
    if "ref" in modules:
        run["ref"] = frozen_copy(policy)
        run["ref"].load_state_dict(modules["ref"])
    run["optimizer"].load_state_dict(state["optimizer"])
    run["rng"].setstate(state["python_rng"])
    torch.set_rng_state(state["torch_rng"])
    run["epoch"], run["opt_steps"] = int(state["step"]), int(state["opt_steps"])
    log.info(f"[dpo] resumed from {path} (epoch {state['step']})")


def evaluate(cfg, checkpoint: Path, run_dir: Path) -> dict[str, float]:
    """`python -m rlhf.evaluate run=<dpo run>`: gold, KL to the SFT policy, length, distinct-n."""
    state, _ = ckpt.load_checkpoint(checkpoint)
    return evaluate_lm_checkpoint(cfg, checkpoint, state)


__all__ = ["train", "evaluate", "train_pairs", "reference_logps", "response_logps", "PAIR_LOSSES", "CURRICULA"]
