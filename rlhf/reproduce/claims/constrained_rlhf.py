"""Claim `constrained_rlhf` (Moskovitz et al., ICLR 2024, "Confronting Reward Model
Overoptimization with Constrained RLHF").

Task: env=text with the composite reward (envs/composite.py): components praise and detail,
each a useful proxy of the hidden evaluation score only up to a point. Since the fourth full run
the task is rebuilt so that the proxy points lie away from the SFT policy (TASK): the SFT policy
imitates plain reviews (env.reviews=plain: praise 0.014, detail 0.191 on its demonstrations)
and the detail sweet spot is 0.30 (praise 0.15), so both components must climb to their points
and can pass them (descriptive praise words count for both).

Runs (seed 0 unless stated; every run the same number of phases):
  1. proxy-point identification: PPO with fixed weights on each component alone and on
     three weightings of their sum; `python -m rlhf.proxy_points` on all five writes
     proxy_points.json (joint fit of the evaluation score over the components: the quadratic's
     peak, or the kernel-smoothed surface's best logged point when the quadratic has none);
  2. the fixed-weight PPO baseline = the best of three scales of the sum, (1, 1), (0.3, 0.3)
     and (0.1, 0.1), by final evaluation score (after advantage whitening only the reward's
     size relative to the KL penalty matters);
  3. mu-PPO, xi-PPO and All-PPO with the thresholds read from proxy_points.json, and NM-PPO
     (xi-PPO searching its thresholds by Nelder-Mead within its one run).

Final values are means over the last `TAIL` phases of the training samples' logs
(composite/*), the same decoding the proxy points were measured under.
Seeds: the proxy points are identified once (seed 0: each component alone and the three
weightings of the sum), then every fixed-weight weighting, mu-PPO and xi-PPO run with seeds 0, 1
and 2; All-PPO and NM-PPO (seed 0) are reported beside the verdict. The runs go two at once; a
constrained run waits until the five identification runs have finished.

Criterion (stated before the third full run; three-valued, rlhf.reproduce.stats). Held-out
evaluation score = the hidden evaluation score of each final held-out sample (eval/samples),
averaged per prompt and then over seeds; differences are paired by prompt with a 95% bootstrap
over prompts. "Tuned PPO" is the fixed weighting with the highest final training-sample
evaluation score averaged over seeds (training prompts, never the held-out ones); "untuned PPO"
is the sum at weights (1, 1), the paper's baseline. Effects, each REPRODUCED when its interval
lies above 0:
  1. xi-PPO - tuned PPO, held-out evaluation score;
  2. mu-PPO - tuned PPO, held-out evaluation score;
  3. xi-PPO - untuned PPO, held-out evaluation score;
  4. untuned PPO passes its peak: per seed, the drop of its (smoothed) training-sample
     evaluation score from the peak to the end, as a share of the peak, minus 0.2
     (bootstrap over seeds; the paper's "peaks and then falls by more than 20%");
  5. xi-PPO ends near the proxy points: per seed, 0.05 minus the largest |final component -
     proxy point| (bootstrap over seeds).
  6. xi-PPO spends less KL than the untuned PPO: per seed, untuned PPO's final KL minus
     xi-PPO's (bootstrap over seeds).
The verdict combines them. Final training-sample values are means over the last TAIL phases.
The multipliers' first and last values are reported beside the verdict.

History (in the Claim's `history`): the first two full runs (one seed) decided by thresholds;
the third (effects 1-5, on the old task where the SFT policy already wrote mixed reviews).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rlhf.reproduce import Claim, RunResult, RunSpec, Verdict, register, wait_for
from rlhf.reproduce.plots import metric_vs_step
from rlhf.reproduce.stats import REPRODUCED, combine, paired_effect, seed_effect

TAIL = 15  # phases averaged for "final" values
SMOOTH = 9  # moving-average window of the plotted curves and of the peak
# the baseline is tuned over the reward scale: after advantage whitening only the weights' size relative to the
# KL penalty matters (measured: at (1, 1) PPO passes both proxy points within 10 phases)
FIXED_WEIGHTS = {"sum": (1.0, 1.0), "sum-x0.3": (0.3, 0.3), "sum-x0.1": (0.1, 0.1)}
CONSTRAINED = {"mu-PPO": ["algo.form=mu"], "xi-PPO": ["algo.form=xi"], "All-PPO": ["algo.form=all"]}
COMPONENTS = ("praise", "detail")
# the task (module docstring): SFT on plain reviews, sweet spots above them
TASK = ["env.reviews=plain", "reward.eval_sweet_spots=[0.15,0.3]"]


IDENTIFY = ["ppo-praise-only", "ppo-detail-only", *[f"ppo-{name}" for name in FIXED_WEIGHTS]]


def write_proxy_points(runs_dir: Path) -> None:
    """Once the five seed-0 identification runs have finished, write proxy_points.json (once:
    every constrained run's prepare calls this, two at a time)."""
    import os

    from rlhf.proxy_points import proxy_points

    out = runs_dir / "proxy_points.json"
    for name in IDENTIFY:
        wait_for(name, timeout=7200.0)(runs_dir)
    if not out.exists():
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(proxy_points([runs_dir / name for name in IDENTIFY], "joint"), indent=2))
        tmp.replace(out)


