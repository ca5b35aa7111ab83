"""Hand-computed checks of rlhf.algos.p3o.p3o_pair_loss: the clipped pairwise objectives (joint V2, separate V1,
tokenwise) of Wu et al. 2023 ("Pairwise Proximal Policy Optimization"), and the invariance of the gradient to a
per-prompt reward shift (the paper's invariance to equivalent rewards).

Rows 2k and 2k+1 of the per-token tensors are pair k (y1, y2); u_i = sum of per-token log-probs over
mask==1 tokens. Expected values are computed with plain Python floats, never with the code under test.
"""
from __future__ import annotations

import pytest
import torch

from rlhf.algos.p3o import p3o_pair_loss
from rlhf.functional import clipped_importance_weight

F64 = torch.float64
EPS = 0.2
G = 123.0  # garbage at mask==0 positions (prompt / padding): must not enter any sum

# Two pairs, 4 positions per row; position 0 is the prompt (never an action).
MASK = [[0, 1, 1, 0],
        [0, 1, 1, 1],
        [0, 1, 1, 1],
        [0, 1, 0, 0]]
LOGP = [[G, -1.0, -0.5, G],
        [G, -2.0, -0.3, -0.2],
        [G, -1.0, -1.5, -0.5],
        [G, -1.0, G, G]]
OLD = [[-G, -1.1, -0.5, -G],
       [-G, -2.0, -0.4, -0.1],
       [-G, -0.6, -1.6, -0.5],
       [-G, -1.25, -G, -G]]
# pair 0: q*w = 2.0*0.5 = 1.0;  pair 1: q*w = -1.0*1.5 = -1.5
Q = [2.0, -1.0]
W = [0.5, 1.5]

# sequence log-probs by hand (sums over mask==1 tokens)
U = [-1.0 + -0.5, -2.0 + -0.3 + -0.2, -1.0 + -1.5 + -0.5, -1.0]          # [-1.5, -2.5, -3.0, -1.0]
U_OLD = [-1.1 + -0.5, -2.0 + -0.4 + -0.1, -0.6 + -1.6 + -0.5, -1.25]     # [-1.6, -2.5, -2.7, -1.25]


