"""Where one PPO and one P3O phase spend their time (docs/profile.md).

    python bench/profile_phase.py threads=1                 # PPO and P3O, plain vs fast, 5 phases each
    python bench/profile_phase.py --algos p3o --phases 3 threads=1
    python bench/profile_phase.py --torch-profiler threads=1   # also the top torch ops of one phase

Stage timers wrap the functions a phase calls (no trainer code changes): generation, scoring,
the no-grad passes (old / reference log-probs, critic values), minibatch slicing, the policy and
critic forwards inside the update, backward, gradient clipping and the optimizer. "other" is
the phase's time outside every timer (loss arithmetic, Python glue, metrics). Also the share of
the phase's [rows x width] batch grid that is padding, prompt and generated tokens.

Two variants run interleaved phase by phase in one process (the machine's speed drifts):
"fast" is this code; "plain" puts one trainer back on the paths docs/profile.md replaced (full
logits at every cell, pi_old recomputed, AdamW's per-tensor loop). Medians over phases after one
warm-up phase each.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

STAGES = ["gen", "score", "old_logprobs", "ref_logprobs", "critic_nograd", "slice", "policy_fwd", "critic_fwd",
          "backward", "clip", "optimizer", "sync", "other"]


class Clock:
    def __init__(self):
        self.spent, self.stack, self.undo = defaultdict(float), [], []

    def restore(self):
        for owner, attr, original in reversed(self.undo):
            setattr(owner, attr, original)

    @contextmanager
    def stage(self, name):
        start = time.perf_counter()
        self.stack.append((name, start))
        try:
            yield
        finally:
            self.stack.pop()
            spent = time.perf_counter() - start
            self.spent[name] += spent
            if self.stack:
                self.spent[self.stack[-1][0]] -= spent


def wrap(owner, attr, clock, name_of):
    original = getattr(owner, attr)

    def wrapped(*args, **kwargs):
        with clock.stage(name_of(*args, **kwargs)):
            return original(*args, **kwargs)
    setattr(owner, attr, wrapped)
    clock.undo.append((owner, attr, original))


def plain_paths(trainer) -> None:
    """Put the trainer back on the paths this profile replaced, to time both in one process:
    full logits at every cell, pi_old recomputed by a teacher-forced pass, AdamW's per-tensor loop."""
    from agents.models import lm_forward
    from rlhf.functional import token_entropy, token_logprobs

    algo = trainer.algo

    def full_logits(model, batch, entropy=False):
        logits = lm_forward(model, batch.input_ids, batch.attention_mask)
        logp = token_logprobs(logits, batch.input_ids, algo.temperature)
        return logp, token_entropy(logits, algo.temperature) if entropy else None
    algo.action_logprobs = full_logits
    trainer.reuse_behaviour = False
    for group in algo.optimizer.param_groups:
        group["foreach"] = False


def instrument(trainer, clock):
    """Wrap the functions a phase calls with stage timers (restored by clock.restore())."""
    from agents.models import ValueModel
    from rlhf.rollout.batch import Batch

    algo = trainer.algo
    ref = trainer.ref

    def logprob_stage(model, batch, *a, **k):
        if model is ref:
            return "ref_logprobs"
        return "policy_fwd" if torch.is_grad_enabled() else "old_logprobs"
    wrap(algo, "action_logprobs", clock, logprob_stage)
    wrap(ValueModel, "values", clock, lambda self, *a, **k: "critic_fwd" if torch.is_grad_enabled() else "critic_nograd")
    wrap(Batch, "select", clock, lambda *a, **k: "slice")
    wrap(torch.Tensor, "backward", clock, lambda *a, **k: "backward")
    wrap(torch.nn.utils, "clip_grad_norm_", clock, lambda *a, **k: "clip")
    wrap(algo.optimizer, "step", clock, lambda *a, **k: "optimizer")
    wrap(algo.optimizer, "zero_grad", clock, lambda *a, **k: "optimizer")
    wrap(trainer.rollout, "run", clock, lambda *a, **k: "gen")
    wrap(trainer, "reward", clock, lambda *a, **k: "score")
    wrap(trainer, "sync_rollout", clock, lambda *a, **k: "sync")


