"""Hand-computed checks of the shared math in rlhf.functional (pure tensor math, no models).

Every expected value below is worked out with plain Python floats, the math module or a small
explicit loop, never with rlhf.functional itself.
"""
from __future__ import annotations

import math

import pytest
import torch

from rlhf.functional import (bradley_terry_loss, clipped_importance_weight, clipped_policy_loss,
                             clipped_surrogate, clipped_value_loss, gae, kl_estimate, masked_mean,
                             masked_whiten, token_logprobs)

F64 = torch.float64


def t(x, dtype=F64):
    return torch.tensor(x, dtype=dtype)


def assert_close(actual: torch.Tensor, expected, tol: float = 1e-9):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------
# masked statistics


def test_masked_mean_ignores_masked_positions_even_nan_and_huge():
    """masked_mean over the whole tensor uses only mask==1 entries; NaN/inf/1e300 at mask==0 change nothing."""
    mask = t([[1, 1, 0], [1, 0, 1]])
    x = t([[1.0, 2.0, float("nan")], [4.0, 1e300, 8.0]])
    expected = (1.0 + 2.0 + 4.0 + 8.0) / 4
    assert_close(masked_mean(x, mask), expected)
    x_inf = t([[1.0, 2.0, float("inf")], [4.0, -float("inf"), 8.0]])
    assert_close(masked_mean(x_inf, mask), expected)


def test_masked_mean_per_row():
    """masked_mean(dim=-1) averages each row over its own valid positions; an all-masked row gives 0 (not NaN)."""
    mask = t([[1, 1, 0], [0, 0, 1], [0, 0, 0]])
    x = t([[3.0, 5.0, float("nan")], [1e300, float("nan"), -2.0], [float("nan"), 7.0, 1.0]])
    out = masked_mean(x, mask, dim=-1)
    assert_close(out, [(3.0 + 5.0) / 2, -2.0, 0.0])


def test_masked_whiten_matches_hand_computation():
    """masked_whiten = (x - mean)/sqrt(unbiased var + eps) over valid entries of the whole batch, 0 elsewhere."""
    mask = t([[1, 1, 0], [1, 0, 1]])
    x = t([[1.0, 2.0, float("nan")], [4.0, 1e30, 8.0]])
    vals = [1.0, 2.0, 4.0, 8.0]
    mean = sum(vals) / 4  # 3.75
    var = sum((v - mean) ** 2 for v in vals) / (4 - 1)  # 28.75 / 3
    std = math.sqrt(var + 1e-8)
    expected = [[(1.0 - mean) / std, (2.0 - mean) / std, 0.0],
                [(4.0 - mean) / std, 0.0, (8.0 - mean) / std]]
    assert_close(masked_whiten(x, mask), expected)


def test_masked_whiten_without_mean_shift():
    """shift_mean=False only rescales: (x - mean)/std + mean on valid entries, 0 at masked ones."""
    mask = t([[1, 1, 0], [1, 0, 1]])
    x = t([[1.0, 2.0, -1e30], [4.0, float("nan"), 8.0]])
    vals = [1.0, 2.0, 4.0, 8.0]
    mean = sum(vals) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / 3 + 1e-8)
    expected = [[(1.0 - mean) / std + mean, (2.0 - mean) / std + mean, 0.0],
                [(4.0 - mean) / std + mean, 0.0, (8.0 - mean) / std + mean]]
    assert_close(masked_whiten(x, mask, shift_mean=False), expected)


def test_masked_whiten_masked_values_change_nothing():
    """Replacing the masked entries by garbage (NaN, inf, huge) leaves the whitened output identical."""
    mask = t([[0, 1, 1, 0], [1, 1, 0, 0]])
    x = t([[0.0, 0.5, -1.5, 0.0], [2.0, 3.0, 0.0, 0.0]])
    garbage = torch.where(mask.bool(), x, t([[float("nan"), 0.0, 0.0, 1e300], [0.0, 0.0, -float("inf"), 5.0]]))
    assert torch.equal(masked_whiten(x, mask), masked_whiten(garbage, mask))


