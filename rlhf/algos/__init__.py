"""Algorithm registry: `algo=<name>` selects one. One algorithm per file."""
from __future__ import annotations

from rlhf.algos.base import Algorithm
from rlhf.algos.p3o import P3O
from rlhf.algos.ppo import PPO

# Algorithms that train a policy with the rollout/update loop of rlhf.trainer.
RL_ALGOS: dict[str, type[Algorithm]] = {"ppo": PPO, "p3o": P3O}
# Algorithms with their own entry point (no rollout loop).
STANDALONE_ALGOS = ("rm",)


def algo_names() -> list[str]:
    return sorted([*RL_ALGOS, *STANDALONE_ALGOS])