def padding_shares(batch) -> dict[str, float]:
    cells = batch.input_ids.numel()
    real = float(batch.attention_mask.sum())
    generated = float(batch.action_mask.sum())
    return {"rows": len(batch), "width": batch.input_ids.shape[1], "padding": 1 - real / cells,
            "prompt": (real - generated) / cells, "generated": generated / cells}


def timed_phase(trainer, clock, grids) -> dict[str, float]:
    import rlhf.trainer as trainer_module

    collate = trainer_module.collate

    def recording_collate(*a, **k):
        b = collate(*a, **k)
        grids.append(padding_shares(b))
        return b
    trainer_module.collate = recording_collate
    instrument(trainer, clock)
    clock.spent.clear()
    start = time.perf_counter()
    try:
        trainer.train_step()
    finally:
        total = time.perf_counter() - start
        clock.restore()
        trainer_module.collate = collate
    spent = dict(clock.spent)
    spent["other"] = total - sum(spent.values())
    spent["total"] = total
    return spent


def profile_algo(name: str, overrides: list[str], phases: int, torch_profiler: bool, variants: list[str]) -> dict:
    """Phases of each variant (fast: this code; plain: plain_paths) alternate in one process."""
    from rlhf.bench import make_trainer

    trainers = {}
    for variant in variants:
        trainers[variant] = make_trainer([f"algo={name}", *overrides, "reward=gold", "train.checkpoint_every=0"],
                                         Path(tempfile.mkdtemp(prefix=f"profile-{name}-")))
        if variant == "plain":
            plain_paths(trainers[variant])
        trainers[variant].train_step()  # warm-up
    rows, grids = {v: [] for v in variants}, {v: [] for v in variants}
    for _ in range(phases):
        for variant in variants:
            rows[variant].append(timed_phase(trainers[variant], Clock(), grids[variant]))
    result = {}
    for variant in variants:
        result[variant] = {"stages_s": {k: statistics.median(r.get(k, 0.0) for r in rows[variant])
                                        for k in [*STAGES, "total"]},
                           "grid": {k: statistics.median(g[k] for g in grids[variant]) for k in grids[variant][0]}}
    if torch_profiler:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            trainers[variants[-1]].train_step()
        result["torch_ops"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    for trainer in trainers.values():
        trainer.close()
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python bench/profile_phase.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--algos", default="ppo,p3o")
    parser.add_argument("--phases", type=int, default=5)
    parser.add_argument("--torch-profiler", action="store_true", help="also the top torch ops of one phase")
    parser.add_argument("--fast-only", action="store_true", help="only this code's paths (no plain variant)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (threads=1 on a shared machine)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from rlhf.config import compose
    cfg = compose(args.overrides)
    if int(cfg.threads) > 0:
        torch.set_num_threads(int(cfg.threads))
    variants = ["fast"] if args.fast_only else ["plain", "fast"]
    out = {}
    for name in args.algos.split(","):
        out[name] = r = profile_algo(name, args.overrides, args.phases, args.torch_profiler, variants)
        grid = r[variants[-1]]["grid"]
        print(f"\n{name}: median of {args.phases} phases per variant, interleaved; batch grid "
              f"{grid['rows']:.0f} x {grid['width']:.0f}: {100 * grid['padding']:.0f}% padding, "
              f"{100 * grid['prompt']:.0f}% prompt, {100 * grid['generated']:.0f}% generated")
        print("    stage            " + "".join(f"{v:>16}" for v in variants))
        for k in [*STAGES, "total"]:
            cells = [r[v]["stages_s"][k] for v in variants]
            if any(cells):
                print(f"    {k:<16} " + "".join(
                    f"{c:8.3f} s {100 * c / r[v]['stages_s']['total']:4.0f}%" for c, v in zip(cells, variants)))
        if "torch_ops" in r:
            print(r["torch_ops"])
    return out


if __name__ == "__main__":
    main()
