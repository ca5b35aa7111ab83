"""GRPO (Shao et al. 2024): group-standardized advantages and the surrogate by hand."""
import pytest
import torch

from rlhf.algos.grpo import group_advantages


def test_group_advantages_standardize_within_each_group():
    scores = torch.tensor([1.0, 0.0, 0.0, 0.0, 5.0, 5.0, 5.0, 5.0])
    adv = group_advantages(scores, 4, eps=0.0 + 1e-12)
    std = torch.tensor([1.0, 0.0, 0.0, 0.0]).std()
    assert torch.allclose(adv[:4], (torch.tensor([1.0, 0, 0, 0]) - 0.25) / std)
    assert torch.equal(adv[4:], torch.zeros(4))  # a group that all scored the same teaches nothing
    assert torch.allclose(group_advantages(scores, 4, scale=False)[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]))


def test_surrogate_sequence_vs_token_aggregation():
    from omegaconf import OmegaConf

    from rlhf.algos.grpo import GRPO

    algo = GRPO.__new__(GRPO)
    algo.algo_cfg = OmegaConf.create({"clip": 0.2, "kl_coef": 0.0, "loss_aggregation": "sequence"})
    logp = torch.zeros(2, 4)
    mask = torch.tensor([[1., 1., 1., 0.], [1., 0., 0., 0.]])
    adv = torch.tensor([1.0, -2.0])
    seq, _ = algo.surrogate(logp, logp, logp, adv, mask)  # ratio 1: per token -A
    assert seq.item() == pytest.approx(((-1.0) + 2.0) / 2)  # mean over responses of their token means
    algo.algo_cfg.loss_aggregation = "token"
    tok, _ = algo.surrogate(logp, logp, logp, adv, mask)
    assert tok.item() == pytest.approx((3 * -1.0 + 2.0) / 4)  # mean over the 4 tokens
    # clipping: a ratio of e^1 with a positive advantage is capped at 1 + eps
    algo.algo_cfg.loss_aggregation = "sequence"
    clipped, clipfrac = algo.surrogate(logp + 1.0, logp, logp, torch.tensor([1.0, 1.0]), mask)
    assert clipped.item() == pytest.approx(-1.2) and clipfrac.item() == 1.0


def test_grpo_needs_a_group():
    from rlhf.config import ConfigError, compose, validate

    with pytest.raises(ConfigError, match="samples_per_prompt=1: GRPO's baseline is the group"):
        validate(compose(["algo=grpo", "algo.samples_per_prompt=1"]))
