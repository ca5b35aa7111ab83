"""reward=gold's placement setting: turn-level (each turn's reward on its own last token) or
trajectory-level (the episode's sum on its last token) credit in multi-turn episodes."""
from types import SimpleNamespace

import pytest
import torch

from rlhf.config import ConfigError, compose, validate
from rlhf.rewards import GoldReward


def episodes():
    # two episodes: three turns ending at tokens 3, 6, 9 and one turn ending at token 4
    return [SimpleNamespace(turn_ends=[3, 6, 9], rewards=[{"gold": -0.1}, {"gold": -0.1}, {"gold": 1.0}]),
            SimpleNamespace(turn_ends=[4], rewards=[{"gold": 0.5}])]


def test_turn_placement_credits_each_turn_and_episode_placement_sums_on_the_last():
    batch = SimpleNamespace(input_ids=torch.zeros(2, 10, dtype=torch.long))
    turn, _ = GoldReward("gold", "turn").score(episodes(), batch)
    assert turn[0, [3, 6, 9]].tolist() == pytest.approx([-0.1, -0.1, 1.0]) and float(turn[0].abs().sum()) == \
        pytest.approx(1.2)
    episode, _ = GoldReward("gold", "episode").score(episodes(), batch)
    assert float(episode[0, 9]) == pytest.approx(0.8) and float(episode[0, :9].abs().sum()) == 0.0
    assert torch.equal(turn[1], episode[1])  # one turn: the same either way
    assert torch.allclose(turn.sum(1), episode.sum(1))  # the return of the whole episode is unchanged


def test_an_unknown_placement_is_refused_by_the_config_check():
    with pytest.raises(ConfigError, match="reward.placement.*turn, episode"):
        validate(compose(["reward=gold", "reward.placement=trajectory"]))