def run_name(base: str, seed: int) -> str:
    return base if seed == 0 else f"{base}-seed{seed}"


def sweep(quick: bool) -> list[RunSpec]:
    if quick:
        seeds = (0,)
        common = ["train.steps=4", "train.prompts_per_step=8", "model.sft.demonstrations=2000", "model.sft.epochs=1",
                  "eval.prompts=8", "eval.samples_per_prompt=1", "rollout.max_new_tokens=24",
                  "train.checkpoint_every=0"]
        nm = ["algo.nm_phases=1"]
    else:
        seeds = (0, 1, 2)
        common = ["train.steps=70", "train.checkpoint_every=0", "eval.prompts=64", "eval.samples_per_prompt=4"]
        nm = ["algo.nm_phases=6", "algo.nm_max_evals=9"]  # 54 phases of search, then the best thresholds
    common = [*TASK, *common]
    ppo = ["algo=ppo", "reward=composite", *common]
    specs = [RunSpec("ppo-praise-only", "identify", [*ppo, "reward.weights=[1.0,0.0]"], {"weights": (1.0, 0.0), "seed": 0}),
             RunSpec("ppo-detail-only", "identify", [*ppo, "reward.weights=[0.0,1.0]"], {"weights": (0.0, 1.0), "seed": 0})]
    for seed in seeds:  # seed 0 first: the identification runs the constrained ones wait for
        for name, (w1, w2) in FIXED_WEIGHTS.items():
            specs.append(RunSpec(run_name(f"ppo-{name}", seed), "fixed",
                                 [*ppo, f"reward.weights=[{w1},{w2}]", f"seed={seed}"],
                                 {"weights": (w1, w2), "seed": seed, "weighting": name}))
    constrained = ["algo=constrained_ppo", "reward=composite", *common, "algo.thresholds={runs}/proxy_points.json"]
    for seed in seeds:
        for arm in ("mu-PPO", "xi-PPO"):
            specs.append(RunSpec(run_name(arm, seed), arm, [*constrained, *CONSTRAINED[arm], f"seed={seed}"],
                                 {"seed": seed}, prepare=write_proxy_points))
    specs.append(RunSpec("All-PPO", "All-PPO", [*constrained, *CONSTRAINED["All-PPO"]], {"seed": 0},
                         prepare=write_proxy_points))
    specs.append(RunSpec("NM-PPO", "NM-PPO", ["algo=constrained_ppo", "reward=composite", *common, "algo.form=xi",
                                              "algo.threshold_search=nelder_mead", *nm], {"seed": 0}))
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


