"""Claim `constrained_rlhf` (Moskovitz et al., ICLR 2024, "Confronting Reward Model
Overoptimization with Constrained RLHF").

Task: env=text with the composite reward (envs/composite.py): components praise and detail,
each a useful proxy of the hidden evaluation score only up to a point.

Runs (seed 0 unless stated; every run the same number of phases):
  1. proxy-point identification: PPO with fixed weights on each component alone and on
     three weightings of their sum; `python -m rlhf.proxy_points` on all five writes
     proxy_points.json (joint quadratic fit of the evaluation score over the components);
  2. the fixed-weight PPO baseline = the best of three scales of the sum, (1, 1), (0.3, 0.3)
     and (0.1, 0.1), by final evaluation score (after advantage whitening only the reward's
     size relative to the KL penalty matters);
  3. mu-PPO, xi-PPO and All-PPO with the thresholds read from proxy_points.json, and NM-PPO
     (xi-PPO searching its thresholds by Nelder-Mead within its one run).

Final values are means over the last `TAIL` phases of the training samples' logs
(composite/*), the same decoding the proxy points were measured under.
Criteria:
  a. the tuned fixed-weight PPO runs past a proxy point: some component ends > theta + 0.03,
     and its evaluation score ends below its own peak (smoothed);
  b. xi-PPO and mu-PPO end with a higher evaluation score than the tuned PPO;
  c. xi-PPO's components end within 0.05 of their proxy points.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rlhf.reproduce import Claim, RunResult, RunSpec, Verdict, register
from rlhf.reproduce.plots import metric_vs_step

TAIL = 15  # phases averaged for "final" values
SMOOTH = 9  # moving-average window of the plotted curves and of the peak
# the baseline is tuned over the reward scale: after advantage whitening only the weights' size relative to the
# KL penalty matters (measured: at (1, 1) PPO passes both proxy points within 10 phases)
FIXED_WEIGHTS = {"sum": (1.0, 1.0), "sum-x0.3": (0.3, 0.3), "sum-x0.1": (0.1, 0.1)}
CONSTRAINED = {"mu-PPO": ["algo.form=mu"], "xi-PPO": ["algo.form=xi"], "All-PPO": ["algo.form=all"]}
COMPONENTS = ("praise", "detail")


def write_proxy_points(runs_dir: Path) -> None:
    from rlhf.proxy_points import write

    sources = [runs_dir / "ppo-praise-only", runs_dir / "ppo-detail-only",
               *[runs_dir / f"ppo-{name}" for name in FIXED_WEIGHTS]]
    write(sources, runs_dir / "proxy_points.json")


def sweep(quick: bool) -> list[RunSpec]:
    if quick:
        common = ["train.steps=4", "train.prompts_per_step=8", "model.sft.demonstrations=2000", "model.sft.epochs=1",
                  "eval.prompts=8", "rollout.max_new_tokens=24", "train.checkpoint_every=0"]
        nm = ["algo.nm_phases=1"]
    else:
        common = ["train.steps=70", "train.checkpoint_every=0", "eval.prompts=64"]
        nm = ["algo.nm_phases=6", "algo.nm_max_evals=9"]  # 54 phases of search, then the best thresholds
    ppo = ["algo=ppo", "reward=composite", *common]
    specs = [RunSpec("ppo-praise-only", "identify", [*ppo, "reward.weights=[1.0,0.0]"], {"weights": (1.0, 0.0)}),
             RunSpec("ppo-detail-only", "identify", [*ppo, "reward.weights=[0.0,1.0]"], {"weights": (0.0, 1.0)})]
    for name, (w1, w2) in FIXED_WEIGHTS.items():
        specs.append(RunSpec(f"ppo-{name}", "fixed", [*ppo, f"reward.weights=[{w1},{w2}]"], {"weights": (w1, w2)}))
    constrained = ["algo=constrained_ppo", "reward=composite", *common]
    for arm, extra in CONSTRAINED.items():
        specs.append(RunSpec(arm, arm, [*constrained, *extra, "algo.thresholds={runs}/proxy_points.json"],
                             prepare=write_proxy_points))
    specs.append(RunSpec("NM-PPO", "NM-PPO", [*constrained, "algo.form=xi", "algo.threshold_search=nelder_mead", *nm]))
    return specs


def series(result: RunResult, tag: str) -> list[tuple[int, float]]:
    return result.scalars[tag]


def tail_mean(result: RunResult, tag: str) -> float:
    return float(np.mean([v for _, v in series(result, tag)[-TAIL:]]))


def smoothed(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    if len(points) < SMOOTH:
        return points
    xs, ys = zip(*points)
    kernel = np.ones(SMOOTH) / SMOOTH
    return list(zip(xs[SMOOTH - 1:], np.convolve(ys, kernel, mode="valid").tolist()))


def analyze(results: list[RunResult], out: Path) -> tuple[Verdict, str]:
    by_name = {r.spec.name: r for r in results}
    proxy = json.loads((results[0].run_dir.parent / "proxy_points.json").read_text())
    theta = proxy["thresholds"]
    fixed = [r for r in results if r.spec.arm == "fixed"]
    baseline = max(fixed, key=lambda r: tail_mean(r, "composite/eval"))
    arms = {f"PPO {baseline.spec.params['weights']} (tuned)": baseline,
            **{name: by_name[name] for name in (*CONSTRAINED, "NM-PPO")}}
    final = {label: {key: tail_mean(r, f"composite/{key}") for key in (*COMPONENTS, "eval", "quality")}
             for label, r in arms.items()}
    for label, r in arms.items():
        final[label]["kl"] = tail_mean(r, "objective/kl")
        final[label]["held_out_eval"] = r.scalars["eval/composite/eval"][-1][1]

    base_label = next(iter(arms))
    base = final[base_label]
    peak = max(v for _, v in smoothed(series(baseline, "composite/eval")))
    overshoot = max(base[c] - theta[c] for c in COMPONENTS)
    overoptimized = overshoot > 0.03 and base["eval"] < peak
    beats = {arm: final[arm]["eval"] > base["eval"] for arm in ("xi-PPO", "mu-PPO")}
    xi_gap = max(abs(final["xi-PPO"][c] - theta[c]) for c in COMPONENTS)
    reproduced = overoptimized and all(beats.values()) and xi_gap < 0.05

    # plots: evaluation score and each component vs step (smoothed), multipliers vs step
    metric_vs_step({label: [smoothed(series(r, "composite/eval"))] for label, r in arms.items()},
                   "evaluation score (training samples, smoothed)", out / "eval_vs_step.png",
                   "Evaluation score during training")
    for c in COMPONENTS:
        curves = {label: [smoothed(series(r, f"composite/{c}"))] for label, r in arms.items()}
        steps = [s for s, _ in series(baseline, f"composite/{c}")]
        curves[f"proxy point {theta[c]:.3f}"] = [[(steps[0], theta[c]), (steps[-1], theta[c])]]
        metric_vs_step(curves, f"{c} (training samples, smoothed)", out / f"{c}_vs_step.png", f"{c} vs its proxy point")
    metric_vs_step({f"{label}: {c}": [series(r, f"lagrange/lambda_{c}")] for label, r in arms.items()
                    if label in (*CONSTRAINED, "NM-PPO") for c in COMPONENTS},
                   "multiplier (squashed)", out / "multipliers_vs_step.png", "Lagrange multipliers")

    fixed_rows = ["| run | weights | final eval | peak eval (smoothed) | praise | detail |", "|---|---|---|---|---|---|"]
    for r in [by_name["ppo-praise-only"], by_name["ppo-detail-only"], *fixed]:
        fixed_rows.append(f"| {r.spec.name} | {r.spec.params['weights']} | {tail_mean(r, 'composite/eval'):.4f} | "
                          f"{max(v for _, v in smoothed(series(r, 'composite/eval'))):.4f} | "
                          f"{tail_mean(r, 'composite/praise'):.4f} | {tail_mean(r, 'composite/detail'):.4f} |")
    arm_rows = ["| arm | final eval | held-out eval | praise | detail | quality | KL |", "|---|---|---|---|---|---|---|"]
    for label, f in final.items():
        arm_rows.append(f"| {label} | {f['eval']:.4f} | {f['held_out_eval']:.4f} | {f['praise']:.4f} | "
                        f"{f['detail']:.4f} | {f['quality']:.3f} | {f['kl']:.2f} |")
    nm = by_name["NM-PPO"]
    nm_theta = {c: tail_mean(nm, f"lagrange/threshold_{c}") for c in COMPONENTS}
    verdict = Verdict(
        reproduced=reproduced,
        criterion=("tuned fixed-weight PPO ends past a proxy point (> theta + 0.03) and below its peak evaluation; "
                   "xi-PPO and mu-PPO end with a higher evaluation score than it; xi-PPO's components end within "
                   "0.05 of their proxy points"),
        measured=(f"PPO {baseline.spec.params['weights']}: eval {base['eval']:.4f} (peak {peak:.4f}), largest "
                  f"overshoot {overshoot:+.3f}; xi-PPO eval {final['xi-PPO']['eval']:.4f}, mu-PPO "
                  f"{final['mu-PPO']['eval']:.4f}, All-PPO {final['All-PPO']['eval']:.4f}, NM-PPO "
                  f"{final['NM-PPO']['eval']:.4f}; xi-PPO largest |r - theta| {xi_gap:.3f}"))
    body = "\n".join([
        f"Proxy points (joint quadratic fit, R^2 {proxy['joint_fit']['r2']:.3f} on {proxy['joint_fit']['points']} "
        f"logged phases): " + ", ".join(f"{c} {theta[c]:.4f}" for c in COMPONENTS)
        + "; individual fits: " + ", ".join(f"{c} {proxy['individual'][c]:.4f}" for c in COMPONENTS)
        + ". NM-PPO ended on thresholds " + ", ".join(f"{c} {nm_theta[c]:.4f}" for c in COMPONENTS) + ".",
        "", f"Final = mean of the last {TAIL} phases (training samples); held-out = the final evaluation on "
        "held-out prompts.", "", "## Fixed-weight PPO runs (proxy-point identification and weight tuning)", "",
        *fixed_rows, "", "## Arms", "", *arm_rows, "",
        "![eval](eval_vs_step.png) ![praise](praise_vs_step.png) ![detail](detail_vs_step.png)", "",
        "![multipliers](multipliers_vs_step.png)"])
    return verdict, body


register(Claim(
    name="constrained_rlhf", doc="docs/constrained_rlhf.md",
    paper="Moskovitz, Singh, Strouse, Sandholm, Salakhutdinov, Dragan, McAleer 2024, Confronting Reward Model "
          "Overoptimization with Constrained RLHF (ICLR; arXiv 2310.04373)",
    statement="Fixed-weight PPO on a composite reward runs its components past their proxy points and loses "
              "evaluation score; Lagrangian PPO constrained at the proxy points (xi-PPO, mu-PPO) keeps the "
              "components near them and ends with a higher evaluation score.",
    runs=sweep, analyze=analyze,
    budget="9 runs x 70 phases: 5 fixed-weight PPO (identification + tuning), mu/xi/All-PPO, NM-PPO (~17 min on 2 "
           "cores); --quick: 4 phases each",
))
