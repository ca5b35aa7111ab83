"""Train the tiny text policy with every DPO-family loss on the same gold-labelled data and
report the held-out gold score of each (the per-loss table of docs/dpo_dno.md).

    python bench/dpo_family.py [--epochs 2] [--out bench/results/dpo_family.json] [extra overrides...]

Every run uses the cached SFT policy and the same cached preference lists (4 SFT samples
per train prompt, scored by gold); pairwise losses train on each list's best-vs-worst pair,
LiPO on the whole lists, Curry-DPO on its three stages. The SFT row is the starting point.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from rlhf.config import compose
from rlhf.train import run

VARIANTS = {
    "dpo": [], "ipo": ["algo.loss=ipo"], "simpo": ["algo.loss=simpo"],
    "fdpo-forward_kl": ["algo.loss=fdpo", "algo.f_divergence=forward_kl"],
    "fdpo-js": ["algo.loss=fdpo", "algo.f_divergence=js_divergence"],
    "fdpo-alpha0.5": ["algo.loss=fdpo", "algo.f_divergence=alpha_divergence"],
    "tdpo2": ["algo.loss=tdpo"], "asft": ["algo.loss=asft"], "rpo": ["algo.loss=rpo"],
    "lipo": ["algo.loss=lipo"], "curry-iterative": ["algo.curriculum=iterative"],
}


def sft_metrics(extra: list[str]) -> dict:
    """The held-out evaluation of the SFT policy every variant starts from."""
    from agents.models import frozen_copy, load_lm, load_tokenizer
    from rlhf.warmstart import warm_start_policy
    from envs import base as env_base
    from envs.base import env_settings
    from rlhf.evaluation import evaluate_policy

    cfg = compose(["algo=dpo", "eval.prompts=144", *extra])
    policy_dir = warm_start_policy(cfg, env_base.make("text", split="train", **env_settings(cfg.env)))
    policy = load_lm(policy_dir)
    m = evaluate_policy(cfg, policy, frozen_copy(policy), load_tokenizer(policy_dir))
    return {"gold": m["gold"], "kl": m["kl"], "length": m["response_length"], "distinct_2": m["distinct_2"], "seconds": 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default="bench/results/dpo_family.json")
    parser.add_argument("--runs", default="runs/dpo_family")
    parser.add_argument("--only", nargs="*", default=None, help="variant names to run (default: all)")
    args, extra = parser.parse_known_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = {"sft (start)": sft_metrics(extra)}
    for name, overrides in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        start = time.time()
        metrics = run(compose(["algo=dpo", f"algo.epochs={args.epochs}", "eval.prompts=144", *overrides, *extra]),
                      Path(args.runs) / name)
        results[name] = {"gold": metrics["gold"], "kl": metrics["kl"], "length": metrics["response_length"],
                         "distinct_2": metrics["distinct_2"], "seconds": time.time() - start}
        print(f"{name:18s} gold {metrics['gold']:.3f}  KL {metrics['kl']:6.2f}  len {metrics['response_length']:5.1f}  "
              f"({time.time() - start:.0f}s)", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print("\n| variant | held-out gold | KL to SFT | length | distinct-2 | seconds |\n|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['gold']:.3f} | {r['kl']:.2f} | {r['length']:.1f} | {r['distinct_2']:.3f} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