def held_out_eval(result: RunResult) -> dict[int, float]:
    """Prompt seed -> mean hidden evaluation score of the run's final held-out samples."""
    from omegaconf import OmegaConf

    from envs.composite import CompositeScorer

    scorer = CompositeScorer.from_config(OmegaConf.load(result.run_dir / "config.yaml").reward)
    final = sorted((result.run_dir / "eval").glob("samples_step_*.jsonl"))[-1]
    per_prompt: dict[int, list[float]] = {}
    for line in final.read_text().splitlines():
        row = json.loads(line)
        per_prompt.setdefault(int(row["seed"]), []).append(scorer.score(row["response"])["eval"])
    return {seed: float(np.mean(v)) for seed, v in sorted(per_prompt.items())}


def finals(result: RunResult) -> dict[str, float]:
    out = {key: tail_mean(result, f"composite/{key}") for key in (*COMPONENTS, "eval", "quality")}
    out["kl"] = tail_mean(result, "objective/kl")
    return out


def peak_drop(result: RunResult) -> float:
    """(peak - final) / peak of the smoothed training-sample evaluation score."""
    curve = [v for _, v in smoothed(series(result, "composite/eval"))]
    peak = max(curve)
    return (peak - curve[-1]) / peak if peak > 0 else 0.0


