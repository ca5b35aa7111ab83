"""Claim `cmorl_pareto` (Liu et al., ICLR 2025, C-MORL): the
constrained Pareto extension finds Pareto points that linear scalarisation cannot reach.

Instrument. deep-sea-treasure-concave-v0 (MO-Gymnasium): 2 objectives (treasure, -time),
a known front of 10 points. Discounted with gamma = 0.99 only its two extremes are
supported (reachable by maximising w.G for some w); with r = (0, -25) the full front has
HV ~ 1101 and the supported points alone ~ 805, so HV > 805 means at least one
non-supported point was found.

Arms (every one a normal run dir through rlhf.train, 5 seeds each; same env-step budget for
the first three):
  * cmorl            C-MORL, beta = 0.5 (Stage 1 on a 5-weight grid, then Stage 2)
  * cmorl_beta0.9    C-MORL, beta = 0.9 (the paper's default; 0.5 is expected to fill
                     more of DST's gap, so both are reported)
  * stage1_only      the ablation: Stage 1 alone on the whole budget
  * mpmoql           morl-baselines MPMOQLearning, linear scalarisation (tabular)
  * pql              morl-baselines Pareto Q-learning: the oracle upper bound

Two scoring rules, each applied alike to every arm it names:
  * "every policy" (the authors' rule for C-MORL): every intermediate policy is a candidate
    for the archive (morl/hypervolume). Stage 1 alone gets credit for the non-supported
    points its policies pass through on their way between the treasures.
  * "last policies": only the last policy of each weight (Stage 1, MPMOQLearning) and of each
    extension (Stage 2) enters the front (C-MORL: morl/final/hypervolume; MPMOQLearning: the
    Pareto front of all its policies, morl/hypervolume_all_policies, not the library's convex
    coverage set). This isolates what the constrained extension adds.

Criterion (stated before the third full run; three-valued, rlhf.reproduce.stats): four effects
on the final hypervolume, each mean over seeds with a 95% percentile-bootstrap interval over
the 5 seeds (paired by seed for differences), REPRODUCED when the interval lies above 0:
  1. C-MORL (beta 0.5), every policy, minus the supported-points bound (non-supported points found);
  2. C-MORL minus Stage 1 only, every policy (Stage 2's contribution under the paper's rule);
  3. C-MORL minus Stage 1 only, last policies (Stage 2's contribution where Stage 1 cannot
     collect transit points);
  4. C-MORL minus MPMOQLearning, last policies (against linear scalarisation, scored alike).
The verdict combines them (all REPRODUCED -> REPRODUCED; any interval at or below 0 -> NOT
REPRODUCED). Every number comes from the runs' TensorBoard logs (the last logged value of each
morl/* metric); the supported-points bound and the full-front HV are computed from the env's
known front with the same morl-baselines metric. Nothing is selected: the settings are those of
the earlier runs, and the last chunk's fronts are scored.

History (in the Claim's `history`): the first two full runs decided by thresholds without
intervals and scored MPMOQLearning by its convex coverage set but C-MORL by every policy.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rlhf.reproduce import Claim, RunResult, RunSpec, Verdict, register
from rlhf.reproduce.plots import metric_vs_step, pareto_front
from rlhf.reproduce.stats import REPRODUCED, combine, seed_effect

ARMS = ("cmorl", "cmorl_beta0.9", "stage1_only", "mpmoql", "pql")
LABELS = {"cmorl": "C-MORL (beta 0.5)", "cmorl_beta0.9": "C-MORL (beta 0.9)", "stage1_only": "Stage 1 only",
          "mpmoql": "MPMOQLearning (linear)", "pql": "PQL (oracle)"}
METRICS = ("hypervolume", "expected_utility", "sparsity", "cardinality", "igd")


def budgets(quick: bool) -> dict:
    if quick:  # ~1 minute on 2 cores: a smoke test of the whole pipeline, not a reproduction
        return {"seeds": (0,), "beta09_seeds": (0,), "total": 40_000, "init": 25_000, "pql": 10_000}
    return {"seeds": (0, 1, 2, 3, 4), "beta09_seeds": (0, 1, 2, 3, 4), "total": 300_000, "init": 150_000,
            "pql": 60_000}  # PQL: 30k steps left 2 of 5 seeds at HV 615; 50-60k reach the full front


def sweep(quick: bool) -> list[RunSpec]:
    b = budgets(quick)
    cmorl = ["algo=cmorl", "env=mo", f"algo.total_steps={b['total']}", f"algo.init_steps={b['init']}",
             "algo.checkpoint_every=0"]
    baseline = ["algo=morl_baselines", "env=mo"]
    specs = []
    for seed in b["seeds"]:
        specs.append(RunSpec(f"cmorl-seed{seed}", "cmorl", [*cmorl, f"seed={seed}"], {"seed": seed}))
        if seed in b["beta09_seeds"]:
            specs.append(RunSpec(f"cmorl-beta0.9-seed{seed}", "cmorl_beta0.9", [*cmorl, "algo.beta=0.9", f"seed={seed}"],
                                 {"seed": seed}))
        specs.append(RunSpec(f"stage1_only-seed{seed}", "stage1_only", [*cmorl, "algo.stages=init", f"seed={seed}"],
                             {"seed": seed}))
        specs.append(RunSpec(f"mpmoql-seed{seed}", "mpmoql",
                             [*baseline, "algo.method=MPMOQLearning", f"algo.total_steps={b['total']}",
                              "algo.chunks=10", f"seed={seed}"], {"seed": seed}))
        specs.append(RunSpec(f"pql-seed{seed}", "pql",
                             [*baseline, "algo.method=PQL", f"algo.total_steps={b['pql']}", "algo.chunks=3",
                              "algo.final_epsilon=0.1", f"seed={seed}"], {"seed": seed}))
    return specs


def final(result: RunResult, metric: str) -> float:
    """The last logged value of morl/<metric> in the run's TensorBoard events."""
    series = result.scalars.get(f"morl/{metric}", [])
    return float(series[-1][1]) if series else float("nan")


