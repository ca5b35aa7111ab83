"""Training on preference data, shared by the DPO family (rlhf.algos.dpo), DNO (rlhf.algos.dno)
and MCTS-DPO: sequence log-probabilities of responses, reference log-probs computed once,
one epoch of a pairwise loss (rlhf.preference.losses) or of LiPO-lambda over ranked lists,
and the implicit-reward metrics every DPO paper reports.

    l(y) = log pi(y | x), summed over response tokens (Rafailov et al. 2023, Eq. 7)
    implicit reward r(y) = beta * (l(y) - l_ref(y))  (Rafailov et al. 2023, Section 5)
"""
from __future__ import annotations

import random

import torch

from agents.models import lm_forward
from rlhf.algos.base import optimizer_step
from rlhf.functional import sequence_logprob, token_logprobs
from rlhf.preference import data as prefs
from rlhf.preference.losses import NEEDS_NO_REFERENCE, PairTerms, lipo_lambda_loss, pair_loss, sequential_kl

# beta of each loss when algo.beta=auto: the value its paper (or reference code) uses
DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "simpo": 2.0, "fdpo": 0.1, "tdpo": 0.1, "asft": 0.1, "rpo": 0.1, "lipo": 0.05}


class Settings(dict):
    """Attribute access over a plain dict (pair_loss reads cfg.beta etc.)."""
    __getattr__ = dict.__getitem__


def beta_of(algo_cfg) -> float:
    """algo.beta, or the loss's default (DEFAULT_BETA) when `auto`."""
    return DEFAULT_BETA[str(algo_cfg.loss)] if str(algo_cfg.beta) == "auto" else float(algo_cfg.beta)


def make_adam(policy, algo_cfg) -> torch.optim.Optimizer:
    return torch.optim.AdamW(policy.parameters(), lr=float(algo_cfg.lr), weight_decay=0.0)


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
    chosen, rejected = [torch.zeros(0)], [torch.zeros(0)]
    for begin in range(0, len(pairs), chunk):
        part = pairs[begin:begin + chunk]
        prompts = [p.prompt_ids for p in part]
        chosen.append(response_logps(ref, prompts, [p.chosen for p in part], pad_id)[0])
        rejected.append(response_logps(ref, prompts, [p.rejected for p in part], pad_id)[0])
    return torch.cat(chosen), torch.cat(rejected)


def pair_batch_terms(policy, ref, part: list[prefs.Pair], ref_chosen, ref_rejected, pad_id: int, loss: str) -> PairTerms:
    """Chosen and rejected in one forward pass (concatenated, as the DPO reference code does)."""
    prompts = [p.prompt_ids for p in part] * 2
    responses = [p.chosen for p in part] + [p.rejected for p in part]
    n = len(part)
    if loss != "tdpo":
        logp, lengths = response_logps(policy, prompts, responses, pad_id)
        return PairTerms(logp[:n], logp[n:], ref_chosen, ref_rejected, lengths[:n], lengths[n:])
    # TDPO (Zeng et al. 2024): the reference's full next-token distributions
    logp, lengths, logits, mask = response_logps(policy, prompts, responses, pad_id, with_logits=True)
    with torch.no_grad():
        ref_logp, _, ref_logits, _ = response_logps(ref, prompts, responses, pad_id, with_logits=True)
    kl = sequential_kl(logits, ref_logits, mask)
    return PairTerms(logp[:n], logp[n:], ref_logp[:n], ref_logp[n:], lengths[:n], lengths[n:], kl[:n], kl[n:])


# --- one epoch ----------------------------------------------------------------------------------

def train_pairs(policy, ref, optimizer, pairs, ref_chosen, ref_rejected, algo_cfg, pad_id: int,
                rng: random.Random, on_step=None) -> dict[str, float]:
    """One epoch over `pairs` in an order drawn from `rng`, with the pairwise loss
    `algo_cfg.loss` (DNO calls it with loss=dpo and beta=eta). `on_step(metrics)` sees every
    optimizer step. Returns the epoch's mean metrics."""
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
    """LiPO's label psi_k (Liu et al. 2024) from pairwise judgements: the mean pairwise win
    rate of response k against the rest of its list (ties count half)."""
    k = len(scores)
    return [sum(1.0 if s > t else 0.5 if s == t else 0.0 for j, t in enumerate(scores) if j != i) / (k - 1)
            for i, s in enumerate(scores)]


def train_lists(policy, ref, optimizer, lists, algo_cfg, pad_id: int, rng: random.Random, on_step=None) -> dict[str, float]:
    """One epoch of LiPO-lambda (Liu et al. 2024) over ranked lists."""
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
            on_step({"dpo/loss": losses[-1]})
    return {"dpo/loss": sum(losses) / max(len(losses), 1)}
