"""MCTS-DPO (Xie et al. 2024, "Monte Carlo Tree Search Boosts Reasoning via Iterative Preference
Learning"): iterative preference learning on step-level pairs collected by tree search.

    for iteration i = 1..I (algo.iterations):
        trees  <- MCTS over reasoning steps for algo.problems train problems with the current
                  policy pi_(i-1) (rlhf.mcts: PUCT with policy priors, outcome validation +
                  stepwise self-evaluation, backup; section 2.1)
        pairs  <- at each node of a tree's selected path with >= 2 children, its highest-Q
                  child's completion (y_w) vs its lowest-Q child's (y_l), sharing the prefix;
                  trees whose selected answer is wrong are dropped (algo.filter)
        update <- one pass of conservative DPO on the pairs (section 2.2), over the tokens after
                  the shared prefix only:
                      h   = [l_th(y_w) - l_ref(y_w)] - [l_th(y_l) - l_ref(y_l)]
                      eps = min(1 - max(1,N_w) / (max(1,N_w) + N_l), 0.5)     (visit counts)
                      L   = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)
The reference stays at the SFT policy (algo.ref_update=fixed, as in the authors' code) or
becomes pi_(i-1) each iteration (per_iteration, the paper's description). Baselines in the same
job: algo.pair_level=instance (instance-level iterative DPO: K full samples per problem, a correct vs
an incorrect one, no label smoothing) and algo.search_policy=reference (offline MCTS-DPO: trees
always built with the SFT policy). algo.self_eval=none is the C = 0 ablation.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from agents.models import frozen_copy, load_lm, load_tokenizer, save_lm
from envs import base as env_base
from envs.base import env_settings
from rlhf import mcts
from rlhf.algos.base import optimizer_step
from rlhf.config import ConfigError
from rlhf.evaluation import evaluate_policy
from rlhf.evaluation import evaluate_run_checkpoint as evaluate  # noqa: F401  (python -m rlhf.evaluate)
from rlhf.harness import Job
from rlhf.preference import data as prefs
from rlhf.preference.losses import dpo_loss
from rlhf.preference.train import pair_batch_terms, reference_logps
from rlhf.rollout.factory import make_engine
from rlhf.samples import sample_scored
from rlhf.warmstart import warm_start_policy

log = logging.getLogger("rlhf")
CHOICES = {"pair_level": ("step", "instance"), "ref_update": ("fixed", "per_iteration"),
           "search_policy": ("current", "reference"), "self_eval": mcts.SELF_EVALS}


class MCTSDPO(Job):
    unit = "iteration"

    @classmethod
    def check(cls, cfg) -> None:
        for key, valid in CHOICES.items():
            if str(cfg.algo[key]) not in valid:
                raise ConfigError(f"algo.{key}={cfg.algo[key]} unknown; valid choices: {', '.join(valid)}")
        if not getattr(env_base.env_class(str(cfg.env.name)), "has_steps", False):
            raise ConfigError(f"algo=mcts_dpo searches over reasoning steps; env={cfg.env.name} has none (use env=math)")
        for key in ("iterations", "problems", "n_iters", "depth_limit", "n_init_actions", "n_actions", "batch_size"):
            if int(cfg.algo[key]) < 1:
                raise ConfigError(f"algo.{key}={cfg.algo[key]} must be >= 1")

    def __init__(self, cfg, run_dir):
        super().__init__(cfg, run_dir)
        a = cfg.algo
        self.env = env_base.make(str(cfg.env.name), split="train", **env_settings(cfg.env))
        self.policy_dir = warm_start_policy(cfg, self.env, log.info)
        self.tokenizer = load_tokenizer(self.policy_dir)
        torch.manual_seed(int(cfg.seed))
        self.policy = load_lm(self.policy_dir)
        self.sft = frozen_copy(self.policy)
        self.ref = frozen_copy(self.policy) if a.ref_update == "per_iteration" else self.sft
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=float(a.lr))
        self.total = int(a.iterations)
        searcher = self.sft if a.search_policy == "reference" else self.policy
        self.engine = make_engine(cfg, searcher, self.tokenizer)
        judge = mcts.PolicyJudge(searcher, self.tokenizer, self.engine) if a.self_eval == "policy" else None
        self.search = mcts.StepSearch(self.engine, self.tokenizer, self.env.splitter, a, judge)

    def seeds(self, iteration: int) -> list[int]:
        n = int(self.cfg.algo.problems)
        base = int(self.cfg.algo.data_seed) * 1_000_003 + iteration * n
        return [base + i for i in range(n)]

    # --- data ----------------------------------------------------------------------------------
    def step_pairs(self, seeds: list[int]) -> tuple[list[mcts.StepPair], dict[str, float]]:
        problems = []
        for seed in seeds:
            p = self.env.problem(seed)
            problems.append(mcts.Problem(self.tokenizer.encode(p.prompt, add_special_tokens=False),
                                         self.env.splitter.split(p.solution),
                                         lambda text, p=p: self.env.verify(p, text) == 1.0))
        was_training = self.policy.training
        self.policy.eval()
        trees, stats = self.search.search(problems)
        self.policy.train(was_training)
        kept = [t for t in trees if t.correct or not bool(self.cfg.algo.filter)]
        pairs = [pair for t in kept for pair in mcts.tree_pairs(t, int(self.cfg.algo.max_pairs_per_tree))]
        self.dump(trees)
        stats.update({"mcts/acceptance_rate": len(kept) / len(trees), "mcts/pairs_per_tree": len(pairs) / len(trees),
                      "mcts/trees_without_pairs": float(sum(not mcts.tree_pairs(t) for t in kept)),
                      "data/tokens_per_problem": stats["mcts/tokens_per_problem"]})
        return pairs, stats

    def instance_pairs(self, seeds: list[int]) -> tuple[list[mcts.StepPair], dict[str, float]]:
        searcher = self.sft if self.cfg.algo.search_policy == "reference" else self.policy
        lists = sample_scored(self.cfg, searcher, self.tokenizer, seeds)
        pairs = [mcts.StepPair(p.prompt_ids, p.chosen, p.rejected, 1, 1) for p in prefs.best_vs_worst(lists)]
        tokens = sum(len(r) for lst in lists for r in lst.responses) / len(lists)
        accuracy = sum(s for lst in lists for s in lst.scores) / sum(len(lst.scores) for lst in lists)
        return pairs, {"data/tokens_per_problem": tokens, "data/sample_accuracy": accuracy}

    def dump(self, trees: list[mcts.Tree]) -> None:
        n = int(self.cfg.algo.dump_trees)
        if n > 0:
            out = self.run_dir / "trees" / f"iteration_{self.steps_done + 1:03d}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps([{"prompt": self.tokenizer.decode(t.problem.prompt_ids), "correct": t.correct,
                                        "selected": self.tokenizer.decode(t.path[-1].prefix()),
                                        "tree": t.root.to_json(self.tokenizer)} for t in trees[:n]], indent=1))

    # --- one iteration ----------------------------------------------------------------------------
    def step(self) -> dict[str, float]:
        a, pad = self.cfg.algo, self.tokenizer.pad_token_id
        seeds = self.seeds(self.steps_done)
        pairs, metrics = (self.step_pairs if a.pair_level == "step" else self.instance_pairs)(seeds)
        step_pairs = [prefs.Pair(p.prompt_ids, p.chosen, p.rejected) for p in pairs]
        smoothing = mcts.visit_label_smoothing(torch.tensor([p.visits_chosen for p in pairs], dtype=torch.float),
                                               torch.tensor([p.visits_rejected for p in pairs], dtype=torch.float))
        if a.pair_level == "instance" or not bool(a.conservative):
            smoothing = torch.zeros(len(pairs))
        losses, margins = [], []
        if pairs:
            ref_w, ref_l = reference_logps(self.ref, step_pairs, pad)
            order = torch.randperm(len(pairs)).tolist()
            self.policy.train()
            for begin in range(0, len(order), int(a.batch_size)):
                idx = order[begin:begin + int(a.batch_size)]
                terms = pair_batch_terms(self.policy, self.ref, [step_pairs[i] for i in idx], ref_w[idx], ref_l[idx],
                                         pad, "dpo")
                loss = dpo_loss(terms.h, float(a.beta), smoothing[idx]).mean()
                optimizer_step(self.optimizer, loss, float(a.max_grad_norm))
                losses.append(float(loss.detach()))
                margins.append(float(terms.h.detach().mean()))
        if a.ref_update == "per_iteration":  # the next iteration is referenced to this iteration's policy
            self.ref.load_state_dict(self.policy.state_dict())
        metrics.update({"dpo/loss": sum(losses) / len(losses) if losses else float("nan"),
                        "dpo/log_ratio_margin": sum(margins) / len(margins) if margins else float("nan"),
                        "dpo/pairs": float(len(pairs)), "dpo/label_smoothing": float(smoothing.mean()) if pairs else 0.0})
        return {k: v for k, v in metrics.items() if v == v}  # no NaN when an iteration had no pairs

    def evaluate(self) -> dict[str, float]:
        return evaluate_policy(self.cfg, self.policy, self.sft, self.tokenizer, records=self.eval_samples)

    # --- checkpoints ------------------------------------------------------------------------------
    @property
    def checkpoint_every(self) -> int:
        return 1

    def modules(self):
        return {"policy": self.policy, "ref": self.ref} if self.cfg.algo.ref_update == "per_iteration" else {
            "policy": self.policy}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "policy_dir": str(self.policy_dir)}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])

    def write_extra(self, checkpoint_dir: Path) -> None:
        save_lm(self.policy, self.tokenizer, checkpoint_dir / "hf")

    def describe(self) -> str:
        a = self.cfg.algo
        return (f"mcts_dpo pairs={a.pair_level} search_policy={a.search_policy} self_eval={a.self_eval} "
                f"ref={a.ref_update}: {a.iterations} iterations x {a.problems} problems")