def analyze(results: list[RunResult], out: Path) -> tuple[Verdict, str]:
    by_name = {r.spec.name: r for r in results}
    proxy = json.loads((results[0].run_dir.parent / "proxy_points.json").read_text())
    theta = proxy["thresholds"]
    seeds = sorted({r.spec.params["seed"] for r in results if r.spec.arm == "xi-PPO"})
    fixed = {name: [by_name[run_name(f"ppo-{name}", s)] for s in seeds] for name in FIXED_WEIGHTS}
    tuned = max(fixed, key=lambda name: np.mean([tail_mean(r, "composite/eval") for r in fixed[name]]))
    runs = {f"PPO {FIXED_WEIGHTS[tuned]} (tuned)": fixed[tuned], "PPO (1.0, 1.0) (untuned)": fixed["sum"],
            **{arm: [by_name[run_name(arm, s)] for s in seeds] for arm in ("mu-PPO", "xi-PPO")},
            "All-PPO (seed 0)": [by_name["All-PPO"]], "NM-PPO (seed 0)": [by_name["NM-PPO"]]}
    tuned_label, untuned_label = list(runs)[:2]

    def held_out(label: str) -> np.ndarray:  # [seeds, prompts]
        return np.array([list(held_out_eval(r).values()) for r in runs[label]])

    xi, mu = held_out("xi-PPO"), held_out("mu-PPO")
    xi_gaps = [max(abs(finals(r)[c] - theta[c]) for c in COMPONENTS) for r in runs["xi-PPO"]]
    drops = [peak_drop(r) for r in runs[untuned_label]]
    effects = [paired_effect("xi-PPO - tuned PPO, held-out evaluation score", xi, held_out(tuned_label)),
               paired_effect("mu-PPO - tuned PPO, held-out evaluation score", mu, held_out(tuned_label)),
               paired_effect("xi-PPO - untuned PPO (1, 1), held-out evaluation score", xi, held_out(untuned_label)),
               seed_effect("untuned PPO (1, 1) drop from its peak evaluation score, share of the peak, - 0.2",
                           drops, 0.2),
               seed_effect("xi-PPO 0.05 - largest |final component - proxy point|", [0.05] * len(xi_gaps), xi_gaps),
               seed_effect("untuned PPO (1, 1) final KL - xi-PPO final KL", [finals(r)["kl"] for r in runs[untuned_label]],
                           [finals(r)["kl"] for r in runs["xi-PPO"]])]
    outcome = combine([e.outcome for e in effects])

    # plots: evaluation score and each component vs step (smoothed, seed 0), multipliers vs step
    first = {label: rs[0] for label, rs in runs.items()}
    metric_vs_step({label: [smoothed(series(r, "composite/eval")) for r in rs] for label, rs in runs.items()},
                   "evaluation score (training samples, smoothed)", out / "eval_vs_step.png",
                   "Evaluation score during training")
    for c in COMPONENTS:
        curves = {label: [smoothed(series(r, f"composite/{c}")) for r in rs] for label, rs in runs.items()}
        steps = [x for x, _ in series(first[tuned_label], f"composite/{c}")]
        curves[f"proxy point {theta[c]:.3f}"] = [[(steps[0], theta[c]), (steps[-1], theta[c])]]
        metric_vs_step(curves, f"{c} (training samples, smoothed)", out / f"{c}_vs_step.png", f"{c} vs its proxy point")
    metric_vs_step({f"{label}: {c}": [series(r, f"lagrange/lambda_{c}") for r in rs] for label, rs in runs.items()
                    if "PPO (" not in label for c in COMPONENTS},
                   "multiplier (squashed)", out / "multipliers_vs_step.png", "Lagrange multipliers")

    fixed_rows = ["| run | weights | seed | final eval | peak eval (smoothed) | praise | detail | KL |",
                  "|---|---|---|---|---|---|---|---|"]
    for r in [by_name["ppo-praise-only"], by_name["ppo-detail-only"], *[r for rs in fixed.values() for r in rs]]:
        f = finals(r)
        fixed_rows.append(f"| {r.spec.name} | {r.spec.params['weights']} | {r.spec.params['seed']} | {f['eval']:.4f} | "
                          f"{max(v for _, v in smoothed(series(r, 'composite/eval'))):.4f} | {f['praise']:.4f} | "
                          f"{f['detail']:.4f} | {f['kl']:.2f} |")
    arm_rows = ["| arm | seeds | final eval (training) | held-out eval | praise | detail | quality | KL |",
                "|---|---|---|---|---|---|---|---|"]
    for label, rs in runs.items():
        f = {k: np.mean([finals(r)[k] for r in rs]) for k in (*COMPONENTS, "eval", "quality", "kl")}
        arm_rows.append(f"| {label} | {len(rs)} | {f['eval']:.4f} | {held_out(label).mean():.4f} | {f['praise']:.4f} | "
                        f"{f['detail']:.4f} | {f['quality']:.3f} | {f['kl']:.2f} |")
    nm_theta = {c: tail_mean(by_name["NM-PPO"], f"lagrange/threshold_{c}") for c in COMPONENTS}
    moves = [f"{arm} {c} {np.mean([series(r, f'lagrange/lambda_{c}')[0][1] for r in runs[arm]]):+.3f} -> "
             f"{np.mean([series(r, f'lagrange/lambda_{c}')[-1][1] for r in runs[arm]]):+.3f}"
             for arm in ("mu-PPO", "xi-PPO") for c in COMPONENTS]
    verdict = Verdict(
        reproduced=outcome == REPRODUCED, outcome=outcome,
        criterion=("xi-PPO and mu-PPO above the tuned fixed-weight PPO and xi-PPO above the untuned one in held-out "
                   "evaluation score (paired by prompt, seeds averaged); the untuned PPO falls > 20% from its peak; "
                   f"xi-PPO ends within 0.05 of the proxy points with less KL than the untuned PPO; 95% bootstrap "
                   f"intervals, {len(seeds)} seeds"),
        measured="; ".join(f"{e.name} {e.estimate:+.3f} [{e.low:+.3f}, {e.high:+.3f}] {e.outcome}" for e in effects)
        + f"; tuned PPO = weights {FIXED_WEIGHTS[tuned]}")
    body = "\n".join([
        f"Proxy points (joint, {proxy.get('joint_method', 'quadratic')}; quadratic fit R^2 "
        f"{proxy['joint_fit']['r2']:.3f} on {proxy['joint_fit']['points']} logged phases): " + ", ".join(f"{c} {theta[c]:.4f}" for c in COMPONENTS)
        + "; individual fits: " + ", ".join(f"{c} {proxy['individual'][c]:.4f}" for c in COMPONENTS)
        + ". NM-PPO ended on thresholds " + ", ".join(f"{c} {nm_theta[c]:.4f}" for c in COMPONENTS) + ".",
        "", "Multipliers (squashed, first -> last logged value, mean over seeds): " + "; ".join(moves) + ".",
        "", "## Effects in the verdict (95% intervals)", "", *[f"- {e.line()}" for e in effects], "",
        f"Final = mean of the last {TAIL} phases (training samples); held-out = the hidden evaluation score of the "
        "final held-out samples, mean over prompts and seeds.", "",
        "## Arms (means over seeds)", "", *arm_rows, "",
        "## Fixed-weight PPO runs (proxy-point identification and weight tuning)", "", *fixed_rows, "",
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
    runs=sweep, analyze=analyze, workers=2,
    budget="19 runs x 70 phases, two at once: 2 identification runs, 3 fixed-weight PPO x 3 seeds, mu- and xi-PPO x "
           "3 seeds, All-PPO and NM-PPO; --quick: 4 phases each, one seed",
    history=[
        "First and second full runs (one seed, 9 runs x 70 phases, 13.8 min): the tuned fixed-weight PPO ends past a "
        "proxy point (> theta + 0.03) and below its peak evaluation; xi-PPO and mu-PPO end with a higher evaluation "
        "score than it (training samples, last 15 phases); xi-PPO's components end within 0.05 of their proxy "
        "points. Verdict: NOT REPRODUCED (the tuned PPO, weights (0.1, 0.1), overshot by only +0.022; xi-PPO 0.505 "
        "vs 0.497, held out 0.493 vs 0.476; xi-PPO within 0.011 of the proxy points; NM-PPO 0.184).",
        "Third full run (19 runs, 13.4 min; SFT on the mixed corpus, sweet spots (0.15, 0.22); effects 1-5, no KL "
        "effect): NOT REPRODUCED -- xi-PPO - tuned PPO (0.1, 0.1) -0.007 [-0.014, +0.000]; mu-PPO - tuned PPO -0.006 "
        "[-0.012, -0.000]; xi-PPO - untuned PPO +0.363 [+0.354, +0.373]; untuned drop from peak - 0.2 +0.501 [+0.469, "
        "+0.525]; xi-PPO 0.05 - distance to the points -0.012 [-0.012, -0.012] (proxy points praise 0.070, detail "
        "0.123, the latter below the SFT policy's own detail share). The task was then rebuilt (issue: the proxy "
        "points lay too close to SFT for the constraint to matter).",
        "Fourth full run (19 runs, 13.6 min; the rebuilt task and the six effects above, but proxy points from the "
        "joint quadratic alone): NOT REPRODUCED -- the quadratic surface was not concave (Hessian eigenvalues -3.5, "
        "+15.5), so its box argmax was a corner no run visited (praise 0.260, detail 0.172: more praise than any "
        "useful run, less detail than the SFT policy; individual fits 0.084 / 0.221); xi-PPO, held to those "
        "points, stayed at the SFT policy (praise 0.020, detail 0.180, KL 0.30): xi-PPO - tuned PPO (0.3, 0.3) "
        "-0.012 [-0.018, -0.006]; mu-PPO - tuned PPO +0.016 [+0.007, +0.025]; xi-PPO - untuned PPO +0.177 "
        "[+0.171, +0.183]; untuned drop from peak - 0.2 +0.211 [+0.208, +0.213]; xi-PPO 0.05 - distance to the "
        "points -0.190 [-0.194, -0.188]; untuned KL - xi-PPO KL +5.770 [+5.694, +5.818]. The proxy-point "
        "procedure then fell back to a kernel-smoothed surface over the logged points when the quadratic has no "
        "peak (rlhf.proxy_points; the paper fits a smooth surface with KDE smoothing); criterion unchanged."],
))
