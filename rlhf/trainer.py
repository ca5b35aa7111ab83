"""The one training loop: rollout -> reward -> algorithm update -> weight sync -> log ->
checkpoint, for every RL algorithm on every text environment.

    config -> Trainer -> env(s), policy (+ frozen reference), reward source, engine, algorithm
    each phase:
        episodes = rollout.run(prompt seeds)             # token-in / token-out (rlhf.launch: local or Ray)
        batch    = collate(episodes); batch.old_logprobs = pi_old (engine's behaviour log-probs
                   when provably the policy's own, else a trainer forward)
        turn_rewards = reward source(episodes, batch)     # what the algorithm optimizes
        metrics  = algorithm.step(batch, turn_rewards)
        rollout.sync(policy, version=step)               # into every engine copy
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from agents.models import apply_lora, frozen_copy, load_lm, load_tokenizer
from envs import base as env_base
from envs.base import env_settings
from rlhf.algos import algorithm_class
from rlhf.evaluation import evaluate_policy
from rlhf.harness import Job, seed_everything
from rlhf.harness import run as run_job
from rlhf.launch import make_rollout
from rlhf.rewards import EnsembleReward, build_reward_source
from rlhf.rollout.batch import collate
from rlhf.rollout.engine import HFEngine, SamplingParams, behaviour_is_policy, build_sync_probe, check_weight_sync
from rlhf.rollout.guidance import decoding_processors
from rlhf.warmstart import warm_start_policy

log = logging.getLogger("rlhf")
GAP_CHECK_ROWS = 4  # episodes re-scored each phase to measure rollout/logp_diff_max when pi_old is reused


class Trainer(Job):
    """The shared loop as a harness job: one step = one rollout/update phase."""

    unit = "step"

    def __init__(self, cfg, run_dir: Path):
        super().__init__(cfg, run_dir)
        seed_everything(int(cfg.seed))
        self.env_name = str(cfg.env.name)
        probe_env = env_base.make(self.env_name, split="train", **env_settings(cfg.env))
        self.policy_dir = warm_start_policy(cfg, probe_env, log.info)
        self.tokenizer = load_tokenizer(self.policy_dir)
        # every model lives on cfg.device; episodes are collated and rewarded on the CPU, then
        # the batch moves there (warm starts are built on the CPU and cached)
        self.device = torch.device(str(cfg.device))
        policy = load_lm(self.policy_dir).to(self.device)
        self.ref = frozen_copy(policy)
        if int(cfg.model.lora.rank) > 0:
            policy = apply_lora(policy, cfg.model.lora)
        self.policy = policy
        algo_cls = algorithm_class(str(cfg.algo.name))
        self.reward, reward_model = build_reward_source(cfg, self.policy_dir, getattr(algo_cls, "vector_reward", False))
        self.reward.to(self.device)
        self.algo = algo_cls(cfg, policy, self.ref, self.tokenizer, reward_model=reward_model)
        for module in self.algo.modules().values():  # critics, value heads: in place, so optimizers keep them
            module.to(self.device)
        self.num_episodes = int(cfg.train.prompts_per_step) * self.algo.samples_per_prompt
        # engine + environments: in this process (launcher=local) or in Ray actors (launcher=ray)
        self.rollout = make_rollout(cfg, policy, self.tokenizer, self.policy_dir, self.num_episodes)
        self.sync_probe = self.build_sync_probe(probe_env)
        # pi_old = the engine's behaviour log-probs where they are provably the policy's own
        # (rollout.behaviour_as_old_logprobs, on by default): one no-grad forward less per phase
        self.reuse_behaviour = bool(cfg.rollout.get("behaviour_as_old_logprobs", True)) and behaviour_is_policy(
            getattr(self.rollout, "engine", None), policy, SamplingParams.from_config(cfg.rollout))
        self.sync_gap = self.check_sync()  # the engine must start from the policy's weights too
        self.prompt_counter = 0
        # Building warm starts consumes random numbers only when they are not cached yet:
        # seed again so a run does not depend on what the cache held.
        seed_everything(int(cfg.seed))

    # --- checked weight sync -------------------------------------------------
    def build_sync_probe(self, env):
        """A few held-fixed prompts with greedy continuations of the initial policy (made by an
        HF engine over the policy, so the probe is the same whatever engine or launcher runs)."""
        n = int(self.cfg.rollout.get("sync_probe_prompts", 4))
        prompts = [self.tokenizer(env.reset(10**9 + i), add_special_tokens=False)["input_ids"] for i in range(n)]
        return build_sync_probe(HFEngine(self.policy, self.tokenizer), prompts)

    def sync_rollout(self, version: int) -> float:
        """Send the policy's weights to the engine(s), then check them on the probe."""
        self.rollout.sync(self.policy.named_parameters(), version=version)
        return self.check_sync()

    def check_sync(self) -> float:
        """Max per-token log-prob gap engine vs trainer on the probe; raises above
        rollout.sync_check_threshold. Scored by `rollout.score` or the local engine's."""
        scorer = self.rollout if hasattr(self.rollout, "score") else getattr(self.rollout, "engine", None)
        if scorer is None:
            return float("nan")  # a backend that cannot score the probe (yet)
        engine = getattr(self.rollout, "engine", None)
        if isinstance(engine, HFEngine) and engine.model is self.policy:
            return 0.0  # the engine generates with the trainer's own module: the same forward, so the gap is 0
        return check_weight_sync(scorer, self.policy, self.sync_probe, self.tokenizer.pad_token_id,
                                 self.cfg.rollout.get("sync_check_threshold"))

    def old_logprobs(self, batch) -> tuple:
        """(pi_old per token, max |behaviour - teacher-forced| gap on generated tokens). With
        reuse_behaviour the behaviour log-probs are pi_old and the gap is measured on the first
        GAP_CHECK_ROWS episodes only; otherwise on the whole recomputed batch."""
        checked = batch.select(torch.arange(min(len(batch), GAP_CHECK_ROWS))) if self.reuse_behaviour else batch
        recomputed = self.algo.frozen_logprobs(self.policy, checked)
        gap = ((recomputed - checked.behaviour_logprobs).abs() * checked.action_mask).max()
        return (batch.behaviour_logprobs if self.reuse_behaviour else recomputed), gap

    # --- prompts ---------------------------------------------------------------------------
    def next_prompt_seeds(self) -> list[int]:
        """Seeds of this phase's prompts, each repeated samples_per_prompt times (adjacent)."""
        n = int(self.cfg.train.prompts_per_step)
        base = int(self.cfg.seed) * 1_000_000_007 + self.prompt_counter
        self.prompt_counter += n
        return [base + i for i in range(n) for _ in range(self.algo.samples_per_prompt)]

    # --- one phase -------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        t0 = time.time()
        episodes = self.rollout.run(self.next_prompt_seeds())
        t_gen = time.time() - t0
        batch = collate(episodes, self.tokenizer.pad_token_id)
        turn_rewards, metrics = self.reward(episodes, batch)
        t_score = time.time() - t0 - t_gen
        batch, turn_rewards = batch.to(self.device), turn_rewards.to(self.device)
        batch.old_logprobs, gap = self.old_logprobs(batch)
        t1 = time.time()
        metrics.update(self.algo.step(batch, turn_rewards))
        t_train = time.time() - t1
        sync_gap = self.sync_rollout(version=self.steps_done + 1)
        t_sync = time.time() - t1 - t_train
        if self.samples_due():
            self.train_samples = self.sample_rows(episodes, turn_rewards)
        generated = int(batch.action_mask.sum())
        optimizer = getattr(self.algo, "optimizer", None)
        if optimizer is not None:
            metrics["optimizer/lr"] = float(optimizer.param_groups[0]["lr"])
        # the policy's per-token entropy at the sampling temperature, where the algorithm does not
        # compute it exactly from the logits (PPO does): mean -log pi(a|s) of the sampled tokens
        # before the update, its Monte Carlo estimate
        metrics.setdefault("objective/entropy", float(-(batch.old_logprobs * batch.action_mask).sum()
                                                      / batch.action_mask.sum().clamp(min=1)))
        metrics.update({
            "objective/scores": float(turn_rewards.sum(1).mean()),  # per episode (and component, if [B, L, N])
            **self.env_metrics(episodes),
            "response_length/mean": float(batch.response_length.float().mean()),
            "objective/eos_rate": float(batch.finished.float().mean()),
            "rollout/logp_diff_max": float(gap),
            "rollout/sync_logp_diff_max": sync_gap,  # engine vs trainer on the fixed probe, after this sync
            "rollout/policy_version": float(self.rollout.version),
            "timing_s/gen": t_gen, "timing_s/score": t_score, "timing_s/train": t_train, "timing_s/sync": t_sync,
            "perf/tokens_per_s": generated / max(t_gen, 1e-9),
            "perf/time_per_step": time.time() - t0,
        })
        return metrics

    def sample_rows(self, episodes, turn_rewards, n: int = 8) -> list[dict]:
        """The first n episodes of a phase as rows: prompt, response (and turns), the reward the
        algorithm optimized (`score`) and the env's reward components."""
        rows = []
        for ep, score in zip(episodes[:n], turn_rewards.sum(1)[:n]):
            env = {k: ep.env_reward(k) for k in ep.rewards[0]} if isinstance(ep.rewards[0], dict) else {
                "return": ep.env_reward("return")}
            rows.append({"seed": ep.seed, "prompt": self.tokenizer.decode(ep.token_ids[:ep.prompt_len]),
                         "response": " ".join(ep.action_texts), "turns": ep.action_texts,
                         "score": float(score.sum()), **env})
        return rows

    def env_metrics(self, episodes) -> dict[str, float]:
        first = episodes[0].rewards[0]
        out = {}
        if isinstance(first, dict):
            for component in first:
                out[f"env/{self.env_name}/{component}"] = float(np.mean([ep.env_reward(component) for ep in episodes]))
            if "gold" in first:
                out["objective/gold"] = out[f"env/{self.env_name}/gold"]
        else:
            out[f"env/{self.env_name}/return"] = float(np.mean([ep.env_reward("return") for ep in episodes]))
        return out

    # --- what the harness calls ------------------------------------------------------------
    def step(self) -> dict[str, float]:
        return self.train_step()

    def fit(self) -> dict[str, float]:
        """Run to train.steps phases in the harness (resume, logging, checkpoints, evaluation)."""
        return run_job(self)

    def describe(self) -> str:
        return (f"{self.cfg.algo.name} on env={self.env_name}, reward={self.cfg.reward.name}: "
                f"{self.total} phases x {self.num_episodes} episodes")

    def close(self) -> None:
        self.rollout.close()

    def evaluate(self) -> dict[str, float]:
        reward_model = self.reward.ensemble if isinstance(self.reward, EnsembleReward) else None
        processors = self.algo.eval_processors() or decoding_processors(self.cfg.decoding)
        engine = getattr(self.rollout, "engine", None)  # launcher=local: the engine that holds the policy's weights
        return evaluate_policy(self.cfg, self.policy, self.ref, self.tokenizer, reward_model, processors, engine,
                               records=self.eval_samples)

    # --- checkpoints (written and read by the harness) -----------------------------------------
    def modules(self):
        return self.algo.modules()

    def state_dict(self) -> dict:
        return {"prompt_counter": self.prompt_counter, "algo_state": self.algo.state_dict(),
                "engine_version": self.rollout.version, "policy_dir": str(self.policy_dir)}

    def load_state_dict(self, state: dict) -> None:
        self.algo.load_state_dict(state["algo_state"])
        self.prompt_counter = int(state["prompt_counter"])
        self.sync_rollout(version=int(state["engine_version"]))  # the engine gets the restored weights

    def write_extra(self, checkpoint_dir: Path) -> None:
        self.policy.save_pretrained(str(checkpoint_dir / "hf"))
        self.tokenizer.save_pretrained(str(checkpoint_dir / "hf"))
        self.algo.write_extra(checkpoint_dir)
