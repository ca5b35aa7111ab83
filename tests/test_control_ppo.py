"""The control PPO (rlhf.control_ppo) on tiny hand-made envs: same-step autoreset (no step is
spent on resets; finished episodes are counted with their raw returns), GAE by hand with a
truncation bootstrapped from the episode's last observation versus a termination, and learning:
a bandit with a scalar reward, and a two-objective bandit whose scalarised advantage w.A
(C-MORL's Stage 1) picks the action each preference prefers."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.wrappers import RecordEpisodeStatistics
from torch import nn

from agents.control import ActorCritic, MLPActorCritic
from rlhf.control_ppo import PPO, PPOConfig, ReturnNormalizer, reset


class Corridor(gym.Env):
    """Two steps of reward 1 each, then the episode ends: terminated, or truncated (a time limit)."""

    observation_space = gym.spaces.Box(0.0, 2.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, truncate: bool):
        self.truncate, self.t = truncate, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        done = self.t == 2
        return np.array([float(self.t)], np.float32), 1.0, done and not self.truncate, done and self.truncate, {}


class Bandit(gym.Env):
    """One step; action a earns reward vector (a, 1 - a) (or just a with m=1)."""

    observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, m: int = 1):
        self.m = m
        self.reward_space = gym.spaces.Box(0.0, 1.0, (m,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.array([0.5], np.float32), {}

    def step(self, action):
        reward = float(action) if self.m == 1 else np.array([action, 1 - action], np.float32)
        return np.array([0.5], np.float32), reward, True, False, {}


class ConstantValue(ActorCritic):
    """A uniform policy with V(s) = 0.5 everywhere (one head): GAE can be computed by hand."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(2))

    def heads(self, obs):
        return torch.distributions.Categorical(logits=self.logits.expand(len(obs), 2)), torch.full((len(obs), 1), 0.5)


def config(**changes) -> PPOConfig:
    base = dict(num_envs=2, num_steps=6, epochs=1, minibatches=1, lr=1e-2, clip=0.2, value_clip=10.0, vf_coef=0.5,
                entropy_coef=0.0, max_grad_norm=0.5, gamma=0.5, lam=1.0)
    return PPOConfig(**{**base, **changes})


def vector(make, n: int = 2):
    return SyncVectorEnv([lambda: RecordEpisodeStatistics(make()) for _ in range(n)], autoreset_mode=AutoresetMode.SAME_STEP)


@pytest.mark.parametrize("truncate", [False, True])
def test_episodes_and_gae_match_a_hand_computation(truncate):
    envs = vector(lambda: Corridor(truncate))
    ppo = PPO(ConstantValue(), config())
    cursor = reset(envs, [0, 1])
    batch = ppo.collect(envs, cursor)
    # 6 steps per env: three whole episodes of 2 steps (an ended episode's env resets inside that step)
    assert [(e["return"], e["length"]) for e in batch.episodes] == [(2.0, 2)] * 6
    assert cursor.obs.tolist() == [[0.0], [0.0]]  # the next episode's first observation
    # gamma 0.5, lambda 1, V = 0.5: the last step's delta is 1 - 0.5 (+ 0.5 * V(last obs) if truncated)
    last = 1 + (0.5 * 0.5 if truncate else 0.0) - 0.5
    first = 1 + 0.5 * 0.5 - 0.5 + 0.5 * last
    adv = batch.advantages.reshape(6, 2, 1)[:, 0, 0]
    assert adv.tolist() == pytest.approx([first, last] * 3)
    torch.testing.assert_close(batch.returns, batch.advantages + 0.5)
    envs.close()


def test_learns_a_bandit_in_a_few_updates():
    torch.manual_seed(0)
    envs = vector(Bandit, 8)
    agent = MLPActorCritic(1, envs.single_action_space, 1, [16], normalize_obs=False)
    ppo = PPO(agent, config(num_envs=8, num_steps=8, epochs=4, minibatches=2, lr=3e-2))
    cursor = reset(envs, list(range(8)))
    for _ in range(15):
        ppo.update(ppo.collect(envs, cursor))
    with torch.no_grad():
        probs = agent.heads(torch.tensor([[0.5]]))[0].probs[0]
    assert float(probs[1]) > 0.95  # reward 1 for action 1, 0 for action 0
    envs.close()


@pytest.mark.parametrize("weight, best", [((1.0, 0.0), 1), ((0.0, 1.0), 0)])
def test_two_headed_critic_and_the_scalarised_advantage_follow_the_preference(weight, best):
    from mo_gymnasium.wrappers import MORecordEpisodeStatistics

    from envs.mo import VectorRewardSyncEnv

    torch.manual_seed(0)
    envs = VectorRewardSyncEnv([lambda: MORecordEpisodeStatistics(Bandit(m=2)) for _ in range(8)])
    agent = MLPActorCritic(1, envs.single_action_space, 2, [16], normalize_obs=False)
    ppo = PPO(agent, config(num_envs=8, num_steps=8, epochs=4, minibatches=2, lr=3e-2), ReturnNormalizer(2, 0.5))
    cursor, w = reset(envs, list(range(8))), torch.tensor(weight)
    for _ in range(15):
        batch = ppo.collect(envs, cursor)
        assert batch.values.shape == (64, 2) and len(batch.episodes[0]["return"]) == 2  # vector returns
        ppo.update(batch, batch.raw_advantages() @ w)
    with torch.no_grad():
        assert float(agent.heads(torch.tensor([[0.5]]))[0].probs[0, best]) > 0.95
    envs.close()
