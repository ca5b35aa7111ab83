"""Shared math for every algorithm: masked statistics, log-probs, GAE, KL estimators, losses.

Position convention (used everywhere in this framework):
    Every per-token tensor has shape [batch, seq_len] and is aligned with the token it is
    about. `logprobs[:, t]` is log pi(token_t | tokens_<t), computed from the logits at
    position t-1; `values[:, t]` is V(state before token t), read from the hidden state at
    position t-1. Position 0 is never an action (it has no predecessor) and holds 0.
    `action_mask[:, t] = 1` marks tokens the policy generated (the loss is taken there);
    prompt, observation and padding tokens have 0.

Losses are minimized. Functions here take plain tensors, never models, so each can be
tested against a hand computation.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from agents.models import aligned, position_ids_from_mask  # noqa: F401  (shared math defined beside its users)
from agents.rewards import ENSEMBLE_OBJECTIVES, ensemble_objective  # noqa: F401

# ---------------------------------------------------------------------------------------
# masked statistics


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    x = torch.where(mask.bool(), x, torch.zeros_like(x))
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over positions where mask is 1; values at masked positions (even NaN) are ignored."""
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    centered = torch.where(mask.bool(), x - mean, torch.zeros_like(x))
    n = mask.sum()
    denom = (n - 1).clamp(min=1) if unbiased else n.clamp(min=1)
    return (centered**2).sum() / denom


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked positions of the whole batch; 0 at masked positions.

    With a single valid element the std is 0: the eps guard keeps the result finite."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    white = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        white = white + mean
    return torch.where(mask.bool(), white, torch.zeros_like(white))


# ---------------------------------------------------------------------------------------
# log-probabilities