def test_masked_whiten_single_valid_element_is_finite():
    """With one valid element the std is 0; the eps guard keeps the result finite (and 0)."""
    mask = t([[0, 1, 0]])
    x = t([[float("nan"), 5.0, 1e300]])
    out = masked_whiten(x, mask)
    assert torch.isfinite(out).all()
    assert_close(out, [[0.0, 0.0, 0.0]])


# ---------------------------------------------------------------------------------------
# log-probabilities


def _log_softmax_py(row: list[float], temperature: float) -> list[float]:
    scaled = [v / temperature for v in row]
    log_z = math.log(sum(math.exp(v) for v in scaled))
    return [v - log_z for v in scaled]


def test_token_logprobs_alignment_and_temperature():
    """Column 0 is 0; column t is log softmax(logits[t-1]/temperature)[token t]; logits[-1] is unused."""
    logits_list = [[1.0, 2.0, 0.5],
                   [-1.0, 0.0, 3.0],
                   [0.2, 0.2, 0.2]]
    ids = [2, 0, 1]
    temp = 2.0
    logits = torch.tensor([logits_list], dtype=torch.float32)
    input_ids = torch.tensor([ids])
    expected = [0.0,
                _log_softmax_py(logits_list[0], temp)[ids[1]],   # token 1 (=0) from logits at position 0
                _log_softmax_py(logits_list[1], temp)[ids[2]]]   # token 2 (=1) from logits at position 1
    out = token_logprobs(logits, input_ids, temperature=temp)
    assert out.shape == (1, 3)
    assert_close(out[0], expected, tol=1e-6)
    # the last position's logits predict a token beyond the sequence: they must not matter
    logits2 = logits.clone()
    logits2[0, 2] = torch.tensor([9.0, -9.0, 4.0])
    assert torch.equal(token_logprobs(logits2, input_ids, temperature=temp), out)
    # temperature matters (sanity: the expected values are not temperature-free)
    assert not torch.allclose(token_logprobs(logits, input_ids, temperature=1.0), out)


# ---------------------------------------------------------------------------------------
# KL estimators


def test_kl_estimate_k1_k2_k3_by_hand():
    """k1 = lp - lref, k2 = (lp - lref)^2 / 2, k3 = exp(d) - 1 - d with d = lref - lp."""
    lp = [-1.0, -2.0, -0.5, -3.0]
    lref = [-1.5, -1.0, -0.5, -0.1]
    k1 = [a - b for a, b in zip(lp, lref)]              # [0.5, -1.0, 0.0, -2.9]
    k2 = [0.5 * (a - b) ** 2 for a, b in zip(lp, lref)]
    k3 = [math.exp(b - a) - 1.0 - (b - a) for a, b in zip(lp, lref)]
    assert_close(kl_estimate(t(lp), t(lref), "k1"), k1)
    assert_close(kl_estimate(t(lp), t(lref), "k2"), k2)
    assert_close(kl_estimate(t(lp), t(lref), "k3"), k3)
    # a few literal values as a cross-check of the formulas above
    assert_close(kl_estimate(t([-1.0]), t([-1.5]), "k3"), [math.exp(-0.5) - 0.5])  # 0.1065306597...
    assert_close(kl_estimate(t([-2.0]), t([-1.0]), "k2"), [0.5])


def test_kl_estimate_k3_nonnegative_and_clamped():
    """k3 >= 0 everywhere (also for big log-ratios); the log-ratio is clamped to +-clamp before use."""
    gen = torch.Generator().manual_seed(0)
    lp = torch.randn(200, generator=gen, dtype=F64) * 5
    lref = torch.randn(200, generator=gen, dtype=F64) * 5
    k3 = kl_estimate(lp, lref, "k3")
    assert torch.isfinite(k3).all() and (k3 >= 0).all()
    # log-ratio 100 clamped to 10: k1 = 10, k3 = exp(-10) - 1 + 10
    assert_close(kl_estimate(t([100.0]), t([0.0]), "k1", clamp=10.0), [10.0])
    assert_close(kl_estimate(t([0.0]), t([100.0]), "k3", clamp=10.0), [math.exp(10.0) - 1.0 - 10.0])


