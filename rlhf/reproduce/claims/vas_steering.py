"""Claim `vas_steering` (Han et al. 2024, Value Augmented Sampling):
a value function learned from a frozen base policy's own samples steers that policy at
decoding time. Reward rises with beta (and KL to the base with it), VAS is competitive with
best-of-n at comparable generation compute, and several value models compose at decoding
time, tracing a trade-off between their rewards as their weights are swept.

Runs: two value trainings on pi_0's samples (algo=vas): V_rm for the proxy reward model and
V_verbosity for the env's `verbosity` component (min(1, words / 30); measured in the first
full run: steering by the proxy RM shortens reviews, so length competes with it — `brevity`
did not, and that run failed criterion 3). Then evaluations of the unchanged base policy on held-out
prompts (python -m rlhf.evaluate ... decoding=vas): a beta sweep with V_rm, and a weight
sweep w in [0, 1] of beta_rm = B*w, beta_verbosity = B*(1 - w). And best-of-n selected by the
same proxy RM (algo=bon), for the compute comparison: VAS spends 1 + top_k value/policy
forward passes per token (value model = the policy's size here), best-of-N spends N.

Criteria:
 1. gold and proxy rise with beta (Spearman >= 0.9 over the sweep, top > beta=0) and so
    does KL to the base (Spearman >= 0.9);
 2. VAS's best gold over the sweep is >= best-of-n gold at N = 1 + top_k (interpolated in
    log N between powers of 2) minus 0.02;
 3. sweeping the composition weight moves the two rewards in opposite directions: proxy
    Spearman >= 0.8 with w and verbosity Spearman <= -0.8.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rlhf.reproduce import Claim, RunResult, RunSpec, Verdict, register
from rlhf.reproduce.plots import metric_vs_step, pareto_front


def spearman(x, y) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    if np.std(rx) == 0 or np.std(ry) == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


def sweep(quick: bool) -> list[RunSpec]:
    if quick:
        betas, weights, total = (0.0, 4.0), (0.0, 1.0), 4.0
        train = ["train.steps=3", "train.prompts_per_step=8", "model.sft.demonstrations=2000", "model.sft.epochs=1",
                 "env.preference_pairs=300"]
        evals, bon = ["eval.prompts=8", "eval.samples_per_prompt=1"], ["algo.prompts=8", "algo.n_max=16"]
    else:
        betas, weights, total = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0), (0.0, 0.25, 0.5, 0.75, 1.0), 4.0
        train, evals, bon = ["train.steps=40"], ["eval.prompts=64"], ["algo.prompts=64", "algo.n_max=32"]
    specs = [RunSpec("vas-rm", "train", ["algo=vas", "reward=rm", "train.checkpoint_every=0", *train]),
             RunSpec("vas-verbosity", "train", ["algo=vas", "reward=gold", "reward.component=verbosity",
                                              "train.checkpoint_every=0", *train]),
             RunSpec("bon-rm", "bon", ["algo=bon", "reward=rm", *[t for t in train if not t.startswith("train.")],
                                       *bon])]
    for beta in betas:
        specs.append(RunSpec(f"beta{beta}", "beta", ["decoding=vas", "decoding.value_models=[{runs}/vas-rm]",
                                                     f"decoding.beta={beta}", *evals],
                             {"beta": beta}, evaluate="vas-rm"))
    for w in weights:
        specs.append(RunSpec(f"mix{w}", "mix", ["decoding=vas",
                                                "decoding.value_models=[{runs}/vas-rm,{runs}/vas-verbosity]",
                                                f"decoding.betas=[{total * w},{total * (1 - w)}]",
                                                *evals],
                             {"w": w}, evaluate="vas-rm"))
    return specs


def final(result: RunResult, tag: str) -> float:
    return result.scalars[tag][-1][1]


def analyze(results: list[RunResult], out: Path) -> tuple[Verdict, str]:
    by_arm = {arm: [r for r in results if r.spec.arm == arm] for arm in ("beta", "mix", "bon")}
    betas = [r.spec.params["beta"] for r in by_arm["beta"]]
    gold = [final(r, "eval/gold") for r in by_arm["beta"]]
    proxy = [final(r, "eval/proxy") for r in by_arm["beta"]]
    kl = [final(r, "eval/kl") for r in by_arm["beta"]]
    length = [final(r, "eval/response_length") for r in by_arm["beta"]]
    rho_gold, rho_proxy, rho_kl = spearman(betas, gold), spearman(betas, proxy), spearman(betas, kl)
    steering = rho_gold >= 0.9 and rho_proxy >= 0.9 and rho_kl >= 0.9 and max(gold) > gold[0]

    bon = by_arm["bon"][0]
    ns = [s for s, _ in bon.scalars["bon/single_0/gold"]]
    bon_gold = [v for _, v in bon.scalars["bon/single_0/gold"]]
    top_k = 10
    matched_n = 1 + top_k
    bon_at_matched = float(np.interp(np.log(matched_n), np.log(ns), bon_gold))
    competitive = max(gold) >= bon_at_matched - 0.02

    weights = [r.spec.params["w"] for r in by_arm["mix"]]
    mix_proxy = [final(r, "eval/proxy") for r in by_arm["mix"]]
    mix_verbosity = [final(r, "eval/verbosity") for r in by_arm["mix"]]
    rho_mix_proxy, rho_mix_verbosity = spearman(weights, mix_proxy), spearman(weights, mix_verbosity)
    tradeoff = rho_mix_proxy >= 0.8 and rho_mix_verbosity <= -0.8

    metric_vs_step({"VAS gold": [list(zip(betas, gold))], "best-of-n gold at N = 1 + top_k": [
        [(min(betas), bon_at_matched), (max(betas), bon_at_matched)]]}, "gold (held-out)",
        out / "gold_vs_beta.png", "VAS: gold vs beta", xlabel="beta")
    metric_vs_step({"VAS": [list(zip(betas, kl))]}, "KL(pi_VAS || pi_0), nats", out / "kl_vs_beta.png",
                   "VAS: KL to the base vs beta", xlabel="beta")
    metric_vs_step({"best-of-n (proxy-selected)": [list(zip(ns, bon_gold))]}, "gold (held-out)",
                   out / "bon_gold_vs_n.png", "Best-of-n gold vs n", xlabel="n")
    pareto_front({"VAS composition (w = weight on the RM value)": list(zip(mix_verbosity, mix_proxy))},
                 "verbosity", "proxy RM score", out / "composition.png", "Composing two value models")

    rows = ["| beta | gold | proxy | KL | length |", "|---|---|---|---|---|"]
    rows += [f"| {b} | {g:.3f} | {p:.3f} | {k:.2f} | {n:.1f} |" for b, g, p, k, n in zip(betas, gold, proxy, kl, length)]
    bon_rows = ["| n | gold |", "|---|---|"] + [f"| {n} | {g:.3f} |" for n, g in zip(ns, bon_gold)]
    mix_rows = ["| w (RM weight) | beta_rm | beta_verbosity | proxy | verbosity | gold |", "|---|---|---|---|---|---|"]
    for r, w, p, b in zip(by_arm["mix"], weights, mix_proxy, mix_verbosity):
        mix_rows.append(f"| {w} | {4.0 * w:.1f} | {4.0 * (1 - w):.1f} | {p:.3f} | {b:.3f} | {final(r, 'eval/gold'):.3f} |")
    verdict = Verdict(
        reproduced=steering and competitive and tradeoff,
        criterion="gold, proxy and KL rise with beta (Spearman >= 0.9); best VAS gold >= best-of-n gold at "
                  f"N = {matched_n} - 0.02; composition weight moves proxy up (rho >= 0.8) and verbosity down (rho <= -0.8)",
        measured=f"Spearman(beta, gold) {rho_gold:.2f}, (beta, proxy) {rho_proxy:.2f}, (beta, KL) {rho_kl:.2f}; "
                 f"gold {gold[0]:.3f} at beta 0 -> best {max(gold):.3f}; best-of-n at N={matched_n} {bon_at_matched:.3f}; "
                 f"composition rho proxy {rho_mix_proxy:.2f}, verbosity {rho_mix_verbosity:.2f}")
    body = "\n".join(["## Reward vs beta (V trained on the proxy RM)", "", *rows, "",
                      "![gold vs beta](gold_vs_beta.png) ![kl vs beta](kl_vs_beta.png)", "",
                      f"## Best-of-n, selected by the same proxy RM (VAS uses 1 + top_k = {matched_n} forward passes "
                      "per token with a value model as large as the policy)", "", *bon_rows, "",
                      "![bon](bon_gold_vs_n.png)", "", "## Composition at decoding time (total beta 4)", "", *mix_rows,
                      "", "![composition](composition.png)"])
    return verdict, body


register(Claim(
    name="vas_steering",
    paper="Han, Shenfeld, Srivastava, Kim, Agrawal 2024, Value Augmented Sampling (arXiv 2405.06639)",
    statement="A value function of the frozen base policy steers it at decoding time: reward (and KL) rise with beta, "
              "VAS is competitive with best-of-n at comparable compute, and value models compose with weights "
              "chosen at decoding time.",
    runs=sweep, analyze=analyze,
    budget="2 value trainings x 40 phases, 1 best-of-n run, 11 guided evaluations (~10 min on 2 cores)",
))
