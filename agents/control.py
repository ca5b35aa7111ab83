"""Networks of the control (non-LM) algorithms, with CleanRL's agent interface:

    get_value(obs)                        -> values [B, m]   (one head per objective; m = 1 for a scalar reward)
    get_action_and_value(obs, action?)    -> (action, log pi(action), entropy, values [B, m])

* `MLPActorCritic`: a tanh MLP actor (categorical or diagonal Gaussian) and an MLP critic with
  m outputs, one value per objective (C-MORL's multi-head critic, Liu et al. 2025, Section 4.2),
  with optional running observation statistics kept as buffers (they travel with every copy of
  the weights, e.g. each policy of a Pareto archive).
* `ConvActorCritic`: one convolution, flatten, an optional dense layer, then a policy head and
  a value head (RAMario's small conv net; PPO adds the value head) on uint8 frames [B, C, H, W].

Initialisation follows CleanRL's PPO: orthogonal weights (gain sqrt(2) in the body, 0.01 on
the policy output, 1 on the value output) and zero biases.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Normal


def layer_init(layer: nn.Module, gain: float = math.sqrt(2)) -> nn.Module:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class ActorCritic(nn.Module):
    """What the control PPO (rlhf.control_ppo) asks of a policy."""

    discrete = True

    def heads(self, obs: torch.Tensor) -> tuple[Distribution, torch.Tensor]:
        """(action distribution, values [B, m]) of a batch of observations."""
        raise NotImplementedError

    def get_value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.heads(obs)[1]

    def get_action_and_value(self, obs: torch.Tensor, action: torch.Tensor | None = None):
        dist, value = self.heads(obs)
        if action is None:
            action = dist.sample()
        if self.discrete:
            return action, dist.log_prob(action.long()), dist.entropy(), value
        return action, dist.log_prob(action).sum(-1), dist.entropy().sum(-1), value

    def observe(self, obs: torch.Tensor) -> None:
        """Update running input statistics with observations the policy acts on (default: none)."""

    def env_action(self, action: torch.Tensor) -> np.ndarray:
        """A sampled action as the environment takes it."""
        return action.numpy()


class MLPActorCritic(ActorCritic):
    """MLP actor and an m-output critic on flat observations."""

    def __init__(self, obs_dim: int, action_space, m: int, hidden: list[int], normalize_obs: bool):
        super().__init__()
        import gymnasium as gym

        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        self.normalize_obs = normalize_obs
        n_out = int(action_space.n) if self.discrete else int(np.prod(action_space.shape))
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_var", torch.ones(obs_dim))
        self.register_buffer("obs_count", torch.tensor(1e-4))
        self.actor = self._mlp(obs_dim, hidden, n_out, 0.01)
        self.critic = self._mlp(obs_dim, hidden, m, 1.0)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.zeros(n_out))
            self.register_buffer("action_low", torch.as_tensor(action_space.low, dtype=torch.float32))
            self.register_buffer("action_high", torch.as_tensor(action_space.high, dtype=torch.float32))

    @staticmethod
    def _mlp(n_in: int, hidden: list[int], n_out: int, out_gain: float) -> nn.Sequential:
        layers, width = [], n_in
        for h in hidden:
            layers += [layer_init(nn.Linear(width, h)), nn.Tanh()]
            width = h
        return nn.Sequential(*layers, layer_init(nn.Linear(width, n_out), out_gain))

    def observe(self, obs: torch.Tensor) -> None:
        """Parallel Welford update of the running mean/var (as gymnasium's NormalizeObservation)."""
        if not self.normalize_obs or len(obs) == 0:
            return
        obs = obs.reshape(len(obs), -1).float()
        batch_mean, batch_var, n = obs.mean(0), obs.var(0, unbiased=False), obs.shape[0]
        delta, total = batch_mean - self.obs_mean, self.obs_count + n
        self.obs_mean += delta * n / total
        m2 = self.obs_var * self.obs_count + batch_var * n + delta**2 * self.obs_count * n / total
        self.obs_var.copy_(m2 / total)
        self.obs_count.fill_(float(total))

    def _norm(self, obs: torch.Tensor) -> torch.Tensor:
        obs = obs.reshape(len(obs), -1).float()
        if not self.normalize_obs:
            return obs
        return ((obs - self.obs_mean) / torch.sqrt(self.obs_var + 1e-8)).clamp(-10.0, 10.0)

    def get_value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(self._norm(obs))

    def heads(self, obs: torch.Tensor) -> tuple[Distribution, torch.Tensor]:
        x = self._norm(obs)
        out = self.actor(x)
        if self.discrete:
            dist = Categorical(logits=out, validate_args=False)
        else:
            dist = Normal(out, self.log_std.exp().expand_as(out), validate_args=False)
        return dist, self.critic(x)

    def env_action(self, action: torch.Tensor) -> np.ndarray:
        if self.discrete:
            return action.numpy()
        return torch.maximum(torch.minimum(action, self.action_high), self.action_low).numpy()

    @torch.no_grad()
    def act_deterministic(self, obs: np.ndarray):
        """The mode of the policy (argmax / Gaussian mean) for one observation."""
        out = self.actor(self._norm(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0)))[0]
        return int(out.argmax()) if self.discrete else self.env_action(out)


class ConvActorCritic(ActorCritic):
    """uint8 frames [B, C, H, W] -> (categorical policy, value [B, 1]). One convolution, flatten,
    an optional hidden dense layer (hidden=0: none, as in RAMario), then dense heads."""

    def __init__(self, obs_shape: tuple[int, int, int], n_actions: int, channels: int = 16, kernel: int = 8,
                 stride: int = 4, hidden: int = 0):
        super().__init__()
        c, h, w = obs_shape
        width = channels * ((h - kernel) // stride + 1) * ((w - kernel) // stride + 1)
        layers: list[nn.Module] = [layer_init(nn.Conv2d(c, channels, kernel, stride)), nn.ReLU(), nn.Flatten()]
        if hidden:
            layers += [layer_init(nn.Linear(width, hidden)), nn.ReLU()]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.policy_head, self.value_head = nn.Linear(width, n_actions), nn.Linear(width, 1)
        layer_init(self.policy_head, 0.01)  # after both exist: the init of the pre-refactor ConvPolicy, draw for draw
        layer_init(self.value_head, 1.0)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (action logits [B, A], values [B, 1])."""
        features = self.body(obs.float() / 255.0)
        return self.policy_head(features), self.value_head(features)

    def heads(self, obs: torch.Tensor) -> tuple[Distribution, torch.Tensor]:
        logits, value = self(obs)
        return Categorical(logits=logits), value
