"""Claim `rm_ensembles_overoptimization` (Coste, Anwar, Kirk, Krueger, ICLR 2024):
conservative reward-model ensembles (WCO, UWO) mitigate reward-model
overoptimization.

Instrument. Gao et al.'s setup on env=text: the gold scorer labels pairs sampled from the
base policy, proxy RMs (5 seeds, same data) are trained on them, with and without 25% label
noise. At the default sampling temperature the base policy's samples are all fluent reviews
and best-of-n up to n=512 shows no overoptimization (measured: single-RM gold still rising
at n=512). The base distribution used here samples at temperature 1.6 (RM data, best-of-n
and PPO alike): its tail then holds disfluent, repetitive texts that proxies misjudge, which
is the thin-tail condition to avoid ("if overoptimization does not appear, the
tail is too thin").

The pool size is the other half of the instrument. With N=512 samples per prompt (n up to
512) the proxies' errors were only starting to dominate: the single-RM gold (mean of 5 seeds)
peaked at n=128 and fell 6.9% by n=512 with 25% noise, short of the criterion, while single
seeds already fell by up to 29%. This claim draws N=1024 per prompt,
reading every curve out to n=1024.

Precision. At n = N the estimate is the gold of one sample per prompt, so the comparisons
of criterion 2 (an ensemble against each of 5 seeds) are noisy. The first N=1024 run used 32
prompts: single-RM drop 14.0%, WCO above every seed, UWO 0.683 against the best seed's 0.712,
a paired difference of -0.029 +- 0.042 (standard error over prompts), i.e. undecided by the
data. The prompt count was then doubled to 64 (the criterion unchanged, UWO's lambda kept at
the paper's 0.5); the report prints the paired differences with their standard errors.

Runs. best-of-n (algo=bon, N=1024 x 64 prompts) for each noise level, scoring every sample
with all 5 members, so the single-RM curves (each member alone), mean, WCO and UWO come from
the same samples. Both noise levels share one cached sample pool (the samples do not depend
on the reward models), so only the scoring is repeated. PPO without KL penalty on a single
RM (member 0), mean, WCO and UWO, for each noise level. Two runs go at once (workers=2).

Criteria (on best-of-n, after Coste et al. 2024; the single-RM curve is the mean over the 5 seeds):
 1. single-RM gold at the largest n is >= 10% below its own peak, at least with 25% noise;
 2. in that condition, WCO and UWO gold at the largest n is >= every single seed's, and their
    own peak-to-end drop is under half the single-RM drop;
 3. the mean ensemble ends between the single RM and the better of WCO/UWO.
PPO curves are reported alongside (gold and proxy vs KL, peak-to-end drops).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rlhf.reproduce import Claim, RunResult, RunSpec, Verdict, register
from rlhf.reproduce.plots import metric_vs_step

NOISES = (0.0, 0.25)
OBJECTIVES = ("single", "mean", "wco", "uwo")
# threads=1: two runs go at once on the 2 cores (Claim.workers), and a tiny model gains
# little from a second thread (measured: a PPO phase 1.2 s with 1 thread, 1.4 s with 2).
BASE = ["rollout.temperature=1.6", "reward=ensemble", "reward.uwo_lambda=0.5", "threads=1"]
EXTRA_UWO = "uwo_l1"  # UWO with lambda 1, reported beside the criterion's lambda 0.5


def sweep(quick: bool) -> list[RunSpec]:
    if quick:
        data = ["env.preference_pairs=300", "reward.members=3"]
        bon_budget, ppo_budget = ["algo.n_max=16", "algo.prompts=4"], ["train.steps=3", "eval.every=3",
                                                                        "eval.prompts=8"]
        noises, objectives = (0.25,), ("single", "wco")
    else:
        data = ["reward.members=5"]
        bon_budget, ppo_budget = ["algo.n_max=1024", "algo.prompts=64"], ["train.steps=50", "eval.every=10"]
        noises, objectives = NOISES, OBJECTIVES
    specs = []
    for noise in noises:
        common = BASE + data + [f"env.label_noise={noise}"]
        specs.append(RunSpec(f"bon-noise{noise}", "bon", ["algo=bon", "algo.extra_uwo_lambdas=[1.0]", *common,
                                                          *bon_budget], {"noise": noise}))
        for objective in objectives:
            reward = (["reward.members=1", "reward.objective=mean"] if objective == "single"
                      else [f"reward.objective={objective}"])
            specs.append(RunSpec(f"ppo-{objective}-noise{noise}", "ppo",
                                 ["algo=ppo", "algo.kl_coef=0.0", "train.checkpoint_every=0", *common, *reward,
                                  *ppo_budget],
                                 {"noise": noise, "objective": objective}))
    return specs


def bon_curves(result: RunResult) -> dict:
    """From bon.json (written by the same run that logged these values to TensorBoard)."""
    data = json.loads((result.run_dir / "bon.json").read_text())
    singles = [c for name, c in data["curves"].items() if name.startswith("single_")]
    curves = {name: data["curves"][name] for name in ("mean", "wco", "uwo", EXTRA_UWO) if name in data["curves"]}
    curves["single"] = {key: np.mean([c[key] for c in singles], axis=0).tolist()
                        for key in ("gold", "proxy", "gold_per_prompt")}
    return {"kl": data["kl"], "ns": data["ns"], "curves": curves, "singles": singles}


def paired_ends(bon: dict, rule: str) -> list[tuple[float, float]]:
    """(mean, standard error) over prompts of rule's gold minus each single seed's gold at the
    largest n: the rules pick from the same samples, so the comparison is paired by prompt."""
    end = np.array(bon["curves"][rule]["gold_per_prompt"])[:, -1]
    out = []
    for seed in bon["singles"]:
        diff = end - np.array(seed["gold_per_prompt"])[:, -1]
        out.append((float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))))
    return out


def drop(gold: list[float]) -> float:
    return max(gold) - gold[-1]


def check(bon: dict) -> dict:
    c = bon["curves"]
    single_drop, single_end = drop(c["single"]["gold"]), c["single"]["gold"][-1]
    seeds_end = [s["gold"][-1] for s in bon["singles"]]
    overoptimized = single_drop >= 0.10 * max(c["single"]["gold"])
    conservative = all(c[o]["gold"][-1] >= max(seeds_end) and drop(c[o]["gold"]) < 0.5 * single_drop
                       for o in ("wco", "uwo"))
    best_conservative = max(c["wco"]["gold"][-1], c["uwo"]["gold"][-1])
    between = single_end <= c["mean"]["gold"][-1] <= best_conservative
    return {"overoptimized": overoptimized, "conservative": conservative, "between": between,
            "single_drop_pct": 100 * single_drop / max(c["single"]["gold"]), "single_end": single_end,
            "seeds_end_max": max(seeds_end),
            "ends": {o: c[o]["gold"][-1] for o in OBJECTIVES},
            "drops": {o: drop(c[o]["gold"]) for o in OBJECTIVES}}


def analyze(results: list[RunResult], out: Path) -> tuple[Verdict, str]:
    lines, checks = [], {}
    for result in (r for r in results if r.spec.arm == "bon"):
        noise = result.spec.params["noise"]
        bon = bon_curves(result)
        checks[noise] = check(bon)
        for key, label in (("gold", "gold score"), ("proxy", "proxy score (the selecting objective)")):
            curves = {name: [list(zip(bon["kl"], c[key]))] for name, c in bon["curves"].items()}
            for i, s in enumerate(bon["singles"]):
                curves.setdefault("single seeds", []).append(list(zip(bon["kl"], s[key])))
            metric_vs_step(curves, label, out / f"bon_{key}_noise{noise}.png",
                           f"Best-of-n, label noise {noise}", xlabel="KL (nats) = log n - (n-1)/n")
        c = checks[noise]
        lines += [f"### Best-of-n, label noise {noise} (n up to {bon['ns'][-1]})", "",
                  "| selection | gold at n=1 | peak gold | gold at largest n | peak-to-end drop |",
                  "|---|---|---|---|---|"]
        for name in (*OBJECTIVES, EXTRA_UWO):
            if name not in bon["curves"]:
                continue
            label = {"single": "single (mean of seeds)", EXTRA_UWO: "uwo, lambda 1 (not in the verdict)"}.get(name, name)
            g = bon["curves"][name]["gold"]
            lines.append(f"| {label} | {g[0]:.3f} | {max(g):.3f} | {g[-1]:.3f} | {drop(g):.3f} |")
        for i, s in enumerate(bon["singles"]):
            lines.append(f"| single seed {i} | {s['gold'][0]:.3f} | {max(s['gold']):.3f} | {s['gold'][-1]:.3f} | "
                         f"{drop(s['gold']):.3f} |")
        n_prompts = len(bon["curves"]["wco"]["gold_per_prompt"])
        lines += ["", f"Gold at n={bon['ns'][-1]}, ensemble minus each single seed, paired over the {n_prompts} "
                  "prompts (mean ± standard error):", "",
                  "| selection | " + " | ".join(f"− seed {i}" for i in range(len(bon["singles"]))) + " |",
                  "|---|" + "---|" * len(bon["singles"])]
        for name in ("mean", "wco", "uwo", EXTRA_UWO):
            if name in bon["curves"]:
                lines.append(f"| {name} | " + " | ".join(f"{m:+.3f} ± {se:.3f}" for m, se in paired_ends(bon, name)) + " |")
        lines += ["", f"![gold](bon_gold_noise{noise}.png) ![proxy](bon_proxy_noise{noise}.png)", ""]

    ppo_rows = ["| noise | objective | gold at step 0 | peak gold | final gold | drop | final KL | final proxy |",
                "|---|---|---|---|---|---|---|---|"]
    for noise in sorted({r.spec.params["noise"] for r in results if r.spec.arm == "ppo"}):
        curves, proxies = {}, {}
        for r in (r for r in results if r.spec.arm == "ppo" and r.spec.params["noise"] == noise):
            kl, gold = dict(r.scalars["eval/kl"]), dict(r.scalars["eval/gold"])
            proxy = dict(r.scalars["eval/proxy"])
            steps = sorted(kl)
            curves[r.spec.params["objective"]] = [[(kl[s], gold[s]) for s in steps]]
            proxies[r.spec.params["objective"]] = [[(kl[s], proxy[s]) for s in steps]]
            g = [gold[s] for s in steps]
            ppo_rows.append(f"| {noise} | {r.spec.params['objective']} | {g[0]:.3f} | {max(g):.3f} | {g[-1]:.3f} | "
                            f"{drop(g):.3f} | {kl[steps[-1]]:.1f} | {proxy[steps[-1]]:.3f} |")
        metric_vs_step(curves, "gold score (held-out)", out / f"ppo_gold_noise{noise}.png",
                       f"PPO without KL penalty, label noise {noise}", xlabel="KL (k1, nats)")
        metric_vs_step(proxies, "proxy score (the optimized objective)", out / f"ppo_proxy_noise{noise}.png",
                       f"PPO without KL penalty, label noise {noise}", xlabel="KL (k1, nats)")
        lines.append(f"![ppo gold](ppo_gold_noise{noise}.png) ![ppo proxy](ppo_proxy_noise{noise}.png)")

    decisive = [n for n in sorted(checks, reverse=True) if checks[n]["overoptimized"]]
    noise = decisive[0] if decisive else max(checks)
    c = checks[noise]
    reproduced = bool(decisive) and c["conservative"] and c["between"]
    measured = (f"noise {noise}: single-RM gold falls {c['single_drop_pct']:.1f}% from its peak; "
                f"gold at largest n single {c['single_end']:.3f} (best seed {c['seeds_end_max']:.3f}), "
                f"mean {c['ends']['mean']:.3f}, WCO {c['ends']['wco']:.3f}, UWO {c['ends']['uwo']:.3f}; "
                f"drops single {c['drops']['single']:.3f}, WCO {c['drops']['wco']:.3f}, UWO {c['drops']['uwo']:.3f}"
                + "".join(f"; noise {n}: single falls {checks[n]['single_drop_pct']:.1f}%" for n in checks if n != noise))
    verdict = Verdict(reproduced, "under best-of-n a single RM's gold falls >= 10% from its peak (with 25% noise at "
                      "least); there WCO and UWO end >= every single seed and drop < half as much, and the mean "
                      "ensemble ends between single and WCO/UWO", measured)
    body = "\n".join(["## Best-of-n", "", *lines[:], "", "## PPO (no KL penalty)", "", *ppo_rows, ""])
    return verdict, body


register(Claim(
    name="rm_ensembles_overoptimization",
    paper="Coste, Anwar, Kirk, Krueger 2024, Reward Model Ensembles Help Mitigate Overoptimization (arXiv 2310.02743)",
    statement="Conservative ensembles (WCO, UWO) of proxy reward models keep gold reward high where a single "
              "proxy RM is overoptimized (best-of-n and PPO, with and without 25% label noise).",
    runs=sweep, analyze=analyze, workers=2,
    budget="2 best-of-n runs sharing one sample pool (N=1024 x 64 prompts) + 8 PPO runs x 50 phases, two at once, "
           "~15 min on 2 cores",
))
