"""Claim `games_cooperation` (Akata et al., "Playing repeated games with Large Language Models";
docs/games.md): a tiny LM trained with PPO against Tit For Tat in the finitely repeated
Prisoner's Dilemma learns to sustain mutual cooperation, while against Defector it learns to
defect.

Runs: one PPO run per opponent (env=games, game pd, 5 rounds, the per-round payoff as reward),
both from the same SFT warm start (random valid answers, so the initial policy cooperates about
half the time). Each run is evaluated on held-out games against its opponent at step 0 (the
warm start) and every few phases. Then the behavioural evaluation (python -m rlhf.evaluate) of
each trained policy, next to its warm start: every eval game x axelrod opponent, LLM-vs-LLM
play and a round-robin tournament.

Criterion (held-out games against the training opponent, warm start -> end of training): for
each opponent the trained policy closes at least half of the warm start's gap to the best reply,
in both the cooperation rate and the payoff per round. The best reply is found by brute force
over all 2^rounds move sequences against the (deterministic) strategy through the env itself:
against Tit For Tat over 5 known rounds it is C,C,C,C,D (cooperation 0.8, payoff 3.4 per round),
against Defector always D (0, 1.0).

History: the first full run was judged with fixed thresholds (cooperation +0.25 and payoff +0.5
per round against Tit For Tat; cooperation -0.25 and payoff +0.25 against Defector) and came out
NOT REPRODUCED on the Tit For Tat cooperation rise alone (0.57 -> 0.79): from a warm start at 0.57
even the best reply (0.8) cannot rise by 0.25. The criterion was then changed to the gap-based one
above and the same runs re-analysed (docs/games.md).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from envs.games import RepeatedGameEnv
from rlhf.reproduce import Claim, RunResult, RunSpec, Verdict, register
from rlhf.reproduce.plots import metric_vs_step

OPPONENTS = ("TitForTat", "Defector")
ROUNDS = 5
COMMON = ["algo=ppo", "env=games", "reward=gold", "env.games=[pd]", f"env.rounds={ROUNDS}", f"env.max_turns={ROUNDS}",
          "rollout.max_new_tokens=3", "eval.samples_per_prompt=1", "train.checkpoint_every=0", "threads=1"]


def sweep(quick: bool) -> list[RunSpec]:
    if quick:
        train = ["train.steps=6", "eval.every=3", "train.prompts_per_step=8", "eval.prompts=16",
                 "model.sft.demonstrations=4000", "model.sft.epochs=1", "model.tokenizer.corpus_size=4000"]
        behaviour = ["env.eval_games=[pd]", "env.eval_opponents=[TitForTat,Defector]", "env.eval_games_per_pair=4"]
    else:
        train = ["train.steps=50", "eval.every=10", "train.prompts_per_step=32", "eval.prompts=128",
                 "model.sft.demonstrations=8000", "model.sft.epochs=2", "algo.lam=1.0"]
        behaviour = ["env.eval_games_per_pair=16"]
    specs = [RunSpec(f"ppo-{opp}", "train", [*COMMON, f"env.opponents=[{opp}]", *train], {"opponent": opp})
             for opp in OPPONENTS]
    specs += [RunSpec(f"behaviour-{opp}", "behaviour", behaviour, {"opponent": opp}, evaluate=f"ppo-{opp}")
              for opp in OPPONENTS]
    return specs


def best_reply(opponent: str, game: str = "pd", rounds: int = ROUNDS) -> tuple[float, float]:
    """(cooperation rate, payoff per round) of the payoff-maximizing move sequence against a
    deterministic strategy, by brute force over all 2^rounds sequences (ties: more cooperation)."""
    best = None
    for code in range(2 ** rounds):
        moves = ["D" if code >> k & 1 else "C" for k in range(rounds)]
        env = RepeatedGameEnv(games=[game], opponents=[opponent], rounds=rounds)
        env.reset(0)
        total = sum(env.step(" " + env.record.labels[env.game.agent_option(m)])[1]["payoff"] for m in moves)
        key = (total, moves.count("C"))
        if best is None or key > best:
            best = key
    return best[1] / rounds, best[0] / rounds


def closed(start: float, end: float, target: float) -> float:
    """Share of the gap start -> target that end closed (1 when there was no gap)."""
    return 1.0 if abs(target - start) < 1e-9 else (end - start) / (target - start)


def curve(result: RunResult, tag: str, scale: float = 1.0) -> list[tuple[int, float]]:
    return [(step, value * scale) for step, value in result.scalars[tag]]


def analyze(results: list[RunResult], out: Path) -> tuple[Verdict, str]:
    runs = {r.spec.params["opponent"]: r for r in results if r.spec.arm == "train"}
    rows = ["| opponent | cooperation (warm start) | cooperation (trained) | payoff/round (warm start) | "
            "payoff/round (trained) | invalid (warm start) | invalid (trained) | best reply: cooperation / payoff |",
            "|---|---|---|---|---|---|---|---|"]
    numbers = {}
    for opp, r in runs.items():
        coop = curve(r, "eval/cooperation")
        pay = curve(r, "eval/payoff", 1.0 / ROUNDS)
        invalid = curve(r, "eval/invalid")
        numbers[opp] = (coop[0][1], coop[-1][1], pay[0][1], pay[-1][1])
        rows.append(f"| {opp} | {coop[0][1]:.3f} | {coop[-1][1]:.3f} | {pay[0][1]:.3f} | {pay[-1][1]:.3f} | "
                    f"{invalid[0][1]:.3f} | {invalid[-1][1]:.3f} |")
    shares, measured = [], []
    for opp, (c0, c1, p0, p1) in numbers.items():
        bc, bp = best_reply(opp)
        sc, sp = closed(c0, c1, bc), closed(p0, p1, bp)
        shares += [sc, sp]
        measured.append(f"{opp} cooperation {c0:.2f} -> {c1:.2f} (best reply {bc:.2f}: {sc:.0%} of the gap closed), "
                        f"payoff/round {p0:.2f} -> {p1:.2f} (best reply {bp:.2f}: {sp:.0%})")
        rows[-len(numbers) + list(numbers).index(opp)] += f" {bc:.2f} / {bp:.2f} |"
    metric_vs_step({opp: [curve(r, "eval/cooperation")] for opp, r in runs.items()}, "cooperation rate (held-out)",
                   out / "cooperation_vs_step.png", "PPO in the repeated PD: cooperation vs training opponent")
    metric_vs_step({opp: [curve(r, "eval/payoff", 1.0 / ROUNDS)] for opp, r in runs.items()}, "payoff per round (held-out)",
                   out / "payoff_vs_step.png", "PPO in the repeated PD: payoff vs training opponent")
    body = ["## Against the training opponent (held-out games, Prisoner's Dilemma, 5 rounds)", "", *rows, "",
            "![cooperation](cooperation_vs_step.png) ![payoff](payoff_vs_step.png)", ""]
    for r in results:
        if r.spec.arm != "behaviour":
            continue
        reports = sorted((r.run_dir / "games_eval").glob("step_*.md"))
        if not reports:
            continue
        body += [f"## Behavioural evaluation of the policy trained against {r.spec.params['opponent']} "
                 "(`policy`) and its warm start (`init`)", "",
                 reports[-1].read_text().split("\n", 1)[1].replace("\n## ", "\n### "), ""]
        for png in (r.run_dir / "games_eval").glob("*.png"):
            target = out / f"{r.spec.params['opponent']}_{png.name}"
            shutil.copyfile(png, target)
            body.append(f"![{target.stem}]({target.name})")
        body.append("")
    verdict = Verdict(
        reproduced=all(x >= 0.5 for x in shares),
        criterion="against Tit For Tat and against Defector, training closes >= 50% of the warm start's gap to the "
                  "best reply in both the cooperation rate and the payoff per round (held-out games)",
        measured="; ".join(measured))
    return verdict, "\n".join(body)


register(Claim(
    name="games_cooperation", doc="docs/games.md",
    paper="Akata, Schulz, Coda-Forno, Oh, Bethge, Schulz 2023, Playing repeated games with Large Language Models "
          "(arXiv 2305.16867)",
    statement="A tiny LM trained with PPO against Tit For Tat in the repeated Prisoner's Dilemma learns to sustain "
              "mutual cooperation (cooperation and payoff rise well above the warm start's), while against Defector "
              "it learns to defect.",
    runs=sweep, analyze=analyze,
    budget="1 SFT warm start, 2 PPO runs x 50 phases, 2 behavioural evaluations (~12 min on 2 cores)",
))
