"""Launchers: where rollouts run (docs/layout.md, contract 6).

The trainer is the single controller. It sees one small object, a rollout backend:

    rollout = make_rollout(cfg, policy, tokenizer, policy_dir, num_episodes)
    episodes = rollout.run(prompt_seeds)               # Episode list, in seed order
    rollout.sync(policy.named_parameters(), version)   # after each optimizer step
    rollout.version                                    # policy version the engines hold
    rollout.close()

`launcher=local` runs engine and environments in the trainer's process (rlhf.launch.local);
`launcher=ray` runs them in Ray actors (rlhf.launch.ray_launcher). Algorithms never see
either: they get episodes and return losses.
"""
from __future__ import annotations

from pathlib import Path

from rlhf.launch.local import LocalRollout, RolloutBackend

LAUNCHERS = ("local", "ray")


def make_rollout(cfg, policy, tokenizer, policy_dir: Path, num_episodes: int) -> RolloutBackend:
    """The rollout backend named by `launcher.name`; `num_episodes` per phase."""
    name = str(cfg.launcher.name)
    if name == "local":
        return LocalRollout.build(cfg, policy, tokenizer, num_episodes)
    if name == "ray":
        from rlhf.launch.ray_launcher import RayRollout  # Ray is an optional extra: import only when asked

        return RayRollout(cfg, policy, tokenizer, policy_dir, num_episodes)
    raise ValueError(f"launcher.name={name!r} is not valid; valid choices: {', '.join(LAUNCHERS)}")
