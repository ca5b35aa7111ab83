"""Benchmark: C-MORL (algo=cmorl) vs morl-baselines PGMORL on mo-hopper-2obj-v5 (mo-gymnasium's
v5 name of mo-hopper-2d: forward speed and jump height) at the same small env-step budget.

    python bench/cmorl_hopper.py [--steps 100000] [--seed 0] [--out runs/bench-cmorl-hopper]

Both arms are ordinary run dirs trained through rlhf.train.run; the table is read back from
their TensorBoard logs (last morl/* values: HV at r = (-100, -100), EU on the 0.01 weight
grid, sparsity, cardinality) with their wall times. This is benchmark output, not a test:
at ~1e5 steps neither method is near the fronts of the papers (~1e6 steps and more).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

ENV = ["env=mo", "env.id=mo-hopper-2obj-v5"]


def arms(steps: int, seed: int) -> dict[str, list[str]]:
    return {
        # C-MORL with the paper's MuJoCo PPO settings where they fit the budget:
        # lr 3e-4, no entropy bonus, observation normalisation, gamma 0.995, 6 weights (delta 0.2)
        "C-MORL": ["algo=cmorl", *ENV, f"seed={seed}", f"algo.total_steps={steps}",
                   f"algo.init_steps={int(steps * 0.6)}", "algo.num_envs=8", "algo.num_steps=128",
                   "algo.epochs=10", "algo.minibatches=8", "algo.lr=3e-4", "algo.entropy_coef=0.0",
                   "algo.normalize_obs=true", "algo.gamma=0.995", "algo.weight_delta=0.2", "algo.update_iter=5",
                   "algo.num_select=2", "algo.beta=0.9", "algo.eval_episodes=1", "algo.checkpoint_every=0"],
        # PGMORL with morl-baselines' defaults except the budget-dependent iteration counts
        "PGMORL": ["algo=morl_baselines", "algo.method=PGMORL", *ENV, f"seed={seed}", f"algo.total_steps={steps}",
                   "algo.num_envs=4", "algo.steps_per_iteration=256", "algo.pop_size=6", "algo.gamma=0.995",
                   f"algo.warmup_iterations={max(1, steps // 6144 // 2)}", "algo.evolutionary_iterations=4"],
    }


def main() -> None:
    from rlhf.config import compose
    from rlhf.logger import read_scalars
    from rlhf.train import run

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100_000, help="env-step budget of each arm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-cmorl-hopper"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = []
    for name, overrides in arms(args.steps, args.seed).items():
        run_dir = args.out / name
        shutil.rmtree(run_dir, ignore_errors=True)
        start = time.time()
        run(compose(overrides), run_dir)
        wall = time.time() - start
        s = read_scalars(run_dir)
        last = {k.split("/", 1)[1]: v[-1][1] for k, v in s.items() if k.startswith("morl/")}
        steps = s["morl/hypervolume"][-1][0]
        rows.append({"arm": name, "env_steps": steps, "wall_s": round(wall, 1), **last, "run_dir": str(run_dir),
                     "command": "python -m rlhf.train " + " ".join(overrides)})
    print("\n| arm | env steps | HV (r=-100,-100) | EU | SP | cardinality | wall s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arm']} | {r['env_steps']} | {r['hypervolume']:.5g} | {r['expected_utility']:.4g} | "
              f"{r['sparsity']:.4g} | {r['cardinality']:.0f} | {r['wall_s']:.0f} |")
    (args.out / "bench.json").write_text(json.dumps(rows, indent=2))
    print(f"\nwritten {args.out / 'bench.json'}; fronts: <run dir>/front.png")


if __name__ == "__main__":
    main()
