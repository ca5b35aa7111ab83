"""The rollout backend interface and `launcher=local`: engine and environments in the
trainer's process.

Seeded chunks. With `launcher.chunk_episodes=0` (the default) a phase is one generate batch
drawn from the trainer's torch RNG, as it always was. With N > 0 the phase's episodes are
cut into consecutive chunks of N, and each chunk samples from its own RNG, seeded by its
first prompt seed and its position in the phase. A chunk's episodes then depend only on
its seeds and the weights, not on the process that ran it: this is how `launcher=ray`
works, and the same setting here reproduces a Ray run bit for bit in one process.
"""
from __future__ import annotations

import torch

from envs import base as env_base
from envs.base import env_settings
from rlhf.rollout.engine import Engine, SamplingParams
from rlhf.rollout.factory import make_engine
from rlhf.rollout.runner import Episode, EpisodeRunner


class RolloutBackend:
    """What the trainer calls; see rlhf/launch/__init__.py."""

    version: int = 0

    def run(self, seeds: list[int]) -> list[Episode]:
        raise NotImplementedError

    def sync(self, named_params, version: int) -> None:
        raise NotImplementedError

    def score(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[list[float]]:
        """The engine's teacher-forced log-probs of a probe batch (the trainer's weight-sync check)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


# --- the parts every backend builds (here, or inside each Ray worker) --------------------------
def build_runner(cfg, engine: Engine, tokenizer, model) -> EpisodeRunner:
    return EpisodeRunner(engine, tokenizer, SamplingParams.from_config(cfg.rollout),
                         max_turns=int(cfg.env.max_turns),
                         max_total_tokens=int(model.config.max_position_embeddings))


def build_envs(cfg, count: int) -> list:
    return [env_base.make(str(cfg.env.name), split="train", **env_settings(cfg.env)) for _ in range(count)]


# --- seeded chunks ------------------------------------------------------------------------------
def chunk_bounds(num_episodes: int, chunk_episodes: int) -> list[tuple[int, int]]:
    """[start, end) of each chunk; chunk_episodes <= 0 means one chunk."""
    size = chunk_episodes if chunk_episodes > 0 else max(num_episodes, 1)
    return [(start, min(start + size, num_episodes)) for start in range(0, num_episodes, size)]


def chunk_rng_seed(first_seed: int, start: int) -> int:
    """The sampling seed of the chunk that starts at episode `start` of a phase. The position
    matters: the samples of one prompt share its seed and may span two chunks."""
    return (first_seed * 1_000_003 + start) % (2 ** 63)


def run_chunk(runner: EpisodeRunner, envs: list, seeds: list[int], rng_seed: int) -> list[Episode]:
    """Run one chunk with its own torch RNG; the caller's RNG stream is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng_seed)
        return runner.run(envs[:len(seeds)], seeds)


class LocalRollout(RolloutBackend):
    """Engine and environments in this process. The engine shares the trainer's module, so a
    sync only records the version (or copies, for engines that hold their own weights)."""

    def __init__(self, engine: Engine, runner: EpisodeRunner, envs: list, chunk_episodes: int = 0):
        self.engine, self.runner, self.envs = engine, runner, envs
        self.chunk_episodes = chunk_episodes

    @classmethod
    def build(cls, cfg, policy, tokenizer, num_episodes: int) -> LocalRollout:
        engine = make_engine(cfg, policy, tokenizer)
        return cls(engine, build_runner(cfg, engine, tokenizer, policy), build_envs(cfg, num_episodes),
                   int(cfg.launcher.get("chunk_episodes", 0)))

    @property
    def version(self) -> int:
        return self.engine.version

    def run(self, seeds: list[int]) -> list[Episode]:
        if len(seeds) != len(self.envs):
            raise ValueError(f"{len(seeds)} seeds for {len(self.envs)} environments")
        if self.chunk_episodes <= 0:  # one batch from the trainer's RNG (the historical default)
            return self.runner.run(self.envs, seeds)
        episodes = []
        for start, end in chunk_bounds(len(seeds), self.chunk_episodes):
            episodes += run_chunk(self.runner, self.envs, seeds[start:end], chunk_rng_seed(seeds[start], start))
        return episodes

    def sync(self, named_params, version: int) -> None:
        self.engine.load_weights(named_params, version=version)

    def score(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[list[float]]:
        return self.engine.score(sequences, prompt_lens)
