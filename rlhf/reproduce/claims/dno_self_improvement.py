"""Claim `dno_self_improvement` (Rosset et al. 2024, "Direct Nash Optimization";
docs/dpo_dno.md): iterating DNO-Prct improves the policy against its
starting point at every iteration, with a transitive and with an intransitive preference
oracle; and on the intransitive oracle, DNO beats PPO trained on a Bradley-Terry reward
model fitted to the same oracle's labels.

Runs (all from the same SFT warm start of the tiny text model):
  * dno-gold, dno-intransitive: algo=dno with each oracle (envs/preference.py), T iterations on
    non-overlapping prompt partitions; each iterate's exact expected win rate against pi_1 on
    held-out prompts is logged (dno/win_rate_vs_initial, x = iterate index, 1 = pi_1);
  * ppo-bt: PPO on `reward=rm reward.labels=intransitive`, a BT reward model trained on pairs
    of SFT samples labelled by Bernoulli draws from the intransitive oracle;
  * head-to-head: rlhf.evaluate of the final DNO (intransitive) policy with algo.opponent =
    the PPO run: P(DNO sample > PPO sample) under the oracle, on held-out prompts, plus the
    PPO policy's own win rate against pi_1.

Criterion (fixed before the first full run): (1) for both oracles the win rate against pi_1
rises strictly at every iteration (iterates 2..T+1) and ends >= 0.55; (2) on the
intransitive oracle the head-to-head win rate of DNO against PPO-on-BT is > 0.5.
"""
from __future__ import annotations

from rlhf.reproduce import Claim, RunResult, RunSpec, Verdict, register
from rlhf.reproduce.plots import metric_vs_step

ORACLES = ("gold", "intransitive")


def sweep(quick: bool) -> list[RunSpec]:
    if quick:
        small = ["model.sft.demonstrations=2000", "model.sft.epochs=1", "rollout.max_new_tokens=24"]
        dno = [*small, "algo.iterations=2", "algo.prompts_per_iteration=16", "algo.eval_prompts=16", "algo.eval_samples=2"]
        ppo = [*small, "train.steps=3", "train.prompts_per_step=8", "eval.prompts=8", "env.preference_pairs=200"]
    else:
        dno = ["algo.iterations=4", "algo.prompts_per_iteration=96"]
        ppo = ["train.steps=60", "eval.prompts=64", "threads=1"]  # 1 thread: 2 spin-wait on a shared CPU (46 s/phase)
    specs = [RunSpec(f"dno-{oracle}", "dno", ["algo=dno", f"algo.oracle={oracle}", *dno], {"oracle": oracle})
             for oracle in ORACLES]
    specs.append(RunSpec("ppo-bt", "ppo", ["algo=ppo", "reward=rm", "reward.labels=intransitive", *ppo],
                         {"oracle": "intransitive"}))
    specs.append(RunSpec("head-to-head", "h2h", ["algo.opponent={runs}/ppo-bt"], {"oracle": "intransitive"},
                         evaluate="dno-intransitive"))
    return specs


def analyze(results: list[RunResult], out) -> tuple[Verdict, str]:
    dno = {r.spec.params["oracle"]: r for r in results if r.spec.arm == "dno"}
    h2h = next(r for r in results if r.spec.arm == "h2h").scalars
    curves = {oracle: r.scalars["dno/win_rate_vs_initial"] for oracle, r in dno.items()}
    rows = ["| oracle | " + " | ".join(f"iterate {step}" for step, _ in curves["gold"]) + " |",
            "|---|" + "---|" * len(curves["gold"])]
    for oracle, curve in curves.items():
        rows.append(f"| {oracle} | " + " | ".join(f"{v:.3f}" for _, v in curve) + " |")
    detail = ["| oracle | iterate | win rate vs pi_1 | vs teacher | new pairs | pair yield | student > teacher | words | gold |",
              "|---|---|---|---|---|---|---|---|---|"]
    for oracle, r in dno.items():
        s = r.scalars
        for i, (step, value) in enumerate(s["dno/win_rate_vs_initial"]):
            pick = lambda tag: dict(s.get(tag, [])).get(step, float("nan"))  # noqa: E731
            detail.append(f"| {oracle} | {step} | {value:.3f} | {pick('dno/win_rate_vs_teacher'):.3f} | "
                          f"{pick('dno/pairs'):.0f} | {pick('dno/pair_yield'):.2f} | {pick('dno/student_beats_teacher'):.2f} | "
                          f"{pick('dno/words'):.1f} | {pick('dno/gold'):.3f} |")
    metric_vs_step({oracle: [curve] for oracle, curve in curves.items()}, "win rate vs pi_1 (held-out, exact)",
                   out / "win_rate_vs_iteration.png", "DNO: each iterate against the initial policy")
    rising = {o: all(b[1] > a[1] for a, b in zip(c[1:], c[2:])) and c[1][1] > c[0][1] and c[-1][1] >= 0.55
              for o, c in curves.items()}
    head = h2h["eval/dno/win_rate_vs_opponent"][-1][1]
    ppo_vs_init = h2h["eval/opponent/win_rate_vs_initial"][-1][1]
    dno_vs_init = h2h["eval/dno/win_rate_vs_initial"][-1][1]
    body = ["## Win rate of each DNO iterate against the initial policy (held-out prompts, exact under the oracle)", "",
            *rows, "", "![win rate](win_rate_vs_iteration.png)", "", "## Per iteration", "", *detail, "",
            "## Intransitive oracle: DNO against PPO on a Bradley-Terry reward model of the same oracle", "",
            "| policy | win rate vs pi_1 | words | class brief / standard / long |", "|---|---|---|---|"]
    for who, prefix in (("DNO (final)", "dno"), ("PPO on BT RM", "opponent")):
        g = lambda tag: h2h[f"eval/{prefix}/{tag}"][-1][1]  # noqa: E731
        body.append(f"| {who} | {g('win_rate_vs_initial'):.3f} | {g('words'):.1f} | "
                    f"{g('class_brief'):.2f} / {g('class_standard'):.2f} / {g('class_long'):.2f} |")
    body += ["", f"Head-to-head: P(DNO sample > PPO sample) = **{head:.3f}**.", ""]
    measured = "; ".join(f"{o}: " + " -> ".join(f"{v:.3f}" for _, v in c) for o, c in curves.items())
    verdict = Verdict(
        reproduced=all(rising.values()) and head > 0.5,
        criterion="for both oracles the win rate against pi_1 rises strictly at every iteration and ends >= 0.55; "
                  "on the intransitive oracle DNO wins > 0.5 head-to-head against PPO on a BT reward model of the same oracle",
        measured=f"{measured}; head-to-head DNO vs PPO-BT {head:.3f} (vs pi_1: DNO {dno_vs_init:.3f}, PPO {ppo_vs_init:.3f})")
    return verdict, "\n".join(body)


register(Claim(
    name="dno_self_improvement",
    paper="Rosset, Cheng, Mitra, Santacroce, Awadallah, Xie 2024, Direct Nash Optimization: Teaching Language Models "
          "to Self-Improve with General Preferences (arXiv 2404.03715)",
    statement="DNO-Prct's iterates win more and more often against the initial policy, under a transitive and under "
              "an intransitive preference oracle; with intransitive preferences, DNO beats RLHF (PPO) on a "
              "Bradley-Terry reward model fitted to the same preferences.",
    runs=sweep, analyze=analyze,
    budget="2 DNO runs x 4 iterations, 1 RM + 60 PPO phases, 1 head-to-head evaluation",
))
