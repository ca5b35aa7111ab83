"""Offline RL on scored samples, in rounds: what OREO and rejection-sampling fine-tuning share.

    round r (every updates_per_round updates):
        data  <- round 0: algo.data (a JSONL of scored responses) or the cached, verifier-scored
                 samples of the warm-start policy (rlhf.samples, shared with algo=dpo);
                 round r > 0 (iterative OREO, Wang et al. 2024, section 4.3): fresh samples
                 of the current policy
        keep  <- the algorithm's filter (e.g. only correct samples for rejection sampling);
                 responses cut off at max_new_tokens are dropped: their terminal reward
                 would be wrong (they never reached an answer)
    each update: one minibatch of algo.batch_size trajectories -> algorithm.update(batch)

One harness step is one update (minibatch), so logging, evaluation (eval.every), checkpoints
and resume work at update granularity. updates_per_round = algo.epochs x (algo.prompts x
algo.responses_per_prompt) / algo.batch_size: a nominal epoch count; the kept trajectories
are visited in reshuffled passes. A checkpoint holds the round's data, so a resumed run
continues on exactly the samples it had.
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from agents.models import frozen_copy, load_lm, load_tokenizer, save_lm
from envs import base as env_base
from envs.base import env_settings
from rlhf.config import ConfigError
from rlhf.evaluation import evaluate_policy
from rlhf.evaluation import evaluate_run_checkpoint as evaluate  # noqa: F401  (python -m rlhf.evaluate)
from rlhf.harness import Job
from rlhf.preference import data as prefs
from rlhf.rollout.batch import collate_allowed
from rlhf.rollout.engine import allowed_along
from rlhf.samples import sample_scored, scored_lists, train_seeds
from rlhf.warmstart import warm_start_policy

log = logging.getLogger("rlhf")


@dataclass
class Trajectory:
    prompt_ids: list[int]
    response_ids: list[int]  # ends with EOS
    reward: float  # R = reward_scale * score + reward_shift
    score: float  # the verifier's score (1 correct / 0 otherwise)
    action_mask: list[int] | None = None  # multi-turn: 1 on generated response tokens, 0 on observations
    allowed: list[list[int] | None] | None = None  # constrained decoding: the allowed ids of each response token


@dataclass
class Minibatch:
    input_ids: torch.Tensor  # [B, L] prompt + response, right-padded
    attention_mask: torch.Tensor  # [B, L]
    action_mask: torch.Tensor  # [B, L] 1 on generated response tokens (the actions; EOS included; 0 on observations)
    returns: torch.Tensor  # [B] the terminal reward R of each trajectory
    scores: torch.Tensor  # [B] the verifier's scores
    token_texts: list[list[str]]  # decoded response tokens (step boundaries)
    allowed_ids: torch.Tensor | None = None  # [B, L, K] constrained decoding's allowed ids per token, -1 padded


def expert_lists(env, tokenizer, n: int, seed: int) -> list[prefs.RankedList]:
    """n won episodes of the env's expert as scored samples (score 1), laid out as the multi-turn
    runner lays out a rollout: each command's ids then EOS (action mask 1), then the next
    observation's ids (mask 0). Wang et al. 2024 train OREO on ALFWorld from 5 rollouts per task
    of a policy SFT'd on expert trajectories; adding the expert trajectories themselves to the
    offline data is this option (algo.expert_episodes). Where the env decodes constrained to its
    admissible commands (`constrain_actions`), each command token also keeps the ids the
    constraint allowed there, as the policy's own samples do, so both are scored under the
    same renormalized distribution."""
    eos = tokenizer.eos_token_id
    constrained = bool(getattr(env, "constrain_actions", False))

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    lists = []
    for turns in env.expert_episodes(n, seed, admissible=constrained):
        ids, mask, allowed = [], [], []
        for k, (_, command, *menu) in enumerate(turns):
            action = encode(" " + command) + [eos]
            ids, mask = ids + action, mask + [1] * len(action)
            allowed += allowed_along([encode(" " + c) + [eos] for c in menu[0]], action) if constrained else []
            if k + 1 < len(turns):
                observation = encode(turns[k + 1][0])
                ids, mask, allowed = ids + observation, mask + [0] * len(observation), allowed + [None] * len(observation)
        lists.append(prefs.RankedList(encode(turns[0][0]), [ids], [1.0], [turns[-1][1]], [mask],
                                      [allowed] if constrained else None))
    return lists


class OfflineRounds(Job):
    """Subclasses implement `update(batch) -> metrics` and may override `keep`, `modules`,
    `optimizers` and `evaluate`."""

    unit = "update"

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.algo.get("data") and not Path(str(cfg.algo.data)).expanduser().is_file():
            raise ConfigError(f"algo.data={cfg.algo.data} is not a file; give a JSONL of scored responses "
                              "(schema: rlhf/preference/data.py) or algo.data=null to sample from the env")
        for key in ("rounds", "epochs", "batch_size", "prompts", "responses_per_prompt"):
            if int(cfg.algo[key]) < 1:
                raise ConfigError(f"algo.{key}={cfg.algo[key]} must be >= 1")
        if int(cfg.algo.get("expert_episodes") or 0):
            if not hasattr(env_base.env_class(str(cfg.env.name)), "expert_episodes"):
                raise ConfigError(f"algo.expert_episodes={cfg.algo.expert_episodes}: env={cfg.env.name} has no expert "
                                  "episodes; valid choices: env=alfworld, or algo.expert_episodes=0")

    def __init__(self, cfg, run_dir):
        super().__init__(cfg, run_dir)
        a = cfg.algo
        self.env = env_base.make(str(cfg.env.name), split="train", **env_settings(cfg.env))
        self.policy_dir = warm_start_policy(cfg, self.env, log.info)
        self.tokenizer = load_tokenizer(self.policy_dir)
        torch.manual_seed(int(cfg.seed))  # the same start whether or not the warm start was cached
        self.policy = load_lm(self.policy_dir)
        self.ref = frozen_copy(self.policy)
        self.batch_size = int(a.batch_size)
        nominal = int(a.prompts) * int(a.responses_per_prompt)
        self.updates_per_round = max(1, math.ceil(int(a.epochs) * nominal / self.batch_size))
        self.total = int(a.rounds) * self.updates_per_round
        self.order_rng = random.Random(int(cfg.seed))  # minibatch order
        self.data: list[Trajectory] = []
        self.order: list[int] = []
        self.cursor = 0
        self.round = -1  # the round self.data belongs to
        self.round_metrics: dict[str, float] = {}

    # --- data -----------------------------------------------------------------------------------
    def keep(self, t: Trajectory, score: float) -> bool:
        """Which scored samples the algorithm trains on (all of them by default)."""
        return True

    def collect(self, round_index: int) -> None:
        a, eos = self.cfg.algo, self.tokenizer.eos_token_id
        if round_index == 0:
            lists = prefs.load_jsonl(a.data, self.tokenizer) if a.get("data") else scored_lists(self.cfg, self.policy_dir)
            if int(a.get("expert_episodes") or 0):
                lists = lists + expert_lists(self.env, self.tokenizer, int(a.expert_episodes), int(a.data_seed))
        else:
            lists = sample_scored(self.cfg, self.policy, self.tokenizer, train_seeds(self.cfg, round_index))
        scale, shift = float(a.get("reward_scale", 1.0)), float(a.get("reward_shift", 0.0))
        data, truncated, scores = [], 0, []
        for r in lists:
            for i, (response, score) in enumerate(zip(r.responses, r.scores)):
                scores.append(score)
                if not response or response[-1] != eos:
                    truncated += 1
                    continue
                mask = list(r.masks[i]) if r.masks else None
                allowed = r.allowed[i] if r.allowed else None
                t = Trajectory(list(r.prompt_ids), list(response), scale * float(score) + shift, float(score), mask,
                               allowed)
                if self.keep(t, score):
                    data.append(t)
        if not data:
            log.warning(f"[{a.name}] round {round_index}: none of {len(scores)} samples is kept ({truncated} "
                        "truncated): this round's updates are skipped (raise algo.prompts or "
                        "algo.responses_per_prompt, or rollout.max_new_tokens if many are truncated)")
        self.data, self.order, self.cursor, self.round = data, [], 0, round_index
        self.round_metrics = {"data/round": float(round_index), "data/samples": float(len(scores)),
                              "data/kept": float(len(data)), "data/truncated": float(truncated),
                              "data/accuracy": float(sum(scores) / len(scores))}
        log.info(f"[{a.name}] round {round_index}: {len(data)} of {len(scores)} samples kept "
                 f"(sample accuracy {self.round_metrics['data/accuracy']:.3f}, {truncated} truncated)")

    def next_minibatch(self) -> Minibatch:
        chosen = []
        while len(chosen) < min(self.batch_size, len(self.data)):
            if self.cursor >= len(self.order):
                self.order = list(range(len(self.data)))
                self.order_rng.shuffle(self.order)
                self.cursor = 0
            chosen.append(self.data[self.order[self.cursor]])
            self.cursor += 1
        return self.collate(chosen)

    def collate(self, trajectories: list[Trajectory]) -> Minibatch:
        ids, attention, action = prefs.collate_sequences([t.prompt_ids for t in trajectories],
                                                         [t.response_ids for t in trajectories],
                                                         self.tokenizer.pad_token_id,
                                                         [t.action_mask for t in trajectories])
        texts = [[self.tokenizer.decode([tok]) for tok in t.response_ids] for t in trajectories]
        allowed = collate_allowed([None if t.allowed is None else [None] * len(t.prompt_ids) + list(t.allowed)
                                   for t in trajectories], ids.shape[1])
        return Minibatch(ids, attention, action.float(), torch.tensor([t.reward for t in trajectories]),
                         torch.tensor([t.score for t in trajectories]), texts, allowed)

    # --- the harness's step ---------------------------------------------------------------------
    def update(self, batch: Minibatch) -> dict[str, float]:
        raise NotImplementedError

    def step(self) -> dict[str, float]:
        round_index = self.steps_done // self.updates_per_round
        first_of_round = round_index != self.round
        if first_of_round:
            self.collect(round_index)
        if not self.data:
            return {"data/skipped_update": 1.0, **(self.round_metrics if first_of_round else {})}
        self.policy.train()
        metrics = self.update(self.next_minibatch())
        return {**metrics, **(self.round_metrics if first_of_round else {})}

    def evaluate(self) -> dict[str, float]:
        return evaluate_policy(self.cfg, self.policy, self.ref, self.tokenizer, records=self.eval_samples)

    # --- checkpoints ----------------------------------------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def modules(self):
        return {"policy": self.policy}

    def generators(self):
        return {"minibatch_order": self.order_rng}

    def state_dict(self) -> dict:
        return {"optimizers": {name: opt.state_dict() for name, opt in self.optimizers().items()},
                "data": [vars(t) for t in self.data], "order": self.order, "cursor": self.cursor, "round": self.round,
                "round_metrics": self.round_metrics, "policy_dir": str(self.policy_dir)}

    def load_state_dict(self, state: dict) -> None:
        for name, opt in self.optimizers().items():
            opt.load_state_dict(state["optimizers"][name])
        self.data = [Trajectory(**t) for t in state["data"]]
        self.order, self.cursor, self.round = list(state["order"]), int(state["cursor"]), int(state["round"])
        self.round_metrics = dict(state["round_metrics"])

    def write_extra(self, checkpoint_dir: Path) -> None:
        save_lm(self.policy, self.tokenizer, checkpoint_dir / "hf")

    def describe(self) -> str:
        a = self.cfg.algo
        return (f"{a.name} on env={self.cfg.env.name}: {a.rounds} round(s) x {self.updates_per_round} updates of "
                f"{self.batch_size} ({a.prompts} prompts x {a.responses_per_prompt} samples per round)")