def constrain_logits(logits: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """Constrained decoding's distribution: logits [..., V] with -inf outside the ids each
    position may take, `allowed` [..., K] (-1 padding; a position whose first entry is -1 is
    free). log_softmax of the result is pi renormalized over the allowed ids."""
    if allowed is None:
        return logits
    allowed = allowed.long()
    constrained = allowed[..., 0] >= 0
    if not bool(constrained.any()):
        return logits
    vocab = logits.shape[-1]
    index = torch.where(allowed >= 0, allowed, vocab)  # padding lands in a spare column
    outside = torch.ones((*logits.shape[:-1], vocab + 1), dtype=torch.bool, device=logits.device)
    outside = outside.scatter(-1, index, False)[..., :vocab] & constrained.unsqueeze(-1)
    return logits.masked_fill(outside, float("-inf"))


def entropy_of(logp: torch.Tensor) -> torch.Tensor:
    """-sum p log p over the last dim; ids at -inf (outside a constraint) contribute 0."""
    return -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor,
                   temperature: float = 1.0, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """log pi(token_t | tokens_<t) aligned to token t; column 0 is 0. Computed in fp32.
    `allowed` [B, L, K] (aligned to token t): constrained positions' ids (constrain_logits)."""
    logits = logits[:, :-1].float() / temperature
    if allowed is not None:
        logits = constrain_logits(logits, allowed[:, 1:])
    taken = input_ids[:, 1:].unsqueeze(-1)
    logp = torch.gather(F.log_softmax(logits, dim=-1), -1, taken).squeeze(-1)
    return F.pad(logp, (1, 0))


def action_token_logprobs(hidden: torch.Tensor, head, input_ids: torch.Tensor, action_mask: torch.Tensor,
                          temperature: float = 1.0, entropy: bool = False,
                          allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """token_logprobs (and token_entropy) at the positions where action_mask is 1, 0 elsewhere,
    from the last hidden states [B, L, d] and the LM head: the head and the log-softmax run
    only on the hidden states that predict a generated token (position t-1 for token t).
    `allowed` [B, L, K]: constrained decoding's ids per token (constrain_logits)."""
    rows, cols = action_mask[:, 1:].nonzero(as_tuple=True)
    logits = head(hidden[rows, cols]).float() / temperature
    if allowed is not None:
        logits = constrain_logits(logits, allowed[rows, cols + 1])
    logp_all = F.log_softmax(logits, dim=-1)
    taken = logp_all.gather(-1, input_ids[rows, cols + 1].unsqueeze(-1)).squeeze(-1)
    at = (rows, cols + 1)
    logp = torch.zeros(action_mask.shape, dtype=taken.dtype, device=taken.device).index_put(at, taken)
    if not entropy:
        return logp, None
    ent = entropy_of(logp_all)
    return logp, torch.zeros_like(logp).index_put(at, ent)


def token_entropy(logits: torch.Tensor, temperature: float = 1.0, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Entropy of the next-token distribution, aligned like token_logprobs."""
    logits = logits[:, :-1].float() / temperature
    if allowed is not None:
        logits = constrain_logits(logits, allowed[:, 1:])
    return F.pad(entropy_of(F.log_softmax(logits, dim=-1)), (1, 0))


def sequence_logprob(logprobs: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """Sum over generated tokens: log pi(y | x) of a whole response (or all turns)."""
    return masked_sum(logprobs, action_mask, dim=-1)


# ---------------------------------------------------------------------------------------
# KL estimators (Schulman, "Approximating KL divergence"), per token, for samples from pi.


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1",
                clamp: float = 10.0) -> torch.Tensor:
    """Estimate of KL(pi || ref) at each sampled token.

    k1 = log pi - log ref          (unbiased, can be negative)
    k2 = (log pi - log ref)^2 / 2  (biased, low variance)
    k3 = exp(d) - 1 - d, d = log ref - log pi   (unbiased, always >= 0)
    The log-ratio is clamped to +-clamp before exp, as OpenRLHF does, against overflow."""
    log_ratio = (logp - ref_logp).clamp(-clamp, clamp)
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        d = -log_ratio
        return torch.expm1(d) - d
    raise ValueError(f"unknown KL estimator '{kind}'; valid choices: k1, k2, k3")


# ---------------------------------------------------------------------------------------
# advantages


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95, next_value: torch.Tensor | None = None,
        dones: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over the masked positions of each row.

    Only positions with mask 1 are steps of the trajectory; masked positions (prompt,
    observation tokens between turns, padding) are skipped, so their rewards and values
    change nothing. By default the value after the last step is 0 (episodes end in the
    batch). For control rollouts (each row = one env's fixed-length slice of experience):
      next_value [rows]: V(s) of the state after the row's last step, bootstrapped unless
          that step ended an episode;
      dones [rows, T]: 1 where the step ended an episode; nothing flows back across it
          (the step's own delta uses no next value).
    Returns (advantages, returns = advantages + values), both 0 where mask is 0."""
    mask = mask.bool()
    advantages = torch.zeros_like(values)
    next_v = torch.zeros_like(values[:, 0]) if next_value is None else next_value.to(values.dtype).clone()
    next_adv = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        m = mask[:, t]
        if dones is not None:
            alive = 1.0 - dones[:, t].to(values.dtype)
            next_v, next_adv = next_v * alive, next_adv * alive
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        adv = delta + gamma * lam * next_adv
        next_adv = torch.where(m, adv, next_adv)
        next_v = torch.where(m, values[:, t], next_v)
        advantages[:, t] = torch.where(m, adv, torch.zeros_like(adv))
    returns = torch.where(mask, advantages + values, torch.zeros_like(values))
    return advantages, returns


# ---------------------------------------------------------------------------------------
# PPO losses (token level)


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip: float = 0.2,
                        max_log_ratio: float = 20.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO: masked mean of max(-A*rho, -A*clip(rho, 1-eps, 1+eps)), rho = pi/pi_old."""
    log_ratio = (logp - old_logp).clamp(-max_log_ratio, max_log_ratio)
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask),
                 "approxkl": masked_mean(0.5 * log_ratio**2, mask),
                 "ratio": masked_mean(ratio, mask)}
    return loss, stats


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       mask: torch.Tensor, clip: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """1/2 masked mean of max((V - R)^2, (V_clip - R)^2), V_clip = V_old + clip(V - V_old)."""
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    unclipped_err = (values - returns) ** 2
    clipped_err = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_err, clipped_err), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped_err > unclipped_err).float(), mask)}
    return loss, stats


# ---------------------------------------------------------------------------------------
# pairwise losses


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Reward-model loss: -log sigma(r_chosen - r_rejected), mean over pairs."""
    return -F.logsigmoid(chosen - rejected).mean()


def clipped_importance_weight(log_ratio_sum: torch.Tensor, max_ratio: float) -> torch.Tensor:
    """clip(exp(x), 1/C, C) computed in log space (x can be tens of nats), detached."""
    bound = math.log(max_ratio)
    return log_ratio_sum.detach().clamp(-bound, bound).exp()


def clipped_surrogate(signal: torch.Tensor, value: torch.Tensor, old_value: torch.Tensor,
                      clip: float) -> torch.Tensor:
    """max(-signal*value, -signal*clip(value, old-clip, old+clip)), elementwise.

    The PPO-style trust region on a log-probability (or a difference of them): once `value`
    has moved more than `clip` from `old_value` in the direction `signal` favours, the
    gradient is zero. P3O uses it on sequence log-probs (separate) and their difference (joint)."""
    clipped = torch.maximum(torch.minimum(value, old_value + clip), old_value - clip)
    return torch.maximum(-signal * value, -signal * clipped)


# ---------------------------------------------------------------------------------------
# reward-model ensembles and best-of-n (Coste et al. 2024)

def best_of_n_kl(n: int) -> float:
    """Analytic KL(best-of-n policy || base policy) = log n - (n - 1) / n (Stiennon et al.)."""
    return math.log(n) - (n - 1) / n


def best_of_n_expectation(selection: np.ndarray, values: np.ndarray, ns: list[int]) -> list[float]:
    """Unbiased estimate, from N samples, of E[value of the sample that ranks best by
    `selection` among n drawn without replacement], for each n <= N.

    Sort samples by selection score (ties broken by sample index, so a record's value always
    travels with its own score). The i-th smallest (1-based) is the best of a random n-subset
    with probability C(i-1, n-1) / C(N, n); those weights are computed in log space."""
    selection, values = np.asarray(selection, dtype=np.float64), np.asarray(values, dtype=np.float64)
    n_total = len(selection)
    order = np.lexsort((np.arange(n_total), selection))  # by score, then by index
    ranked = values[order]
    i = np.arange(1, n_total + 1)
    out = []
    for n in ns:
        if not 1 <= n <= n_total:
            raise ValueError(f"best-of-n needs 1 <= n <= N={n_total}, got n={n}")
        log_w = np.full(n_total, -np.inf)
        valid = i >= n
        log_w[valid] = (_log_comb(i[valid] - 1, n - 1) - _log_comb(n_total, n))
        out.append(float(np.sum(np.exp(log_w) * ranked)))
    return out


def _log_comb(n, k):
    n, k = np.asarray(n, dtype=np.float64), np.asarray(k, dtype=np.float64)
    lgamma = np.vectorize(math.lgamma)
    return lgamma(n + 1) - lgamma(k + 1) - lgamma(n - k + 1)


# ---------------------------------------------------------------------------------------
# value-guided decoding (VAS, Han et al. 2024)


def value_guided_logits(logits: torch.Tensor, candidate_ids: torch.Tensor, candidate_values: torch.Tensor,
                        betas: list[float], restrict_to_candidates: bool = False) -> torch.Tensor:
    """Base log-probs plus sum_i beta_i * (v_i(a) - mean_K v_i) on the candidate tokens K.

    logits [B, V]; candidate_ids [B, K] (the base top-k); candidate_values [M, B, K] = V_i(s.a)
    for M value models. Tokens outside K keep their base log-prob (or get -inf when
    restrict_to_candidates). All betas 0 gives back the base distribution exactly."""
    out = torch.log_softmax(logits.float(), dim=-1)
    centered = candidate_values - candidate_values.mean(-1, keepdim=True)
    bonus = torch.zeros_like(centered[0])
    for i, beta in enumerate(betas):
        bonus = bonus + beta * centered[i]
    if restrict_to_candidates:
        kept = torch.full_like(out, float("-inf"))
        kept.scatter_(1, candidate_ids, out.gather(1, candidate_ids))
        out = kept
    return out.scatter_add(1, candidate_ids, bonus.to(out.dtype))


# ---------------------------------------------------------------------------------------
# Lagrangian mixing of constrained RLHF (Moskovitz et al. 2024)

CONSTRAINT_FORMS = ("mu", "xi", "all")  # v_i >= theta_i | v_i = theta_i | v_i <= theta_i (with v_i in the task)


def squash_multipliers(raw: torch.Tensor, form: str) -> torch.Tensor:
    """Multipliers from their raw parameters: sigmoid (inequality: mu, all) in (0, 1),
    tanh (equality: xi) in (-1, 1)."""
    if form not in CONSTRAINT_FORMS:
        raise ValueError(f"constraint form '{form}' unknown; valid choices: {', '.join(CONSTRAINT_FORMS)}")
    return torch.tanh(raw) if form == "xi" else torch.sigmoid(raw)


def mixed_advantage(task_adv: torch.Tensor, constraint_adv: torch.Tensor, multipliers: torch.Tensor,
                    form: str) -> torch.Tensor:
    """The policy's advantage from the task's (KL) advantage A_0 [...] and the constraints'
    A_i [..., N] under squashed multipliers w [N]:
      mu, xi:  (N - sum_i w_i) A_0 + sum_i w_i A_i       (weights sum to N)
      all:     A_0 + sum_i (1 - w_i) A_i                 (task = KL + every component)"""
    w = multipliers.to(constraint_adv.dtype)
    if form == "all":
        return task_adv + (constraint_adv * (1.0 - w)).sum(-1)
    return (len(w) - w.sum()) * task_adv + (constraint_adv * w).sum(-1)


def constraint_violation(values: torch.Tensor, thresholds: torch.Tensor, form: str,
                         tolerance: float = 0.0) -> torch.Tensor:
    """Signed distance of each constrained return from its threshold, v_i - theta_i, with
    a dead band |v_i - theta_i| <= tolerance * |theta_i| counted as 0 (equality constraints
    oscillate without one)."""
    gap = values - thresholds
    band = tolerance * thresholds.abs()
    return torch.sign(gap) * (gap.abs() - band).clamp(min=0.0)


def lagrange_loss(multipliers: torch.Tensor, violation: torch.Tensor, form: str) -> torch.Tensor:
    """Loss whose gradient descent moves the multipliers (violation held constant):
      mu, xi:  sum_i w_i (v_i - theta_i)   -> w_i rises while v_i < theta_i
      all:    -sum_i w_i (v_i - theta_i)   -> w_i rises while v_i > theta_i (upper bounds)"""
    sign = -1.0 if form == "all" else 1.0
    return sign * (multipliers * violation.detach()).sum()
