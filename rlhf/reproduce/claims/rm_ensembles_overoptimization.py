"""Claim `rm_ensembles_overoptimization` (Coste, Anwar, Kirk, Krueger, ICLR 2024, "Reward Model
Ensembles Help Mitigate Overoptimization"): optimizing the conservative objectives of a
reward-model ensemble -- worst-case (WCO: the members' minimum) and uncertainty-weighted (UWO:
their mean minus lambda times their variance) -- reaches higher gold reward than optimizing a
single proxy RM, which overoptimizes, under best-of-n and under PPO, with 25% label noise.

Instrument (Gao et al.'s gold/proxy setup on env=text). The gold scorer labels 3,000 pairs sampled
from the SFT policy, a quarter of the labels are flipped, and 5 proxy RMs (seeds 0-4, same data)
are trained on them; member i of the ensemble is the single RM of seed i. Everything samples at
temperature 1.6: at 1.0 the samples are all fluent reviews and single-RM best-of-n still rose at
n = 512, while at 1.6 the tail holds disfluent, repetitive texts the proxies misjudge.
PPO is evaluated at 1.6 too: it samples at 1.6 and divides the logits by 1.6 in every pass, so the
policy it optimizes is the tempered one, and the RM data, the best-of-n base and PPO's start are
all that one distribution. The earlier version evaluated at 1.0, i.e. a sharper policy than the
one trained. Training at 1.0 was the alternative, but there the tail is thin and the RMs (whose
data is sampled at the rollout temperature) would be a second set.

Split: env.valid_fraction=0.1 holds 58 of the 576 openings out of train as validation prompts
(one SFT warm start for every run); the 144 test prompts are unchanged. Every choice below is
made on validation prompts (env.eval_on=valid); the verdict reads test prompts only.

Runs:
  best-of-n    algo=bon, N = 1024 samples per prompt, every sample scored by all 5 members, so
               each single RM, the mean, WCO and UWO (lambda 0.5) select from the same samples:
               64 test prompts (the verdict) and 16 validation prompts (the choices; prompt seeds
               draw from the 144 test or 58 validation openings with replacement, as every
               evaluation does);
  PPO          no KL penalty, 25 phases, for seeds s in {0, 1, 2}: single RM = member s (PPO seed
               s), WCO and UWO of members 0-4 (PPO seed s); gold of 128 test prompts x 2 samples
               at temperature 1.6 every 5 phases; each single-RM run's last checkpoint is also
               evaluated on validation prompts.
The PPO horizon (50 phases before) and the dropped noise-free condition (where best-of-n did not
overoptimize up to n = 1024) cut the runs to the budget; the criterion's intervals are unchanged.

Criterion (stated before the full run; 95% paired-bootstrap intervals over the test prompts, each
prompt's outcome -- best-of-n: the expected gold of its best-of-n sample; PPO: the mean gold of
its 2 samples after the last phase -- averaged over seeds first; REPRODUCED needs the interval
above 0, NOT REPRODUCED one at or below 0):
 1. best-of-n overoptimizes a single RM: mean-single-RM gold at n* - at n = N > 0, with n* < N
    the n where the mean single-RM curve peaks on the validation prompts;
 2. best-of-n at n = N: WCO - mean single RM > 0, UWO - mean single RM > 0, WCO - best single RM
    > 0, UWO - best single RM > 0, the best being the member with the highest gold at n = N on
    the validation prompts (the mean single RM averages the 5 members per prompt);
 3. PPO after the last phase: the same four differences, the mean single RM averaging seeds 0-2
    and the best being the seed whose last checkpoint has the highest validation gold.
Overall: REPRODUCED if all nine parts are, NOT REPRODUCED if any part is, else INCONCLUSIVE. Part 1 is
the instrument: without overoptimization there is nothing to mitigate.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rlhf.reproduce import Claim, RunResult, RunSpec, Verdict, register
from rlhf.reproduce.claims.oreo_reasoning import samples
from rlhf.reproduce.plots import bars, metric_vs_step
from rlhf.reproduce.stats import bootstrap_interval, combine, paired_effect

# threads=1: two runs go at once on the 2 cores (Claim.workers), and a tiny model gains
# little from a second thread (measured: a PPO phase 1.2 s with 1 thread, 1.4 s with 2).
BASE = ["rollout.temperature=1.6", "eval.temperature=1.6", "reward=ensemble", "reward.uwo_lambda=0.5", "threads=1",
        "env.label_noise=0.25", "env.valid_fraction=0.1"]
ENSEMBLES = ("wco", "uwo")
ARMS = ("single", *ENSEMBLES)
LABELS = {"single": "single RM", "mean": "mean ensemble", "wco": "WCO", "uwo": "UWO"}


def sweep(quick: bool) -> list[RunSpec]:
    if quick:
        seeds = {"single": (0, 1), "wco": (0,), "uwo": (0,)}
        data = ["model.sft.demonstrations=2000", "model.sft.epochs=1", "env.preference_pairs=300", "reward.members=3",
                "rollout.max_new_tokens=24"]
        bon, valid_prompts = ["algo.n_max=16", "algo.prompts=4"], 4
        ppo = ["train.steps=3", "eval.every=3", "eval.prompts=8", "train.prompts_per_step=8"]
    else:
        seeds, data = dict.fromkeys(ARMS, (0, 1, 2)), ["reward.members=5"]
        bon, valid_prompts = ["algo.n_max=1024", "algo.prompts=64"], 16
        ppo = ["train.steps=25", "eval.every=5", "eval.prompts=128"]
    common = [*BASE, *data]
    specs = [RunSpec("bon-test", "bon", ["algo=bon", *common, *bon]),
             RunSpec("bon-valid", "bon", ["algo=bon", *common, *bon, f"algo.prompts={valid_prompts}",
                                          "env.eval_on=valid"])]
    for s in (0, 1, 2):
        for arm in (a for a in ARMS if s in seeds[a]):
            reward = ["reward.members=1", "reward.objective=mean", f"reward.seed={s}"] if arm == "single" \
                else [f"reward.objective={arm}"]
            specs.append(RunSpec(f"ppo-{arm}-s{s}", arm, ["algo=ppo", "algo.kl_coef=0.0", "train.checkpoint_every=0",
                                                          *common, *ppo, *reward, f"seed={s}"], {"seed": s}))
    # gold only: choosing the best single RM needs no proxy score
    specs += [RunSpec(f"valid-single-s{s}", "valid", ["env.eval_on=valid", "reward=gold"], {"seed": s},
                      evaluate=f"ppo-single-s{s}") for s in seeds["single"]]
    return specs


def bon_gold(run: RunResult) -> tuple[list[int], list[float], dict[str, np.ndarray]]:
    """n grid, KL per n and, per selection rule, the expected gold of the best-of-n sample
    [prompts, len(ns)] (bon.json, written by the run that logged the same curves to TensorBoard)."""
    data = json.loads((run.run_dir / "bon.json").read_text())
    return data["ns"], data["kl"], {rule: np.array(c["gold_per_prompt"]) for rule, c in data["curves"].items()}


def prompt_gold(run_dir: Path) -> np.ndarray:
    """Mean gold per evaluation prompt (rows grouped by prompt seed) of the last evaluation."""
    by_prompt: dict[int, list[float]] = {}
    for row in samples(run_dir):
        by_prompt.setdefault(row["seed"], []).append(row["gold"])
    return np.array([np.mean(by_prompt[s]) for s in sorted(by_prompt)])


def interval(v: np.ndarray) -> tuple[float, float, float]:
    v = v.mean(0) if v.ndim == 2 else v
    return (float(v.mean()), *bootstrap_interval(v))


def analyze(results: list[RunResult], out: Path) -> tuple[Verdict, str]:
    runs = {r.spec.name: r for r in results}
    seeds = {arm: sorted(r.spec.params["seed"] for r in results if r.spec.arm == arm) for arm in ARMS}

    # --- best-of-n: choices on the validation prompts, effects on the test prompts
    ns, kl, test = bon_gold(runs["bon-test"])
    valid = bon_gold(runs["bon-valid"])[2]
    members = sorted((r for r in test if r.startswith("single_")), key=lambda r: int(r.split("_")[1]))
    single = np.stack([test[m] for m in members])  # [members, prompts, len(ns)]
    valid_single = np.stack([valid[m] for m in members]).mean(1)  # [members, len(ns)], over validation prompts
    peak = int(np.argmax(valid_single.mean(0)[:-1]))
    best = int(np.argmax(valid_single[:, -1]))
    end = single[:, :, -1]
    effects = [paired_effect(f"best-of-n: mean single RM at n*={ns[peak]} - at n={ns[-1]} (overoptimization)",
                             single[:, :, peak], end)]
    for rule in ENSEMBLES:
        ens = test[rule][:, -1]
        effects += [paired_effect(f"best-of-n {LABELS[rule]} - mean single RM", np.broadcast_to(ens, end.shape), end),
                    paired_effect(f"best-of-n {LABELS[rule]} - best single RM (member {best})", ens, end[best])]

    # --- PPO: final gold per test prompt, [seeds, prompts] per arm, averaged over seeds per prompt
    final = {arm: np.stack([prompt_gold(runs[f"ppo-{arm}-s{s}"].run_dir) for s in seeds[arm]]) for arm in ARMS}
    valid_gold = {s: float(prompt_gold(runs[f"valid-single-s{s}"].run_dir).mean()) for s in seeds["single"]}
    best_seed = max(seeds["single"], key=valid_gold.get)
    best_run = final["single"][seeds["single"].index(best_seed)]
    for arm in ENSEMBLES:
        effects += [paired_effect(f"PPO {LABELS[arm]} - mean single RM", final[arm].mean(0), final["single"].mean(0)),
                    paired_effect(f"PPO {LABELS[arm]} - best single RM (seed {best_seed})", final[arm].mean(0),
                                  best_run)]
    outcome = combine([e.outcome for e in effects])

    # --- tables and plots
    curves = {"single RM (each member)": [list(zip(kl, g.mean(0))) for g in single],
              **{LABELS[r]: [list(zip(kl, test[r].mean(0)))] for r in ("mean", *ENSEMBLES)}}
    metric_vs_step(curves, "gold score (test prompts)", out / "bon_gold.png",
                   "Best-of-n, 25% label noise", xlabel="KL (nats) = log n - (n-1)/n")
    bars({"single RM (mean)": interval(end), f"single RM {best} (best)": interval(end[best]),
          **{LABELS[r]: interval(test[r][:, -1]) for r in ("mean", *ENSEMBLES)}},
         f"gold at n={ns[-1]}", out / "bon_final.png", "Best-of-n gold at n = N (95% intervals over prompts)")
    bon_rows = ["| selection | gold at n=1 | peak gold (n) | gold at n=N | peak-to-end drop | validation gold at n=N |",
                "|---|---|---|---|---|---|"]
    for name, g, v in [(f"single RM {i}", single[i].mean(0), valid_single[i]) for i in range(len(members))] + \
                      [("single RM (mean of members)", single.mean((0, 1)), valid_single.mean(0))] + \
                      [(LABELS[r], test[r].mean(0), valid[r].mean(0)) for r in ("mean", *ENSEMBLES)]:
        bon_rows.append(f"| {name} | {g[0]:.3f} | {g.max():.3f} ({ns[int(g.argmax())]}) | {g[-1]:.3f} | "
                        f"{g.max() - g[-1]:.3f} | {v[-1]:.3f} |")

    ppo_curves, ppo_rows = {}, ["| arm | seed | gold at step 0 | peak gold | final gold | final KL | final proxy | "
                                "validation gold |", "|---|---|---|---|---|---|---|---|"]
    for arm in ARMS:
        for s in seeds[arm]:
            scalars = runs[f"ppo-{arm}-s{s}"].scalars
            gold = scalars["eval/gold"]
            ppo_curves.setdefault(LABELS[arm], []).append(gold)
            g = [v for _, v in gold]
            ppo_rows.append(f"| {LABELS[arm]} | {s} | {g[0]:.3f} | {max(g):.3f} | {g[-1]:.3f} | "
                            f"{scalars['eval/kl'][-1][1]:.1f} | {scalars['eval/proxy'][-1][1]:.3f} | "
                            + (f"{valid_gold[s]:.3f} |" if arm == "single" else "|"))
    metric_vs_step(ppo_curves, "gold score (test prompts, temperature 1.6)", out / "ppo_gold.png",
                   "PPO without KL penalty, 25% label noise", xlabel="phase")
    bars({"single RM (mean)": interval(final["single"]), f"single RM {best_seed} (best)": interval(best_run),
          **{LABELS[a]: interval(final[a]) for a in ENSEMBLES}},
         "final gold", out / "ppo_final.png", "PPO final gold (95% intervals over prompts)")

    verdict = Verdict(
        reproduced=outcome == "REPRODUCED", outcome=outcome,
        criterion=f"best-of-n overoptimizes a single RM (gold at n* - at n={ns[-1]} > 0), and WCO and UWO beat the "
                  f"mean and the best single RM (chosen on validation prompts) at n={ns[-1]} and after PPO without "
                  f"KL penalty — each a 95% interval (paired bootstrap over {end.shape[1]} / {final['single'].shape[1]} "
                  f"test prompts; {len(members)} RM members; PPO seeds averaged per prompt: "
                  + ", ".join(f"{LABELS[a]} {len(seeds[a])}" for a in ARMS) + "), 25% label noise",
        measured="; ".join(f"{e.name} {e.estimate:+.3f} [{e.low:+.3f}, {e.high:+.3f}]" for e in effects))
    body = "\n".join([
        f"## Best-of-n, 25% label noise (N = {ns[-1]})", "",
        f"Gold of the best-of-n sample on {end.shape[1]} test prompts; the last column is the "
        f"{len(valid['wco'])}-prompt validation pool the choices read (n* = {ns[peak]}, best member {best}).", "",
        *bon_rows, "",
        "![gold](bon_gold.png) ![final](bon_final.png)", "",
        "## PPO without KL penalty, 25% label noise", "",
        f"Gold on {final['single'].shape[1]} test prompts at temperature 1.6 (KL: k1 at 1.6); validation gold of each "
        f"single-RM run's last checkpoint chooses the best seed ({best_seed}).", "", *ppo_rows, "",
        "![gold](ppo_gold.png) ![final](ppo_final.png)", "",
        "## Effects (95% intervals)", "", *[f"- {e.line()}" for e in effects]])
    return verdict, body


OLD_CRITERION = (
    "Criterion of 2026-11-23 (best-of-n N=1024 x 64 prompts with and without 25% label noise, 5 RM seeds; PPO "
    "without KL, one seed per objective, 50 phases, trained at temperature 1.6 but evaluated at 1.0; no validation "
    "prompts): \"Criteria (on best-of-n, after Coste et al. 2024; the single-RM curve is the mean over the 5 seeds): "
    "1. single-RM gold at the largest n is >= 10% below its own peak, at least with 25% noise; 2. in that condition, "
    "WCO and UWO gold at the largest n is >= every single seed's, and their own peak-to-end drop is under half the "
    "single-RM drop; 3. the mean ensemble ends between the single RM and the better of WCO/UWO. PPO curves are "
    "reported alongside (gold and proxy vs KL, peak-to-end drops).\" Verdict: REPRODUCED, narrowly: best-of-n at "
    "n = 1024 with 25% noise, the mean single-RM gold falls 11.2% from its peak (0.642 -> 0.570); WCO ends at 0.732 "
    "and UWO at 0.693, against a best seed of 0.692, and they drop 0.010 and 0.021; UWO vs that seed is a tie "
    "(+0.001 +- 0.028, paired over 64 prompts). PPO without KL, noise 0.25, final gold: single 0.371, mean 0.612, "
    "UWO 0.620, WCO 0.787.")

register(Claim(
    name="rm_ensembles_overoptimization", doc="docs/ensembles.md",
    paper="Coste, Anwar, Kirk, Krueger 2024, Reward Model Ensembles Help Mitigate Overoptimization (arXiv 2310.02743)",
    statement="Conservative ensembles (WCO, UWO) of proxy reward models reach higher gold reward than the mean and "
              "the best single proxy RM, which overoptimizes, under best-of-n and under PPO without KL penalty, "
              "with 25% label noise.",
    runs=sweep, analyze=analyze, workers=2, history=[OLD_CRITERION],
    budget="SFT + 3,000 preference pairs + 5 RMs (cached), best-of-n N=1024 on 64 test and 16 validation prompts "
           "(81,920 samples), 9 PPO runs x 25 phases, 3 validation evaluations; two at once, ~13 min on 2 cores "
           "from an empty cache (estimated)",
))