def _clip(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


def _surrogate(s: float, v: float, v_old: float, eps: float = EPS) -> float:
    """max(-s*v, -s*clip(v, v_old - eps, v_old + eps)) in plain floats."""
    return max(-s * v, -s * _clip(v, v_old - eps, v_old + eps))


def _tensors(requires_grad: bool = False):
    logp = torch.tensor(LOGP, dtype=F64, requires_grad=requires_grad)
    return (torch.tensor(Q, dtype=F64), torch.tensor(W, dtype=F64), logp,
            torch.tensor(OLD, dtype=F64), torch.tensor(MASK, dtype=F64))


def test_fixture_pairs_are_one_inside_and_one_outside_the_trust_region():
    """Sanity of the hand data: pair 0's d moved 0.1 (< eps), pair 1's d moved -0.55 (> eps, the way q favours)."""
    d = [U[0] - U[1], U[2] - U[3]]
    d_old = [U_OLD[0] - U_OLD[1], U_OLD[2] - U_OLD[3]]
    assert abs(d[0] - d_old[0]) < EPS
    assert d[1] - d_old[1] < -EPS and Q[1] * W[1] < 0


def test_joint_variant_by_hand():
    """joint (V2): max(-q w d, -q w clip(d, d_old-eps, d_old+eps)) / 2 with d = u1 - u2."""
    expected = []
    for k in range(2):
        s = Q[k] * W[k]
        d, d_old = U[2 * k] - U[2 * k + 1], U_OLD[2 * k] - U_OLD[2 * k + 1]
        expected.append(max(-s * d, -s * _clip(d, d_old - EPS, d_old + EPS)) / 2)
    # pair 0: d = 1.0, d_old = 0.9, inside -> -1.0 * 1.0 / 2 = -0.5
    # pair 1: d = -2.0, d_old = -1.45, clip(d) = -1.65 -> max(-3.0, -2.475) / 2 = -1.2375
    assert expected == pytest.approx([-0.5, -1.2375])
    out = p3o_pair_loss(*_tensors(), clip="joint", eps=EPS)
    torch.testing.assert_close(out, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-12)


def test_separate_variant_by_hand():
    """separate (V1): [max(-qw u1, -qw clip(u1)) + max(+qw u2, +qw clip(u2))] / 2, clip to u_old +- eps."""
    expected = []
    for k in range(2):
        s = Q[k] * W[k]
        term1 = max(-s * U[2 * k], -s * _clip(U[2 * k], U_OLD[2 * k] - EPS, U_OLD[2 * k] + EPS))
        term2 = max(s * U[2 * k + 1], s * _clip(U[2 * k + 1], U_OLD[2 * k + 1] - EPS, U_OLD[2 * k + 1] + EPS))
        expected.append((term1 + term2) / 2)
    # pair 0: (1.5 + -2.5) / 2 = -0.5
    # pair 1: term1 = max(-4.5, 1.5 * -2.9 = -4.35) = -4.35; term2 = max(1.5, -1.5 * -1.05 = 1.575) = 1.575
    assert expected == pytest.approx([-0.5, (-4.35 + 1.575) / 2])
    out = p3o_pair_loss(*_tensors(), clip="separate", eps=EPS, tokenwise=False)
    torch.testing.assert_close(out, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-12)


def test_tokenwise_variant_by_hand():
    """separate + tokenwise: each token's log-prob clipped to old +- eps, signal +qw for y1 and -qw for y2,
    summed over mask==1 tokens, pair total / 2."""
    expected = []
    for k in range(2):
        s = Q[k] * W[k]
        total = 0.0
        for row, sign in ((2 * k, 1.0), (2 * k + 1, -1.0)):
            for pos in range(4):
                if MASK[row][pos] == 1:
                    total += _surrogate(sign * s, LOGP[row][pos], OLD[row][pos])
        expected.append(total / 2)
    # pair 1, row 2 token 1 moved -0.4 (clipped at -0.8: 1.5 * -0.8 = -1.2 vs -1.5 -> -1.2)
    out = p3o_pair_loss(*_tensors(), clip="separate", eps=EPS, tokenwise=True)
    torch.testing.assert_close(out, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-12)
    # tokenwise clipping differs from sequence-level clipping on this data (the test can tell them apart)
    seq = p3o_pair_loss(*_tensors(), clip="separate", eps=EPS, tokenwise=False)
    assert not torch.allclose(out, seq)


@pytest.mark.parametrize("clip,tokenwise", [("joint", False), ("separate", False), ("separate", True)])
def test_gradient_at_ratio_one(clip, tokenwise):
    """At logp == old_logp the gradient w.r.t. per-token logprobs is -q*w/2 on y1's tokens, +q*w/2 on y2's, 0 on masked ones."""
    q, w, _, old, mask = _tensors()
    logp = old.clone().requires_grad_(True)
    p3o_pair_loss(q, w, logp, old, mask, clip=clip, eps=EPS, tokenwise=tokenwise).sum().backward()
    expected = []
    for row in range(4):
        k, sign = row // 2, (-1.0 if row % 2 == 0 else 1.0)
        expected.append([sign * Q[k] * W[k] / 2 if MASK[row][pos] == 1 else 0.0 for pos in range(4)])
    # e.g. pair 0 (q*w = 1.0): y1 tokens -0.5, y2 tokens +0.5; pair 1 (q*w = -1.5): y1 +0.75, y2 -0.75
    torch.testing.assert_close(logp.grad, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-12)


def _loss_grad(rewards: torch.Tensor, logp_init: torch.Tensor, old: torch.Tensor, ref: torch.Tensor,
               mask: torch.Tensor, beta: float, clip: str, tokenwise: bool) -> torch.Tensor:
    """Gradient w.r.t. logp of the mean pair loss, with q and w built as the P3O class builds them."""
    logp = logp_init.clone().requires_grad_(True)
    seq_kl = ((logp.detach() - ref) * mask).sum(-1)                        # L_i, current theta, detached
    q = (rewards[0::2] - rewards[1::2]) - beta * (seq_kl[0::2] - seq_kl[1::2])
    log_rho = ((logp.detach() - old) * mask).sum(-1)
    w = clipped_importance_weight(log_rho[0::2] + log_rho[1::2], 10.0)
    p3o_pair_loss(q, w, logp, old, mask, clip=clip, eps=EPS, tokenwise=tokenwise).mean().backward()
    return logp.grad


@pytest.mark.parametrize("clip,tokenwise", [("joint", False), ("separate", False), ("separate", True)])
def test_reward_shift_invariance(clip, tokenwise):
    """Invariance to equivalent rewards (Wu et al. 2023): grad L(r) == grad L(r + delta(x)) to 1e-6 (delta shared
    within a pair, different across pairs)."""
    gen = torch.Generator().manual_seed(0)
    n_pairs, length = 4, 6
    mask = torch.ones(2 * n_pairs, length, dtype=F64)
    mask[:, 0] = 0                       # prompt position
    mask[1, 4:] = 0                      # padding
    mask[6, 3:] = 0
    old = -torch.rand(2 * n_pairs, length, generator=gen, dtype=F64) * 3
    logp = old + 0.15 * torch.randn(2 * n_pairs, length, generator=gen, dtype=F64)  # off-policy: some clipping
    ref = old + 0.1 * torch.randn(2 * n_pairs, length, generator=gen, dtype=F64)
    rewards = torch.randn(2 * n_pairs, generator=gen, dtype=F64)
    delta = torch.tensor([5.0, -3.0, 100.0, 0.7], dtype=F64).repeat_interleave(2)   # delta(x), per prompt
    beta = 0.05
    g = _loss_grad(rewards, logp, old, ref, mask, beta, clip, tokenwise)
    g_shift = _loss_grad(rewards + delta, logp, old, ref, mask, beta, clip, tokenwise)
    assert g.abs().max() > 1e-3                                # the gradient is not trivially zero
    torch.testing.assert_close(g_shift, g, rtol=0, atol=1e-6)
    # sensitivity check: a shift that differs within a pair (not a delta(x)) does change the gradient
    per_sample = torch.tensor([1.0, 0.0] * n_pairs, dtype=F64)
    g_bad = _loss_grad(rewards + per_sample, logp, old, ref, mask, beta, clip, tokenwise)
    assert (g_bad - g).abs().max() > 1e-3


def test_unknown_clip_variant_raises_with_valid_choices():
    """An unknown clip variant raises ValueError whose message names the valid choices (joint, separate)."""
    with pytest.raises(ValueError) as info:
        p3o_pair_loss(*_tensors(), clip="tokenwise", eps=EPS)
    assert "joint" in str(info.value) and "separate" in str(info.value)
    assert "tokenwise" in str(info.value)   # and names the offending value