def test_kl_estimate_unknown_kind_raises():
    """An unknown estimator name raises ValueError."""
    with pytest.raises(ValueError, match="k1"):
        kl_estimate(t([0.0]), t([0.0]), "k4")


# ---------------------------------------------------------------------------------------
# GAE


def _gae_py(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """Plain-Python GAE on a compact trajectory (every entry a step); V after the last step is 0."""
    adv = [0.0] * len(rewards)
    next_value, next_adv = 0.0, 0.0
    for i in reversed(range(len(rewards))):
        delta = rewards[i] + gamma * next_value - values[i]
        next_adv = delta + gamma * lam * next_adv
        adv[i] = next_adv
        next_value = values[i]
    return adv


def test_gae_single_row_by_hand():
    """gamma=0.9, lam=0.8 on a 3-step row, worked step by step (gamma*lam = 0.72)."""
    r = [1.0, -0.5, 2.0]
    v = [0.5, 1.0, -0.3]
    # t=2: delta = 2.0 + 0.9*0 - (-0.3) = 2.3;               A2 = 2.3
    # t=1: delta = -0.5 + 0.9*(-0.3) - 1.0 = -1.77;          A1 = -1.77 + 0.72*2.3 = -0.114
    # t=0: delta = 1.0 + 0.9*1.0 - 0.5 = 1.4;                A0 = 1.4 + 0.72*(-0.114) = 1.31792
    expected_adv = [1.31792, -0.114, 2.3]
    expected_ret = [1.31792 + 0.5, -0.114 + 1.0, 2.3 - 0.3]  # [1.81792, 0.886, 2.0]
    adv, ret = gae(t([r]), t([v]), t([[1, 1, 1]]), gamma=0.9, lam=0.8)
    assert_close(adv[0], expected_adv)
    assert_close(ret[0], expected_ret)


def test_gae_prompt_position_and_padding_are_skipped():
    """With mask [0,1,1,1,0] the masked prompt/padding positions get 0 and the rest equals the 3-step hand example."""
    r = [7.0, 1.0, -0.5, 2.0, 5.0]
    v = [3.0, 0.5, 1.0, -0.3, 9.0]
    adv, ret = gae(t([r]), t([v]), t([[0, 1, 1, 1, 0]]), gamma=0.9, lam=0.8)
    assert_close(adv[0], [0.0, 1.31792, -0.114, 2.3, 0.0])
    assert_close(ret[0], [0.0, 1.81792, 0.886, 2.0, 0.0])


MULTI_TURN_MASK = [[0, 0, 1, 1, 0, 0, 1, 1, 0],   # prompt, turn 1, observation, turn 2, padding
                   [0, 1, 1, 1, 1, 0, 0, 0, 0]]   # single turn, right padding


def test_gae_multi_turn_masked_positions_change_nothing():
    """Changing rewards/values at mask==0 (prompt, observation, padding) leaves advantages/returns at mask==1 unchanged."""
    gen = torch.Generator().manual_seed(1)
    mask = t(MULTI_TURN_MASK)
    rewards = torch.randn(2, 9, generator=gen, dtype=F64)
    values = torch.randn(2, 9, generator=gen, dtype=F64)
    noise_r = torch.randn(2, 9, generator=gen, dtype=F64) * 100
    noise_v = torch.randn(2, 9, generator=gen, dtype=F64) * 100
    rewards2 = torch.where(mask.bool(), rewards, noise_r)
    values2 = torch.where(mask.bool(), values, noise_v)
    adv1, ret1 = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    adv2, ret2 = gae(rewards2, values2, mask, gamma=0.9, lam=0.8)
    assert torch.equal(adv1, adv2)
    assert torch.equal(ret1, ret2)


def test_gae_multi_turn_equals_gae_on_compacted_sequence():
    """GAE over a masked row equals plain GAE on the compacted sequence of its mask==1 positions."""
    gen = torch.Generator().manual_seed(2)
    mask = t(MULTI_TURN_MASK)
    rewards = torch.randn(2, 9, generator=gen, dtype=F64)
    values = torch.randn(2, 9, generator=gen, dtype=F64)
    gamma, lam = 0.9, 0.8
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    for row in range(2):
        idx = [i for i, m in enumerate(MULTI_TURN_MASK[row]) if m == 1]
        compact = _gae_py([rewards[row, i].item() for i in idx], [values[row, i].item() for i in idx], gamma, lam)
        expected = [0.0] * 9
        for i, a in zip(idx, compact):
            expected[i] = a
        assert_close(adv[row], expected)


def test_gae_returns_are_advantages_plus_values_on_valid_and_zero_elsewhere():
    """returns == advantages + values where mask==1; advantages and returns are 0 where mask==0."""
    gen = torch.Generator().manual_seed(3)
    mask = t(MULTI_TURN_MASK)
    rewards = torch.randn(2, 9, generator=gen, dtype=F64)
    values = torch.randn(2, 9, generator=gen, dtype=F64) + 3.0
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    valid = mask.bool()
    assert_close(ret[valid], (adv + values)[valid])
    assert (adv[~valid] == 0).all() and (ret[~valid] == 0).all()


# ---------------------------------------------------------------------------------------
# PPO losses


def test_clipped_policy_loss_by_hand():
    """PPO loss = masked mean of max(-A*rho, -A*clip(rho, 0.8, 1.2)); clipfrac counts tokens where the clipped term wins."""
    ratios = [1.5, 0.9, 0.5, 1.5, 3.0]
    adv = [1.0, -2.0, -1.0, -1.0, 100.0]
    mask = [1, 1, 1, 1, 0]   # last token masked: ignored
    old = [-1.0, -2.0, -0.5, -3.0, -1.0]
    logp = [o + math.log(r) for o, r in zip(old, ratios)]
    # token 0: A=+1, rho=1.5: unclipped -1.5, clipped -1.2 -> -1.2 (clipped active)
    # token 1: A=-2, rho=0.9: unclipped  1.8, clipped  1.8 ->  1.8 (inside the band)
    # token 2: A=-1, rho=0.5: unclipped  0.5, clipped  0.8 ->  0.8 (clipped active)
    # token 3: A=-1, rho=1.5: unclipped  1.5, clipped  1.2 ->  1.5 (unclipped: pessimistic side)
    expected_loss = (-1.2 + 1.8 + 0.8 + 1.5) / 4   # 0.725
    loss, stats = clipped_policy_loss(t([logp]), t([old]), t([adv]), t([mask]), clip=0.2)
    assert_close(loss, expected_loss)
    assert_close(stats["clipfrac"], 2 / 4)
    assert_close(stats["ratio"], (1.5 + 0.9 + 0.5 + 1.5) / 4)
    assert_close(stats["approxkl"], sum(0.5 * math.log(r) ** 2 for r in ratios[:4]) / 4)


def test_clipped_policy_loss_gradient_zero_when_clipped():
    """The clipped token gets no gradient, the unclipped ones get -A*rho/n."""
    old = t([[0.0, 0.0]])
    logp = t([[math.log(1.5), math.log(1.1)]]).requires_grad_(True)
    loss, _ = clipped_policy_loss(logp, old, t([[1.0, 1.0]]), t([[1, 1]]), clip=0.2)
    loss.backward()
    # d/dlogp of -A*rho/2 = -A*rho/2 for the unclipped token 1; token 0 is clipped (rho > 1.2, A > 0)
    assert_close(logp.grad, [[0.0, -1.1 / 2]])


def test_clipped_value_loss_by_hand():
    """Value loss = 1/2 masked mean of max((V-R)^2, (V_clip-R)^2), V_clip = V_old + clip(V - V_old, -0.2, 0.2)."""
    v = [1.0, 1.0, 0.0, 50.0]
    v_old = [0.5, 0.5, 0.1, 0.0]
    ret = [2.0, 0.0, -1.0, 0.0]
    mask = [1, 1, 1, 0]
    # token 0: V_clip = 0.7; (1-2)^2 = 1,   (0.7-2)^2 = 1.69 -> 1.69 (clipped term larger)
    # token 1: V_clip = 0.7; (1-0)^2 = 1,   (0.7-0)^2 = 0.49 -> 1.0
    # token 2: V_clip = 0.0 (inside); (0+1)^2 = 1 both     -> 1.0
    expected = 0.5 * (1.69 + 1.0 + 1.0) / 3   # 0.615
    loss, stats = clipped_value_loss(t([v]), t([v_old]), t([ret]), t([mask]), clip=0.2)
    assert_close(loss, expected)
    assert_close(stats["clipfrac"], 1 / 3)


# ---------------------------------------------------------------------------------------
# pairwise losses and helpers


def test_bradley_terry_loss_by_hand():
    """BT loss = mean of -log sigmoid(r_chosen - r_rejected) = mean of log(1 + exp(-(rc - rr)))."""
    chosen, rejected = [1.0, 0.0, 3.0], [0.0, 2.0, 3.0]
    expected = sum(math.log(1.0 + math.exp(-(c - r))) for c, r in zip(chosen, rejected)) / 3
    # = (log(1+e^-1) + log(1+e^2) + log 2) / 3
    assert_close(bradley_terry_loss(t(chosen), t(rejected)), expected)


def test_clipped_importance_weight_clips_without_overflow_and_is_detached():
    """clip(exp(x), 1/C, C) with C=10; x = +-1000 gives C and 1/C (no inf/NaN); the result carries no gradient."""
    x = t([0.0, 1.0, -1.0, 5.0, -5.0, 1000.0, -1000.0]).requires_grad_(True)
    w = clipped_importance_weight(x, 10.0)
    assert_close(w, [1.0, math.e, 1 / math.e, 10.0, 0.1, 10.0, 0.1])
    assert not w.requires_grad and w.grad_fn is None


def _grad_of_surrogate(signal: float, value: float, old: float, clip: float) -> float:
    v = t([value]).requires_grad_(True)
    clipped_surrogate(t([signal]), v, t([old]), clip).sum().backward()
    return v.grad.item()


def test_clipped_surrogate_values_by_hand():
    """max(-s*v, -s*clip(v, old-c, old+c)) elementwise on a few points."""
    s = t([1.0, 1.0, 1.0, -2.0, -2.0])
    v = t([0.1, 0.3, -0.3, -0.3, 0.3])
    old = t([0.0, 0.0, 0.0, 0.0, 0.0])
    # (1, 0.1): max(-0.1, -0.1) = -0.1 | (1, 0.3): max(-0.3, -0.2) = -0.2 | (1, -0.3): max(0.3, 0.2) = 0.3
    # (-2, -0.3): max(-0.6, -0.4) = -0.4 | (-2, 0.3): max(0.6, 0.4) = 0.6
    assert_close(clipped_surrogate(s, v, old, 0.2), [-0.1, -0.2, 0.3, -0.4, 0.6])


def test_clipped_surrogate_gradient_zero_beyond_trust_region_in_favoured_direction():
    """Gradient is 0 once the value moved more than clip the way the signal favours, -signal inside the band
    and also outside it in the unfavoured direction (pessimistic bound)."""
    # positive signal favours increasing the value
    assert _grad_of_surrogate(1.0, 0.3, 0.0, 0.2) == 0.0
    assert _grad_of_surrogate(1.0, 0.1, 0.0, 0.2) == pytest.approx(-1.0)
    assert _grad_of_surrogate(1.0, -0.3, 0.0, 0.2) == pytest.approx(-1.0)
    # negative signal favours decreasing the value
    assert _grad_of_surrogate(-2.0, -0.3, 0.0, 0.2) == 0.0
    assert _grad_of_surrogate(-2.0, -0.1, 0.0, 0.2) == pytest.approx(2.0)
    assert _grad_of_surrogate(-2.0, 0.3, 0.0, 0.2) == pytest.approx(2.0)
    # trust region is centred on old_value, not on 0
    assert _grad_of_surrogate(1.0, 1.1, 1.0, 0.2) == pytest.approx(-1.0)
    assert _grad_of_surrogate(1.0, 1.25, 1.0, 0.2) == 0.0
