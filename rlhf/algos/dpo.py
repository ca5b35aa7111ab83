"""`algo=dpo algo.loss=<name>`: offline preference optimization with the DPO family.

    DPO    Rafailov et al. 2023, "Direct Preference Optimization" (cDPO: label smoothing)
    IPO    Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences"
    SimPO  Meng et al. 2024;  f-DPO  Wang et al. 2023;  TDPO  Zeng et al. 2024;  ASFT  Wang et al. 2024
    RPO    Liu et al. 2024 (DPO + NLL);  LiPO-lambda  Liu et al. 2024 (listwise)
    Curry-DPO  Pattnaik et al. 2024, "Enhancing Alignment using Curriculum Learning & Ranked Preferences"

The losses are in rlhf.preference.losses, the shared training code in rlhf.preference.train.

    python -m rlhf.train algo=dpo algo.loss=ipo
    python -m rlhf.train algo=dpo algo.loss=lipo algo.responses_per_prompt=4
    python -m rlhf.train algo=dpo algo.curriculum=iterative        # Curry-DPO
    python -m rlhf.train algo=dpo algo.data=/path/prefs.jsonl      # your own pairs/lists

Data: ranked lists of responses per train prompt, sampled from the SFT policy and scored by
the env's gold scorer (cached), or a local JSONL file (rlhf.preference.data). Pairwise
losses train on each list's best-vs-worst pair; `lipo` trains on whole lists; Curry-DPO
trains on the pairs (R_1, R_K), ..., (R_1, R_2) easy to hard, one stage each, and with
`curriculum=iterative` the reference of stage s+1 is the policy after stage s.

One harness step is one epoch (stages x epochs steps; a checkpoint after each). Reference
log-probs are computed once per stage (one no-grad pass) and kept for every epoch; TDPO
needs the reference's full next-token distributions, so it runs the reference forward with
each batch instead. Logged per epoch: dpo/loss, dpo/rewards_{chosen,rejected,margin,accuracy}
(beta * Delta), dpo/logps_{chosen,rejected} (likelihood displacement shows up here),
dpo/stage; per optimizer step the same under dpo_step/ (x = optimizer steps); and the held-out
evaluation (gold, KL to the SFT policy) at the end.
"""
from __future__ import annotations

import logging
import random
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
from rlhf.preference.losses import NEEDS_NO_REFERENCE
from rlhf.preference.train import beta_of, make_adam, reference_logps, train_lists, train_pairs
from rlhf.samples import scored_lists
from rlhf.warmstart import warm_start_policy

log = logging.getLogger("rlhf")


# --- data ---------------------------------------------------------------------------------------

def stages_of(cfg, lists) -> list[list]:
    """What each stage trains on: pairs (or lists, for LiPO)."""
    if str(cfg.algo.loss) == "lipo":
        return [lists]
    if str(cfg.algo.curriculum) == "none":
        return [prefs.best_vs_worst(lists)]
    stages = prefs.curriculum_stages(lists)
    if str(cfg.algo.curriculum) == "single_run":  # one stage, easy to hard, fixed reference
        return [[pair for stage in stages for pair in stage]]
    return stages


def stage_reference_logps(cfg, ref, items, pad_id):
    """Reference log-probs of a stage's pairs, computed once. SimPO and ASFT use no
    reference; LiPO and TDPO need the reference inside each batch (lists; full logits)."""
    if str(cfg.algo.loss) in NEEDS_NO_REFERENCE or str(cfg.algo.loss) in ("lipo", "tdpo"):
        zeros = torch.zeros(len(items))
        return zeros, zeros
    return reference_logps(ref, items, pad_id)


# --- the run ----------------------------------------------------------------------------------------

