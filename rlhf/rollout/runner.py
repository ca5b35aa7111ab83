"""Token-in / token-out episode runner for single- and multi-turn text environments.

All active episodes of a batch generate together, one engine call per turn. An episode's
`token_ids` are exactly the ids the engine produced, with the environment's observation
tokens appended between turns (action_mask 0: they never carry loss). The text handed to
env.step is a decode of the generated ids, but training only ever sees the ids.

An env whose `allowed_actions()` returns a list of answers (e.g. ALFWorld's admissible commands
with env.constrain_actions=true) is answered by constrained decoding: the engine may only spell
one of them followed by EOS, and the episode keeps the allowed token ids of every generated
position (`allowed`) so the trainer scores the same renormalized distribution.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from envs.base import Reward, TextEnv
from rlhf.rollout.engine import Engine, SamplingParams


@dataclass
class Episode:
    seed: int
    prompt_len: int
    token_ids: list[int]
    action_mask: list[int]  # 1 on generated tokens
    logprobs: list[float]  # behaviour log-probs, 0 where action_mask is 0
    turn_ends: list[int] = field(default_factory=list)  # index of each turn's last generated token
    rewards: list[Reward] = field(default_factory=list)  # env reward of each turn
    action_texts: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    infos: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    allowed: list[list[int] | None] | None = None  # constrained decoding: allowed ids per token (None: free)

    @property
    def num_generated(self) -> int:
        return sum(self.action_mask)

    def env_reward(self, component: str) -> float:
        """Sum over turns of one named reward component (or of scalar rewards)."""
        total = 0.0
        for r in self.rewards:
            if isinstance(r, dict):
                if component not in r:
                    raise KeyError(f"env reward has no component '{component}'; "
                                   f"valid choices: {', '.join(r)}")
                total += r[component]
            else:
                total += float(r)
        return total


class EpisodeRunner:
    def __init__(self, engine: Engine, tokenizer, sampling: SamplingParams, max_turns: int = 1,
                 max_total_tokens: int | None = None):
        self.engine = engine
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.max_turns = max_turns
        self.max_total_tokens = max_total_tokens

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def run(self, envs: list[TextEnv], seeds: list[int]) -> list[Episode]:
        if len(envs) != len(seeds):
            raise ValueError(f"{len(envs)} envs but {len(seeds)} seeds")
        episodes = []
        for env, seed in zip(envs, seeds):
            prompt = self.encode(env.reset(seed))
            episodes.append(Episode(seed, len(prompt), list(prompt), [0] * len(prompt), [0.0] * len(prompt)))
        active = list(range(len(episodes)))
        eos = self.tokenizer.eos_token_id
        while active:
            allowed = [self.allowed_sequences(envs[i]) for i in active]
            completions = self.engine.generate([episodes[i].token_ids for i in active], self.sampling,
                                               **({"allowed": allowed} if any(a is not None for a in allowed) else {}))
            still_active = []
            for i, completion in zip(active, completions):
                ep = episodes[i]
                if completion.allowed is not None and ep.allowed is None:
                    ep.allowed = [None] * len(ep.token_ids)
                if ep.allowed is not None:
                    ep.allowed += completion.allowed or [None] * len(completion.token_ids)
                ep.token_ids += completion.token_ids
                ep.action_mask += [1] * len(completion.token_ids)
                ep.logprobs += completion.logprobs
                ep.turn_ends.append(len(ep.token_ids) - 1)
                ep.finish_reasons.append(completion.finish_reason)
                text = self.tokenizer.decode([t for t in completion.token_ids if t != eos],
                                             skip_special_tokens=True)
                ep.action_texts.append(text)
                observation, reward, done, info = envs[i].step(text)
                ep.rewards.append(reward)
                ep.infos.append(info)
                out_of_room = (self.max_total_tokens is not None
                               and len(ep.token_ids) >= self.max_total_tokens)
                if done or len(ep.turn_ends) >= self.max_turns or out_of_room or observation is None:
                    ep.done = bool(done)
                    continue
                obs_ids = self.encode(observation)
                if ep.allowed is not None:
                    ep.allowed += [None] * len(obs_ids)
                ep.token_ids += obs_ids
                ep.action_mask += [0] * len(obs_ids)
                ep.logprobs += [0.0] * len(obs_ids)
                still_active.append(i)
            active = still_active
        return episodes

    def allowed_sequences(self, env: TextEnv) -> list[list[int]] | None:
        """The token ids of each answer the env allows now, each ending in EOS (None: free text)."""
        answers = env.allowed_actions()
        if answers is None:
            return None
        return [self.encode(a) + [self.tokenizer.eos_token_id] for a in answers]
