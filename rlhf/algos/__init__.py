"""Algorithm registry: `algo=<name>` selects one. One algorithm per file.

Two kinds of algorithm:
* RL_ALGOS train an LM policy inside the shared rollout/update loop (rlhf.trainer) on text
  environments.
* STANDALONE_ALGOS have their own loop (reward-model training, non-LM control algorithms).
  Each names a module that defines `train(cfg, run_dir) -> metrics` and, optionally,
  `evaluate(cfg, checkpoint_dir, run_dir) -> metrics` for `python -m rlhf.evaluate`.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from rlhf.algos.base import Algorithm
from rlhf.algos.constrained_ppo import ConstrainedPPO
from rlhf.algos.p3o import P3O
from rlhf.algos.ppo import PPO
from rlhf.algos.vas import VAS

RL_ALGOS: dict[str, type[Algorithm]] = {"ppo": PPO, "p3o": P3O, "vas": VAS, "constrained_ppo": ConstrainedPPO}
RL_ENV_KINDS = ("text",)
# name -> (module, env kinds it runs on)
STANDALONE_ALGOS: dict[str, tuple[str, tuple[str, ...]]] = {
    "rm": ("rlhf.algos.rm", ("text",)),
    "bon": ("rlhf.algos.bon", ("text",)),
    "dpo": ("rlhf.algos.dpo", ("text",)),
    "dno": ("rlhf.algos.dno", ("text",)),
    "cmorl": ("rlhf.algos.cmorl", ("control",)),
    "morl_baselines": ("rlhf.algos.morl_baselines", ("control",)),
    "reptile": ("rlhf.algos.reptile", ("mario",)),
    "sb3_ppo": ("rlhf.algos.sb3_baselines", ("mario",)),
    "sb3_dqn": ("rlhf.algos.sb3_baselines", ("mario",)),
    "rllib_ppo": ("rlhf.algos.rllib_ppo", ("mario",)),
}


def algo_names() -> list[str]:
    return sorted([*RL_ALGOS, *STANDALONE_ALGOS])


def env_kinds(algo: str) -> tuple[str, ...]:
    return STANDALONE_ALGOS[algo][1] if algo in STANDALONE_ALGOS else RL_ENV_KINDS


def standalone_module(algo: str) -> ModuleType | None:
    return importlib.import_module(STANDALONE_ALGOS[algo][0]) if algo in STANDALONE_ALGOS else None