class DPO(Job):
    """One step = one epoch over the current stage's pairs (or lists)."""

    unit = "epoch"

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.algo.data and not Path(str(cfg.algo.data)).expanduser().is_file():
            raise ConfigError(f"algo.data={cfg.algo.data} is not a file; give a JSONL preference file "
                              "(schema: rlhf/preference/data.py) or algo.data=null to sample from the env")

    def __init__(self, cfg, run_dir):
        super().__init__(cfg, run_dir)
        env = env_base.make(str(cfg.env.name), split="train", **env_settings(cfg.env))
        self.policy_dir = warm_start_policy(cfg, env, log.info)
        self.tokenizer = load_tokenizer(self.policy_dir)
        lists = prefs.load_jsonl(cfg.algo.data, self.tokenizer) if cfg.algo.data else scored_lists(cfg, self.policy_dir)
        self.stages = stages_of(cfg, lists)
        log.info(f"[dpo] loss={cfg.algo.loss} beta={beta_of(cfg.algo)} curriculum={cfg.algo.curriculum}: "
                 f"{len(lists)} lists -> stages of {[len(s) for s in self.stages]} "
                 f"{'lists' if cfg.algo.loss == 'lipo' else 'pairs'}")
        if any(len(stage) == 0 for stage in self.stages):
            log.warning("[dpo] a stage has no pairs (every response of every prompt scored the same): its epochs "
                        "make no update; raise algo.responses_per_prompt or algo.prompts")
        torch.manual_seed(int(cfg.seed))  # the same start whether or not the data was cached
        self.policy = load_lm(self.policy_dir)
        self.sft = frozen_copy(self.policy)
        # Curry-DPO iterative: the reference is the policy after the previous stage, so it
        # is a module of its own (equal to the SFT policy in stage 1) and part of checkpoints
        self.iterative = str(cfg.algo.curriculum) == "iterative"
        self.ref = frozen_copy(self.policy) if self.iterative else self.sft
        self.optimizer = make_adam(self.policy, cfg.algo)
        self.rng = random.Random(int(cfg.seed))  # the order of pairs in each epoch
        self.epochs = int(cfg.algo.epochs)
        self.total = len(self.stages) * self.epochs
        self.ref_logps = None
        self.step_log: list[dict[str, float]] = []  # dpo_step/* of every optimizer step so far
        self.resumed = False

    def step(self) -> dict[str, float]:
        epoch, a = self.steps_done, self.cfg.algo
        stage, first_epoch = epoch // self.epochs, epoch % self.epochs == 0
        if self.resumed:
            self.relog_steps()
        if first_epoch and stage > 0 and self.iterative:
            self.ref.load_state_dict(self.policy.state_dict())  # stage s+1 is referenced to the policy after stage s
            if bool(a.reset_optimizer_per_stage):
                self.optimizer = make_adam(self.policy, a)
        if first_epoch or self.ref_logps is None:  # once per stage (and after a resume)
            self.ref_logps = stage_reference_logps(self.cfg, self.ref, self.stages[stage], self.tokenizer.pad_token_id)
        self.policy.train()
        items, pad_id = self.stages[stage], self.tokenizer.pad_token_id
        if str(a.loss) == "lipo":
            metrics = train_lists(self.policy, self.ref, self.optimizer, items, a, pad_id, self.rng, self.log_step)
        else:
            metrics = train_pairs(self.policy, self.ref, self.optimizer, items, *self.ref_logps, a, pad_id, self.rng,
                                  self.log_step)
        return {**metrics, "dpo/stage": float(stage)}

    def log_step(self, metrics: dict[str, float]) -> None:
        """Every optimizer step, for fine-grained curves (x = optimizer steps)."""
        row = {key.replace("dpo/", "dpo_step/"): value for key, value in metrics.items()}
        self.step_log.append(row)
        self.logger.scalars("", row, len(self.step_log))

    def relog_steps(self) -> None:
        """A resumed log drops every event at x > the epochs done (TensorBoard purges by step,
        across tags), so the dpo_step/* rows past that x are written again."""
        for x, row in enumerate(self.step_log, start=1):
            if x > self.steps_done:
                self.logger.scalars("", row, x)
        self.resumed = False

    def evaluate(self) -> dict[str, float]:
        return evaluate_policy(self.cfg, self.policy, self.sft, self.tokenizer, records=self.eval_samples)

    @property
    def checkpoint_every(self) -> int:
        return 1

    def modules(self):
        return {"policy": self.policy, "ref": self.ref} if self.iterative else {"policy": self.policy}

    def generators(self):
        return {"pair_order": self.rng}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "step_log": self.step_log, "policy_dir": str(self.policy_dir)}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_log, self.resumed = list(state["step_log"]), True

    def write_extra(self, checkpoint_dir: Path) -> None:
        save_lm(self.policy, self.tokenizer, checkpoint_dir / "hf")

    def describe(self) -> str:
        return (f"dpo loss={self.cfg.algo.loss} curriculum={self.cfg.algo.curriculum}: {len(self.stages)} stage(s) x "
                f"{self.epochs} epochs")
