"""Every DPO-family loss against a closed form computed by hand on small tensors, the known
special cases, the reduction each loss must use, and the sign of the gradient."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from rlhf.preference import losses as L


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def terms(chosen=-4.0, rejected=-6.0, ref_chosen=-5.0, ref_rejected=-5.5, len_chosen=4.0, len_rejected=2.0,
          kl_chosen=0.3, kl_rejected=0.7, grad=False):
    t = {k: torch.tensor([v], dtype=torch.float64, requires_grad=grad and k in ("chosen", "rejected"))
         for k, v in dict(chosen=chosen, rejected=rejected, ref_chosen=ref_chosen, ref_rejected=ref_rejected,
                          len_chosen=len_chosen, len_rejected=len_rejected, kl_chosen=kl_chosen,
                          kl_rejected=kl_rejected).items()}
    return L.PairTerms(**t)


CFG = OmegaConf.create(dict(beta=0.1, label_smoothing=0.0, simpo_gamma_beta_ratio=0.25, f_divergence="reverse_kl",
                            f_alpha=0.5, tdpo_alpha=0.5, tdpo_variant=2, asft_lambda=0.1, sft_weight=0.005,
                            sft_reduction="sum"))

# By hand for the default terms: Delta_w = -4 - -5 = 1, Delta_l = -6 - -5.5 = -0.5, h = 1.5.
H = 1.5


def test_dpo_closed_form_and_label_smoothing():
    t = terms()
    assert L.dpo_loss(t.h, 0.1).item() == pytest.approx(-math.log(sig(0.15)))
    smoothed = L.dpo_loss(t.h, 0.1, label_smoothing=0.2).item()
    assert smoothed == pytest.approx(-0.8 * math.log(sig(0.15)) - 0.2 * math.log(sig(-0.15)))


def test_every_loss_at_h_zero_identical_pair():
    """Identical chosen and rejected: h = 0, so DPO = -log sig(0) = log 2 and IPO = (0 - 1/(2 tau))^2 = 1/(4 tau^2)
    (the IPO loss of Azar et al. 2024, (h - 1/(2 tau))^2)."""
    same = terms(chosen=-3.0, rejected=-3.0, ref_chosen=-3.5, ref_rejected=-3.5, len_chosen=3, len_rejected=3)
    assert L.dpo_loss(same.h, 0.1).item() == pytest.approx(math.log(2))
    assert L.ipo_loss(same, tau=0.1).item() == pytest.approx(1 / (4 * 0.1 ** 2))
    assert L.fdpo_loss(same, 0.1, "forward_kl").item() == pytest.approx(math.log(2))
    assert L.simpo_loss(same, 2.0, gamma=0.0).item() == pytest.approx(math.log(2))


def test_ipo_uses_length_averaged_log_ratios():
    t = terms()
    h_bar = 1.0 / 4 - (-0.5) / 2  # 0.5
    assert L.ipo_loss(t, tau=0.1).item() == pytest.approx((h_bar - 5.0) ** 2)
    # The same summed log-ratios at other lengths give another loss: it is length-normalized.
    assert L.ipo_loss(terms(len_chosen=8.0), tau=0.1).item() != pytest.approx(L.ipo_loss(t, tau=0.1).item())


def test_simpo_closed_form_ignores_reference():
    t = terms()
    expected = -math.log(sig(2.0 * -4 / 4 - 2.0 * -6 / 2 - 0.5))
    assert L.simpo_loss(t, beta=2.0, gamma=0.5).item() == pytest.approx(expected)
    assert L.simpo_loss(terms(ref_chosen=0.0), 2.0, 0.5).item() == pytest.approx(expected)


@pytest.mark.parametrize("divergence,fprime", [
    ("reverse_kl", lambda d: d),
    ("forward_kl", lambda d: -math.exp(-d)),
    ("js_divergence", lambda d: math.log(2 * math.exp(d) / (1 + math.exp(d)))),
    ("alpha_divergence", lambda d: (1 - math.exp(d) ** -0.3) / 0.3),
])
def test_fdpo_closed_forms(divergence, fprime):
    t = terms()
    expected = -math.log(sig(0.1 * (fprime(1.0) - fprime(-0.5))))
    assert L.fdpo_loss(t, 0.1, divergence, alpha=0.3).item() == pytest.approx(expected)


def test_fdpo_reverse_kl_is_dpo():
    t = terms()
    assert L.fdpo_loss(t, 0.1, "reverse_kl").item() == pytest.approx(L.dpo_loss(t.h, 0.1).item())


def test_fdpo_rejects_unknown_divergence_and_bad_alpha():
    with pytest.raises(ValueError, match="valid choices: reverse_kl"):
        L.fdpo_loss(terms(), 0.1, "hellinger")
    with pytest.raises(ValueError, match="alpha in"):
        L.fdpo_loss(terms(), 0.1, "alpha_divergence", alpha=1.5)


def test_fdpo_forward_kl_stays_finite_for_huge_log_ratios():
    """Log-ratios of +-499: f'(u) = -1/u = -exp(-delta) is evaluated with delta clamped to +-EXP_CLAMP,
    so the right pair gives loss 0 and the wrong-way pair softplus(beta (e^C - e^-C)) ~ beta e^C,
    both finite (exp(499) would overflow fp32)."""
    c = L.EXP_CLAMP
    right = terms(chosen=-1.0, ref_chosen=-500.0, rejected=-500.0, ref_rejected=-1.0)
    assert L.fdpo_loss(right, 0.1, "forward_kl").item() == pytest.approx(0.0, abs=1e-12)
    wrong = terms(chosen=-500.0, ref_chosen=-1.0, rejected=-1.0, ref_rejected=-500.0)
    x = 0.1 * (math.exp(c) - math.exp(-c))
    assert L.fdpo_loss(wrong, 0.1, "forward_kl").item() == pytest.approx(x + math.log1p(math.exp(-x)), rel=1e-12)


def test_tdpo_both_variants_closed_form():
    t = terms()
    tdpo1 = -math.log(sig(0.1 * (H + 0.3 - 0.7)))
    tdpo2 = -math.log(sig(0.1 * (H + 0.5 * (0.3 - 0.7))))
    assert L.tdpo_loss(t, 0.1, alpha=0.5, variant=1).item() == pytest.approx(tdpo1)
    assert L.tdpo_loss(t, 0.1, alpha=0.5, variant=2).item() == pytest.approx(tdpo2)


def test_tdpo2_stops_gradient_of_chosen_kl():
    kl_w = torch.tensor([0.3], requires_grad=True)
    kl_l = torch.tensor([0.7], requires_grad=True)
    t = terms()
    t.kl_chosen, t.kl_rejected = kl_w, kl_l
    L.tdpo_loss(t, 0.1, variant=2).sum().backward()
    assert kl_w.grad is None or kl_w.grad.abs().item() == 0.0
    # d/dD_l of -log sig(beta (h + alpha (D_w - D_l))) = beta * alpha * (1 - sig(z)), z = 0.1 (1.5 + 0.5 (0.3 - 0.7))
    assert kl_l.grad.item() == pytest.approx(0.1 * 0.5 * (1 - sig(0.1 * (H + 0.5 * (0.3 - 0.7)))), rel=1e-6)


def test_sequential_kl_matches_hand_computation():
    policy_logits = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]]])
    ref_logits = torch.tensor([[[0.0, 0.0], [0.0, 1.0], [0.0, 9.0]]])
    mask = torch.tensor([[0.0, 1.0, 0.0]])  # only position 1 is a response token
    p = torch.softmax(ref_logits[0, 1], -1)
    q = torch.softmax(policy_logits[0, 1], -1)
    expected = (p * (p.log() - q.log())).sum()
    assert L.sequential_kl(policy_logits, ref_logits, mask).item() == pytest.approx(expected.item(), rel=1e-5)


def test_asft_equals_its_simplified_form():
    """-log P_w - lambda[log sig(r_w) + log sig(-r_l)] = -(1 + lambda) log P_w - lambda log(1 - P_l)."""
    t = terms()
    p_w, p_l = math.exp(-4 / 4), math.exp(-6 / 2)
    expected = -(1 + 0.1) * math.log(p_w) - 0.1 * math.log(1 - p_l)
    assert L.asft_loss(t, lam=0.1).item() == pytest.approx(expected)


def test_asft_finite_when_likelihood_is_one():
    """P_w = P_l = 1 (log P = 0): log P is clamped to max_log_prob = -1e-6, so log(1 - P) = log(1 - e^-1e-6)
    ~ -13.8 instead of -inf, and the loss is the closed form at that clamp."""
    t = terms(chosen=0.0, rejected=0.0)
    log_p = -1e-6
    log_odds = log_p - math.log(-math.expm1(log_p))
    expected = -log_p - 0.1 * (math.log(sig(log_odds)) + math.log(sig(-log_odds)))
    assert L.asft_loss(t, lam=0.1).item() == pytest.approx(expected, rel=1e-9)


def test_rpo_sum_and_mean_reductions():
    t = terms()
    dpo = -math.log(sig(0.1 * H))
    assert L.rpo_loss(t, 0.1, 0.005, "sum").item() == pytest.approx(dpo + 0.005 * 0.1 * 4.0)
    assert L.rpo_loss(t, 0.1, 0.005, "mean").item() == pytest.approx(dpo + 0.005 * 4.0 / 4)
    with pytest.raises(ValueError, match="valid choices: sum, mean"):
        L.rpo_loss(t, 0.1, 0.005, "max")


def test_lipo_closed_form_on_a_list_of_three():
    scores = torch.tensor([[0.2, 0.5, -0.1]])
    labels = torch.tensor([[1.0, 0.5, 0.0]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    # ranks by score (descending): item1 -> 1, item0 -> 2, item2 -> 3
    rank = [2, 1, 3]
    gain = [2 ** x - 1 for x in (1.0, 0.5, 0.0)]
    disc = [1 / math.log2(1 + r) for r in rank]
    s = scores[0].tolist()
    expected = 0.0
    for i in range(3):
        for j in range(3):
            if labels[0, i] > labels[0, j]:
                lam = abs(gain[i] - gain[j]) * abs(disc[i] - disc[j])
                expected += lam * math.log(1 + math.exp(-(s[i] - s[j])))
    assert L.lipo_lambda_loss(scores, labels, valid).item() == pytest.approx(expected, rel=1e-6)


def test_lipo_with_list_of_two_reduces_to_dpo():
    """K = 2 and constant weight: log(1 + exp(-(s_w - s_l))) with s = beta * Delta is DPO."""
    t = terms()
    scores = 0.1 * torch.stack([t.delta_chosen, t.delta_rejected], -1)
    lipo = L.lipo_lambda_loss(scores, torch.tensor([[1.0, 0.0]], dtype=torch.float64),
                              torch.ones(1, 2, dtype=torch.bool), lambda_weight=False)
    assert lipo.item() == pytest.approx(L.dpo_loss(t.h, 0.1).item())
    # With the lambda weight it is DPO times the constant |G_1 - G_2| |1/D(1) - 1/D(2)|.
    weighted = L.lipo_lambda_loss(scores, torch.tensor([[1.0, 0.0]], dtype=torch.float64),
                                  torch.ones(1, 2, dtype=torch.bool))
    assert weighted.item() == pytest.approx(L.dpo_loss(t.h, 0.1).item() * (1 - 1 / math.log2(3)))


def test_lipo_ties_and_padding_make_no_pairs():
    scores = torch.tensor([[0.3, -0.2, 9.0]])
    valid = torch.tensor([[True, True, False]])
    assert L.lipo_lambda_loss(scores, torch.tensor([[0.5, 0.5, 0.0]]), valid).item() == 0.0
    short = torch.tensor([[True, False, False]])
    assert L.lipo_lambda_loss(scores, torch.tensor([[1.0, 0.0, 0.0]]), short).item() == 0.0


def test_rank_positions_break_ties_by_position():
    ranks = L.rank_positions(torch.tensor([[1.0, 1.0, 2.0]]), torch.ones(1, 3, dtype=torch.bool))
    assert ranks.tolist() == [[2.0, 3.0, 1.0]]


@pytest.mark.parametrize("name", L.PAIR_LOSSES)
def test_gradient_raises_chosen_and_lowers_rejected(name):
    t = terms(grad=True)
    L.pair_loss(name, t, CFG).sum().backward()
    assert t.chosen.grad.item() < 0, f"{name}: descending the loss must raise log pi(y_w)"
    assert t.rejected.grad.item() > 0, f"{name}: descending the loss must lower log pi(y_l)"


def test_pair_loss_rejects_unknown_name():
    with pytest.raises(ValueError, match="valid choices: dpo, ipo"):
        L.pair_loss("kto", terms(), CFG)
