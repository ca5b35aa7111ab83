"""The DPO family of direct-alignment losses, one function each, as written in each paper.

Conventions shared by every loss:
  * l(y) = log pi_theta(y|x), summed over response tokens only (prompt tokens masked);
  * Delta(y) = l(y) - l_ref(y), the implicit reward up to beta;
  * h = Delta(y_w) - Delta(y_l);
  * every function returns the per-example loss [B]; callers average over the batch.

Which reduction each loss uses is part of the method and is unit-tested: DPO, f-DPO,
TDPO and RPO use summed log-ratios; IPO, SimPO and ASFT length-normalize.

    DPO     -log sig(beta h)                      (cDPO: label smoothing eps)
    IPO     (h_bar - 1/(2 tau))^2                 h_bar from length-averaged log-ratios
    SimPO   -log sig(beta l_w/|y_w| - beta l_l/|y_l| - gamma)       no reference
    f-DPO   -log sig(beta f'(u_w) - beta f'(u_l)),  u = exp(Delta)
    TDPO    -log sig(beta [h + D_w - D_l])        (TDPO1)
            -log sig(beta [h + alpha (sg(D_w) - D_l)])               (TDPO2)
            D(y) = sum_t KL(pi_ref(.|x,y<t) || pi_theta(.|x,y<t)) over the full vocabulary
    ASFT    -log P_w - lambda [log sig(r_w) + log sig(-r_l)],  P = exp(l/|y|), r = log P/(1-P)
    RPO     DPO + sft_weight * NLL(y_w)           (sum: eta*beta*(-l_w); mean: w*(-l_w/|y_w|))
    LiPO-l  sum_{psi_i > psi_j} Lambda_ij log(1 + exp(-(s_i - s_j))),  s = beta Delta
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

PAIR_LOSSES = ("dpo", "ipo", "simpo", "fdpo", "tdpo", "asft", "rpo")
LIST_LOSSES = ("lipo",)
LOSSES = PAIR_LOSSES + LIST_LOSSES
F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
NEEDS_NO_REFERENCE = ("simpo", "asft")
EXP_CLAMP = 50.0  # f-DPO exponentiates sequence-level log-ratios: keep exp() finite in fp32


@dataclass
class PairTerms:
    """Sequence-level quantities of a batch of (chosen, rejected) pairs, all [B]."""
    chosen: torch.Tensor  # l_theta(y_w), summed over response tokens
    rejected: torch.Tensor  # l_theta(y_l)
    ref_chosen: torch.Tensor  # l_ref(y_w)
    ref_rejected: torch.Tensor  # l_ref(y_l)
    len_chosen: torch.Tensor  # |y_w| in tokens
    len_rejected: torch.Tensor  # |y_l|
    kl_chosen: torch.Tensor | None = None  # TDPO's D(y_w) (needs reference logits)
    kl_rejected: torch.Tensor | None = None

    @property
    def delta_chosen(self) -> torch.Tensor:
        return self.chosen - self.ref_chosen

    @property
    def delta_rejected(self) -> torch.Tensor:
        return self.rejected - self.ref_rejected

    @property
    def h(self) -> torch.Tensor:
        return self.delta_chosen - self.delta_rejected


def dpo_loss(h: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Rafailov et al. 2023; with label_smoothing eps the conservative cDPO form."""
    return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def ipo_loss(t: PairTerms, tau: float) -> torch.Tensor:
    """Azar et al. 2023, with length-averaged log-ratios (as TRL, confirmed by the authors)."""
    h_bar = t.delta_chosen / t.len_chosen - t.delta_rejected / t.len_rejected
    return (h_bar - 1.0 / (2.0 * tau)) ** 2


def simpo_loss(t: PairTerms, beta: float, gamma: float) -> torch.Tensor:
    """Meng et al. 2024: length-normalized policy log-likelihood as the reward, margin gamma,
    no reference model."""
    margin = beta * t.chosen / t.len_chosen - beta * t.rejected / t.len_rejected - gamma
    return -F.logsigmoid(margin)


def f_prime(delta: torch.Tensor, divergence: str, alpha: float = 0.5) -> torch.Tensor:
    """f'(u) at u = exp(delta) for the f-divergences of Wang et al. 2023 (additive constants
    dropped: they cancel in f'(u_w) - f'(u_l))."""
    if divergence == "reverse_kl":
        return delta
    if divergence == "forward_kl":
        return -torch.exp(-delta.clamp(-EXP_CLAMP, EXP_CLAMP))
    if divergence == "js_divergence":  # log(2u / (1 + u)) = log 2 + log sig(delta)
        return F.logsigmoid(delta)
    if divergence == "alpha_divergence":
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"f-DPO alpha_divergence needs alpha in (0, 1), got {alpha}")
        return (1.0 - torch.exp(-alpha * delta.clamp(-EXP_CLAMP, EXP_CLAMP))) / alpha
    raise ValueError(f"f-DPO divergence {divergence!r} is not valid; valid choices: {', '.join(F_DIVERGENCES)}")


def fdpo_loss(t: PairTerms, beta: float, divergence: str, alpha: float = 0.5) -> torch.Tensor:
    return -F.logsigmoid(beta * (f_prime(t.delta_chosen, divergence, alpha) - f_prime(t.delta_rejected, divergence, alpha)))


