"""GAE for control rollouts: bootstrapping from the state after the slice (next_value) and
episode boundaries inside it (dones), by hand; the default stays the text-RL behaviour."""
from __future__ import annotations

import torch

from rlhf.functional import gae

R = torch.tensor([[1.0, 2.0, 3.0]])
V = torch.tensor([[0.5, 1.0, 1.5]])
ONES = torch.ones(1, 3)
G, L = 0.9, 0.8  # gamma, lambda; gamma * lambda = 0.72


def test_bootstrap_from_next_value_by_hand():
    adv, ret = gae(R, V, ONES, G, L, next_value=torch.tensor([2.0]))
    # delta2 = 3 + .9*2 - 1.5 = 3.3; delta1 = 2 + .9*1.5 - 1 = 2.35; delta0 = 1 + .9*1 - .5 = 1.4
    expected = torch.tensor([[1.4 + 0.72 * (2.35 + 0.72 * 3.3), 2.35 + 0.72 * 3.3, 3.3]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + V)


def test_done_cuts_the_chain_and_the_bootstrap():
    # episode ends at t=1: t=1 has no next value, t=0 sees only t=1; t=2 (a new episode) bootstraps
    adv, _ = gae(R, V, ONES, G, L, next_value=torch.tensor([2.0]), dones=torch.tensor([[0.0, 1.0, 0.0]]))
    torch.testing.assert_close(adv, torch.tensor([[1.4 + 0.72 * 1.0, 1.0, 3.3]]))
    # done at the last step: next_value is ignored
    adv, _ = gae(R, V, ONES, G, L, next_value=torch.tensor([100.0]), dones=torch.tensor([[0.0, 0.0, 1.0]]))
    torch.testing.assert_close(adv, torch.tensor([[1.4 + 0.72 * (2.35 + 0.72 * 1.5), 2.35 + 0.72 * 1.5, 1.5]]))


def test_a_done_splits_a_row_into_independent_episodes():
    torch.manual_seed(0)
    r, v = torch.randn(1, 7), torch.randn(1, 7)
    dones = torch.zeros(1, 7)
    dones[0, 3] = 1.0
    joint, _ = gae(r, v, torch.ones(1, 7), 0.97, 0.9, next_value=torch.tensor([0.7]), dones=dones)
    first, _ = gae(r[:, :4], v[:, :4], torch.ones(1, 4), 0.97, 0.9)  # ends in the batch: no bootstrap
    second, _ = gae(r[:, 4:], v[:, 4:], torch.ones(1, 3), 0.97, 0.9, next_value=torch.tensor([0.7]))
    torch.testing.assert_close(joint, torch.cat([first, second], dim=1))


def test_defaults_keep_the_text_rl_behaviour():
    """next_value=None, dones=None: value 0 after the last step, masked positions skipped."""
    torch.manual_seed(1)
    r, v = torch.randn(3, 6), torch.randn(3, 6)
    mask = torch.tensor([[0, 1, 1, 0, 1, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 0, 0]], dtype=torch.float32)
    adv, ret = gae(r, v, mask, 0.95, 0.9)
    zeros = torch.zeros(3)
    adv2, ret2 = gae(r, v, mask, 0.95, 0.9, next_value=zeros, dones=torch.zeros(3, 6))
    torch.testing.assert_close(adv, adv2)
    torch.testing.assert_close(ret, ret2)
    # row 0 by hand over its valid steps 1, 2, 4 (step 4 is last: no bootstrap)
    d4 = r[0, 4] - v[0, 4]
    d2 = r[0, 2] + 0.95 * v[0, 4] - v[0, 2]
    d1 = r[0, 1] + 0.95 * v[0, 2] - v[0, 1]
    a2 = d2 + 0.95 * 0.9 * d4
    torch.testing.assert_close(adv[0], torch.stack([zeros[0], d1 + 0.95 * 0.9 * a2, a2, zeros[0], d4, zeros[0]]))
