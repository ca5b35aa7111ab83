"""Algorithm registry: `algo=<name>` selects one. One algorithm per file.

Each entry names the class (imported only when selected, so optional dependencies such as
Ray or SB3 load only for the algorithms that use them) and the env kinds it runs on. Two
kinds of class:

* `rlhf.algos.base.Algorithm`: trains an LM policy inside the shared rollout/update loop
  (rlhf.trainer): it receives a rollout batch and its rewards, and updates the policy.
* `rlhf.harness.Job`: runs its own steps (an epoch, an iteration, a stage) inside the run
  harness: preference optimization on fixed data, reward-model training, control RL.

Both validate their own settings in a `check(cfg)` classmethod, called before any work
starts. A module may also define `evaluate(cfg, checkpoint_dir, run_dir) -> metrics`, which
`python -m rlhf.evaluate` uses for checkpoints of that algorithm.
"""
from __future__ import annotations

import importlib
from types import ModuleType

# name -> ("module:Class", env kinds it runs on)
ALGORITHMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ppo": ("rlhf.algos.ppo:PPO", ("text",)),
    "p3o": ("rlhf.algos.p3o:P3O", ("text",)),
    "grpo": ("rlhf.algos.grpo:GRPO", ("text",)),
    "vas": ("rlhf.algos.vas:VAS", ("text",)),
    "constrained_ppo": ("rlhf.algos.constrained_ppo:ConstrainedPPO", ("text",)),
    "rm": ("rlhf.algos.rm:RewardModels", ("text",)),
    "bon": ("rlhf.algos.bon:BestOfN", ("text",)),
    "dpo": ("rlhf.algos.dpo:DPO", ("text",)),
    "dno": ("rlhf.algos.dno:DNO", ("text",)),
    "oreo": ("rlhf.algos.oreo:OREO", ("text",)),
    "rft": ("rlhf.algos.rft:RFT", ("text",)),
    "bcoder": ("rlhf.algos.bcoder:BCoder", ("text",)),
    "mcts_dpo": ("rlhf.algos.mcts_dpo:MCTSDPO", ("text",)),
    "cmorl": ("rlhf.algos.cmorl:CMORL", ("control",)),
    "morl_baselines": ("rlhf.algos.morl_baselines:MORLBaselines", ("control",)),
    "reptile": ("rlhf.algos.reptile:Reptile", ("mario",)),
    "sb3_ppo": ("rlhf.algos.sb3_baselines:SB3Baseline", ("mario",)),
    "sb3_dqn": ("rlhf.algos.sb3_baselines:SB3Baseline", ("mario",)),
    "rllib_ppo": ("rlhf.algos.rllib_ppo:RLlibPPO", ("mario",)),
}


def algo_names() -> list[str]:
    return sorted(ALGORITHMS)


def env_kinds(algo: str) -> tuple[str, ...]:
    return ALGORITHMS[algo][1]


def algorithm_module(algo: str) -> ModuleType:
    return importlib.import_module(ALGORITHMS[algo][0].split(":")[0])


def algorithm_class(algo: str) -> type:
    """The class registered for `algo` (an Algorithm or a harness Job)."""
    if algo not in ALGORITHMS:
        raise KeyError(f"algo={algo!r} is not registered; valid choices: {', '.join(algo_names())}")
    return getattr(algorithm_module(algo), ALGORITHMS[algo][0].split(":")[1])


def in_shared_loop(algo: str) -> bool:
    """True for algorithms that train inside rlhf.trainer's rollout/update loop."""
    from rlhf.algos.base import Algorithm

    return issubclass(algorithm_class(algo), Algorithm)