def sequential_kl(policy_logits: torch.Tensor, ref_logits: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """TDPO's D(y) = sum over response positions of KL(pi_ref || pi_theta) over the whole
    vocabulary. Logits [B, L, V] aligned with the tokens they predict (position t holds the
    distribution of token t, like rlhf.functional.token_logprobs); mask [B, L]. fp32."""
    logp = F.log_softmax(policy_logits.float(), dim=-1)
    ref_logp = F.log_softmax(ref_logits.float(), dim=-1)
    per_token = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    return (per_token * response_mask).sum(-1)


def tdpo_loss(t: PairTerms, beta: float, alpha: float = 0.5, variant: int = 2) -> torch.Tensor:
    """Zeng et al. 2024 (token-level DPO). TDPO2 stops the gradient of D(y_w)."""
    if t.kl_chosen is None or t.kl_rejected is None:
        raise ValueError("TDPO needs kl_chosen / kl_rejected (sequential KL from reference logits)")
    if variant == 1:
        return -F.logsigmoid(beta * (t.h + t.kl_chosen - t.kl_rejected))
    if variant == 2:
        return -F.logsigmoid(beta * (t.h + alpha * (t.kl_chosen.detach() - t.kl_rejected)))
    raise ValueError(f"TDPO variant {variant!r} is not valid; valid choices: 1, 2")


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends (Maechler 2012)."""
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def asft_loss(t: PairTerms, lam: float, max_log_prob: float = -1e-6) -> torch.Tensor:
    """Aligned SFT (Wang et al. 2024): NLL of the chosen response plus a binary classifier on
    length-normalized likelihoods P = exp(l/|y|); no reference model. log P is clamped below
    0 so log(1 - P) stays finite."""
    log_p_w = (t.chosen / t.len_chosen).clamp(max=max_log_prob)
    log_p_l = (t.rejected / t.len_rejected).clamp(max=max_log_prob)
    log_odds_w = log_p_w - log1mexp(log_p_w)
    log_odds_l = log_p_l - log1mexp(log_p_l)
    return -log_p_w - lam * (F.logsigmoid(log_odds_w) + F.logsigmoid(-log_odds_l))


def rpo_loss(t: PairTerms, beta: float, sft_weight: float, sft_reduction: str = "sum") -> torch.Tensor:
    """Liu et al. 2024: DPO plus NLL of the chosen response. `sum` is the official code
    (eta * beta * -l_w); `mean` is TRL's token-averaged recipe (weight * -l_w / |y_w|)."""
    if sft_reduction == "sum":
        nll = sft_weight * beta * -t.chosen
    elif sft_reduction == "mean":
        nll = sft_weight * -t.chosen / t.len_chosen
    else:
        raise ValueError(f"rpo sft_reduction {sft_reduction!r} is not valid; valid choices: sum, mean")
    return dpo_loss(t.h, beta) + nll


def rank_positions(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """1-based rank of each list item by score, descending; ties broken by position (stable);
    invalid items rank last. [B, K] -> [B, K] float."""
    masked = torch.where(valid, scores, torch.full_like(scores, -torch.inf))
    order = torch.sort(masked, dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    positions = torch.arange(1, scores.shape[-1] + 1, device=scores.device).expand_as(order)
    ranks.scatter_(-1, order, positions)
    return ranks.float()


def lipo_lambda_loss(scores: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                     lambda_weight: bool = True, normalize: bool = False) -> torch.Tensor:
    """LiPO-lambda (Liu et al. 2024), per list. scores s_k = beta * Delta(y_k) [B, K];
    labels psi_k in [0, 1]; valid [B, K] bool (lists padded to K). Pairs with psi_i > psi_j
    (strict: ties make no pair) weighted by the LambdaRank weight
    |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|, G = 2^psi - 1, D(tau) = log2(1 + tau), tau the
    rank under the current scores (a constant: no gradient through ranks). Lists with fewer
    than two valid items contribute 0."""
    with torch.no_grad():
        gain = 2.0 ** labels - 1.0
        discount = 1.0 / torch.log2(1.0 + rank_positions(scores.detach(), valid))
        weight = (gain[:, :, None] - gain[:, None, :]).abs() * (discount[:, :, None] - discount[:, None, :]).abs()
        if not lambda_weight:
            weight = torch.ones_like(weight)
        better = (labels[:, :, None] > labels[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    pair_loss = F.softplus(-(scores[:, :, None] - scores[:, None, :]))  # log(1 + exp(-(s_i - s_j)))
    per_list = (weight * pair_loss * better).sum((-1, -2))
    if normalize:
        per_list = per_list / better.sum((-1, -2)).clamp(min=1)
    return per_list


def pair_loss(name: str, terms: PairTerms, cfg) -> torch.Tensor:
    """Per-example loss of the pairwise method `name` with its settings from `cfg` (the algo
    config: beta, label_smoothing, simpo_gamma_beta_ratio, f_divergence, f_alpha,
    tdpo_alpha, tdpo_variant, asft_lambda, sft_weight, sft_reduction)."""
    beta = float(cfg.beta)
    if name == "dpo":
        return dpo_loss(terms.h, beta, float(cfg.label_smoothing))
    if name == "ipo":
        return ipo_loss(terms, tau=beta)
    if name == "simpo":
        return simpo_loss(terms, beta, gamma=float(cfg.simpo_gamma_beta_ratio) * beta)
    if name == "fdpo":
        return fdpo_loss(terms, beta, str(cfg.f_divergence), float(cfg.f_alpha))
    if name == "tdpo":
        return tdpo_loss(terms, beta, float(cfg.tdpo_alpha), int(cfg.tdpo_variant))
    if name == "asft":
        return asft_loss(terms, float(cfg.asft_lambda))
    if name == "rpo":
        return rpo_loss(terms, beta, float(cfg.sft_weight), str(cfg.sft_reduction))
    raise ValueError(f"loss {name!r} is not a pairwise loss; valid choices: {', '.join(PAIR_LOSSES)}")