def last_policies_hv(result: RunResult) -> float:
    """HV of the front of last policies (the "last policies" rule of the docstring)."""
    return final(result, "hypervolume_all_policies" if result.spec.arm == "mpmoql" else "final/hypervolume")


def reference_hvs(results: list[RunResult]) -> tuple[float, float, list]:
    """(HV of the known front, HV of its supported points, the known front) at the runs' ref point."""
    from rlhf.pareto import front_metrics, supported_points

    info = json.loads((results[0].run_dir / "front.json").read_text())
    known, ref = np.asarray(info["known_front"]), np.asarray(info["ref_point"])
    full = front_metrics(known, ref, np.eye(len(ref)))["hypervolume"]
    supported = front_metrics(supported_points(known), ref, np.eye(len(ref)))["hypervolume"]
    return full, supported, known.tolist()


def summary(values: list[float]) -> str:
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return "-"
    return f"{np.nanmean(v):.4g} ± {np.nanstd(v):.2g} [{np.nanmin(v):.4g}, {np.nanmax(v):.4g}]"


def analyze(results: list[RunResult], out: Path) -> tuple[Verdict, str]:
    full_hv, supported_hv, known = reference_hvs(results)
    by_arm = {arm: [r for r in results if r.spec.arm == arm] for arm in ARMS}
    values = {arm: {m: [final(r, m) for r in runs] for m in METRICS} for arm, runs in by_arm.items()}
    mean_hv = {arm: float(np.mean(values[arm]["hypervolume"])) if by_arm[arm] else float("nan") for arm in ARMS}

    main_hvs = values["cmorl"]["hypervolume"]
    above = sum(hv > supported_hv + 1e-6 for hv in main_hvs)
    seeds = [r.spec.params["seed"] for r in by_arm["cmorl"]]
    per_seed = {arm: {r.spec.params["seed"]: r for r in runs} for arm, runs in by_arm.items()}
    last = {arm: [last_policies_hv(per_seed[arm][s]) for s in seeds] for arm in ("cmorl", "stage1_only", "mpmoql")}
    every = {arm: [final(per_seed[arm][s], "hypervolume") for s in seeds] for arm in ("cmorl", "stage1_only")}
    effects = [
        seed_effect(f"C-MORL HV (every policy) - supported-points bound {supported_hv:.1f}", every["cmorl"],
                    supported_hv),
        seed_effect("C-MORL - Stage 1 only, HV (every policy)", every["cmorl"], every["stage1_only"]),
        seed_effect("C-MORL - Stage 1 only, HV (last policies)", last["cmorl"], last["stage1_only"]),
        seed_effect("C-MORL - MPMOQLearning, HV (last policies)", last["cmorl"], last["mpmoql"])]
    outcome = combine([e.outcome for e in effects])

    # plots: per arm, each seed's final front against the known front; HV vs env steps (all arms)
    fronts = {arm: {r.spec.params["seed"]: json.loads((r.run_dir / "front.json").read_text())["points"] for r in runs}
              for arm, runs in by_arm.items()}
    for arm, per_seed in fronts.items():
        series = {f"seed {seed}": [tuple(p) for p in points] for seed, points in per_seed.items() if points}
        if series:
            pareto_front(series, "treasure (discounted)", "-time (discounted)", out / f"fronts_{arm}.png",
                         f"{LABELS[arm]}: final front per seed", reference=[tuple(p) for p in known])
    metric_vs_step({LABELS[arm]: [r.scalars["morl/hypervolume"] for r in runs] for arm, runs in by_arm.items() if runs},
                   "hypervolume (r = (0, -25))", out / "hypervolume_vs_steps.png", "Hypervolume during training",
                   xlabel="env steps")

    # which known-front points each arm found, in how many seeds (from the runs' front.json)
    found_rows = ["| arm | " + " | ".join(f"({p[0]:.1f}, {p[1]:.1f})" for p in known) + " |",
                  "|---|" + "---|" * len(known)]
    for arm, per_seed in fronts.items():
        if per_seed:
            counts = [sum(any(np.allclose(q, p, atol=1e-6) for q in points) for points in per_seed.values())
                      for p in known]
            found_rows.append(f"| {LABELS[arm]} | " + " | ".join(f"{c}/{len(per_seed)}" for c in counts) + " |")

    last_rows = ["| arm | HV, every policy | HV, last policies |", "|---|---|---|"]
    for arm in ARMS:
        if by_arm[arm] and arm != "pql":
            every_hv = summary(values[arm]["hypervolume"]) if arm != "mpmoql" else "- (not tracked)"
            last_rows.append(f"| {LABELS[arm]} | {every_hv} | {summary([last_policies_hv(r) for r in by_arm[arm]])} |")
    arm_rows = ["| arm | seeds | HV | EU | SP | cardinality | IGD | HV > supported bound | wall s (mean) |",
                "|---|---|---|---|---|---|---|---|---|"]
    for arm in ARMS:
        runs = by_arm[arm]
        if not runs:
            continue
        count = sum(hv > supported_hv + 1e-6 for hv in values[arm]["hypervolume"])
        arm_rows.append(f"| {LABELS[arm]} | {len(runs)} | " + " | ".join(summary(values[arm][m]) for m in METRICS)
                        + f" | {count}/{len(runs)} | {np.mean([r.seconds for r in runs]):.0f} |")
    run_rows = ["| run | arm | seed | HV | EU | SP | cardinality | IGD | env steps | wall s |",
                "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        steps = r.scalars["morl/hypervolume"][-1][0] if r.scalars.get("morl/hypervolume") else 0
        run_rows.append(f"| {r.spec.name} | {r.spec.arm} | {r.spec.params['seed']} | "
                        + " | ".join(f"{final(r, m):.4f}" for m in METRICS) + f" | {steps} | {r.seconds:.0f} |")
    verdict = Verdict(
        reproduced=outcome == REPRODUCED, outcome=outcome,
        criterion=(f"C-MORL (beta 0.5) HV above the supported-points bound {supported_hv:.1f}, and above Stage 1 "
                   "only (every policy scored, and last policies scored) and MPMOQLearning (last policies, scored "
                   f"alike); 95% bootstrap intervals over {len(seeds)} seeds, paired by seed"),
        measured="; ".join(f"{e.name} {e.estimate:+.1f} [{e.low:+.1f}, {e.high:+.1f}] {e.outcome}" for e in effects)
        + (f"; {above}/{len(main_hvs)} seeds above the bound; mean HV C-MORL beta 0.9 {mean_hv['cmorl_beta0.9']:.1f}, "
           f"PQL (oracle) {mean_hv['pql']:.1f}; known front {full_hv:.1f}"))
    body = "\n".join([
        (f"Reference: HV of the known front {full_hv:.2f}; of its supported points only {supported_hv:.2f} "
         "(r = (0, -25), gamma = 0.99). Each cell: mean ± std over seeds [min, max]; HV/EU higher is better, "
         "IGD lower is better, SP is only meaningful next to cardinality."), "",
        "## Effects in the verdict (95% intervals)", "", *[f"- {e.line()}" for e in effects], "",
        "## Hypervolume under both scoring rules (see the claim's docstring)", "", *last_rows, "",
        "## Per arm (the method's own front: C-MORL every policy, MPMOQLearning its convex coverage set, PQL its "
        "tracked Pareto set)", "", *arm_rows, "",
        "## Known-front points found (seeds; from each run's front.json; the two supported points are the ends)", "",
        *found_rows, "",
        "![hypervolume](hypervolume_vs_steps.png)", "",
        *[f"![{LABELS[arm]}](fronts_{arm}.png)" for arm in ARMS if fronts[arm]], "",
        "## Per run (last logged values)", "", *run_rows])
    return verdict, body


register(Claim(
    name="cmorl_pareto", doc="docs/cmorl.md",
    paper="Liu et al. 2025, C-MORL: Multi-Objective RL through Efficient Discovery of Pareto Front (ICLR; arXiv 2410.02236)",
    statement="On deep-sea-treasure-concave, C-MORL's constrained extension finds non-supported Pareto points "
              "(HV above the supported-points bound ~805) and beats both a Stage-1-only ablation and "
              "linear-scalarisation MPMOQLearning in mean hypervolume at the same env-step budget.",
    runs=sweep, analyze=analyze, workers=2,
    budget="25 runs: 3 PPO arms x 5 seeds x 300k env steps, MPMOQLearning 5 x 300k, PQL 5 x 60k "
           "(~18 min on 2 cores one run at a time; two at once); --quick: 5 runs (~1 min)",
    history=[
        "First and second full runs (before the statistical standard): C-MORL (beta 0.5) HV > the supported-points "
        "bound in >= 3 of 5 seeds and its mean HV > Stage 1 only's and > MPMOQLearning's, C-MORL scored by every "
        "policy, MPMOQLearning by its convex coverage set. Verdict: REPRODUCED (HV 1101.4 in 5/5 seeds vs bound "
        "804.6; Stage 1 only 1055 +- 41, MPMOQLearning 682 +- 100, PQL 942 +- 200; 25 runs, 18.2 min)."],
))
