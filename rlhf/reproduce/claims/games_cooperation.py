"""Claim `games_cooperation` (Akata et al., "Playing repeated games with Large Language Models";
docs/games.md): a tiny LM trained with PPO against Tit For Tat in the finitely repeated
Prisoner's Dilemma learns to sustain mutual cooperation, while against Defector it learns to
defect.

Runs: three PPO runs (seeds 0, 1, 2) per opponent (env=games, game pd, 5 rounds, the per-round
payoff as reward), all from the same SFT warm start (random valid answers, so the initial policy
cooperates about half the time). Each run is evaluated on held-out games against its opponent at
step 0 (the warm start) and every few phases (eval/samples_step_N.jsonl: one row per game). Then
the behavioural evaluation (python -m rlhf.evaluate) of each seed-0 policy, next to its warm
start: every eval game x axelrod opponent, LLM-vs-LLM play and a round-robin tournament.

Criterion (stated before the third full run; held-out games against the training opponent,
warm start = step 0 of the same run -> end of training): for each opponent the trained policy
closes more than half of the warm start's gap to the best reply, in both the cooperation rate and
the payoff per round. Per held-out game i (the same game seeds at step 0 and at the end) the margin
is y_i = s (trained_i - (warm_i + best) / 2), with s the sign of best - warm, so mean(y) > 0 means
more than half of the gap closed; its 95% interval is a two-level percentile bootstrap (seeds with
replacement, then games within each drawn seed; games_reciprocity.effect). The best reply is found
by brute force over all 2^rounds move sequences against the (deterministic) strategy through the
env itself: against Tit For Tat over 5 known rounds it is C,C,C,C,D (cooperation 0.8, payoff 3.4
per round), against Defector always D (0, 1.0). Each of the four effects is REPRODUCED when its
interval lies above 0, NOT REPRODUCED when it lies at or below 0; the verdict combines them. The
settings are those of the earlier runs, nothing is selected (the last phase's policy is scored).

History (the criteria before this one, and their verdicts, in the Claim's `history`): first fixed
thresholds (NOT REPRODUCED), then "half of the gap closed" on one seed without an interval
(REPRODUCED); docs/games.md.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from envs.games import RepeatedGameEnv
from rlhf.reproduce import Claim, RunResult, RunSpec, Verdict, register
from rlhf.reproduce.claims.games_reciprocity import effect
from rlhf.reproduce.plots import metric_vs_step
from rlhf.reproduce.stats import REPRODUCED, combine

OPPONENTS = ("TitForTat", "Defector")
ROUNDS = 5
COMMON = ["algo=ppo", "env=games", "reward=gold", "env.games=[pd]", f"env.rounds={ROUNDS}", f"env.max_turns={ROUNDS}",
          "rollout.max_new_tokens=3", "eval.samples_per_prompt=1", "train.checkpoint_every=0", "threads=1"]


def sweep(quick: bool) -> list[RunSpec]:
    if quick:
        seeds = (0,)
        train = ["train.steps=6", "eval.every=3", "train.prompts_per_step=8", "eval.prompts=16",
                 "model.sft.demonstrations=4000", "model.sft.epochs=1", "model.tokenizer.corpus_size=4000"]
        behaviour = ["env.eval_games=[pd]", "env.eval_opponents=[TitForTat,Defector]", "env.eval_games_per_pair=4"]
    else:
        seeds = (0, 1, 2)
        train = ["train.steps=50", "eval.every=10", "train.prompts_per_step=32", "eval.prompts=128",
                 "model.sft.demonstrations=8000", "model.sft.epochs=2", "algo.lam=1.0"]
        behaviour = ["env.eval_games_per_pair=16"]
    specs = [RunSpec(f"ppo-{opp}-s{s}", "train", [*COMMON, f"seed={s}", f"env.opponents=[{opp}]", *train],
                     {"opponent": opp, "seed": s}) for s in seeds for opp in OPPONENTS]
    specs += [RunSpec(f"behaviour-{opp}", "behaviour", behaviour, {"opponent": opp}, evaluate=f"ppo-{opp}-s0")
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


def per_game(run: RunResult, step: int, key: str) -> np.ndarray:
    """One value per held-out game (sorted by game seed) of the evaluation at `step`; payoff per round."""
    rows = [json.loads(x) for x in (run.run_dir / "eval" / f"samples_step_{step:06d}.jsonl").read_text().splitlines()]
    return np.array([r[key] / (ROUNDS if key == "payoff" else 1) for r in sorted(rows, key=lambda r: r["seed"])])


def curve(result: RunResult, tag: str, scale: float = 1.0) -> list[tuple[int, float]]:
    return [(step, value * scale) for step, value in result.scalars[tag]]


def analyze(results: list[RunResult], out: Path) -> tuple[Verdict, str]:
    train = [r for r in results if r.spec.arm == "train"]
    seeds = sorted({r.spec.params["seed"] for r in train})
    runs = {opp: [next(r for r in train if r.spec.params == {"opponent": opp, "seed": s}) for s in seeds]
            for opp in OPPONENTS}
    rows = ["| opponent | cooperation (warm start) | cooperation (trained) | payoff/round (warm start) | "
            "payoff/round (trained) | invalid (warm start) | invalid (trained) | best reply: cooperation / payoff |",
            "|---|---|---|---|---|---|---|---|"]
    effects, per_seed = [], []
    for opp, rs in runs.items():
        last = int(rs[0].scalars["eval/cooperation"][-1][0])
        bc, bp = best_reply(opp)
        row = [opp]
        for key, best in (("cooperation", bc), ("payoff", bp)):
            warm = np.stack([per_game(r, 0, key) for r in rs])
            trained = np.stack([per_game(r, last, key) for r in rs])
            sign = 1.0 if best >= warm.mean() else -1.0
            effects.append(effect(f"{opp} {key}{'/round' if key == 'payoff' else ''}: trained - (warm start + best "
                                  f"reply {best:.2f}) / 2, towards the best reply", sign * (trained - (warm + best) / 2)))
            row += [f"{warm.mean():.3f}", f"{trained.mean():.3f}"]
            per_seed.append(f"{opp} {key}: " + ", ".join(f"{w:.2f} -> {t:.2f}" for w, t in zip(warm.mean(1),
                                                                                              trained.mean(1))))
        invalid = [np.mean([per_game(r, step, "invalid").mean() for r in rs]) for step in (0, last)]
        rows.append(f"| {' | '.join(row)} | {invalid[0]:.3f} | {invalid[1]:.3f} | {bc:.2f} / {bp:.2f} |")
    outcome = combine([e.outcome for e in effects])
    metric_vs_step({opp: [curve(r, "eval/cooperation") for r in rs] for opp, rs in runs.items()},
                   "cooperation rate (held-out)", out / "cooperation_vs_step.png",
                   "PPO in the repeated PD: cooperation vs training opponent")
    metric_vs_step({opp: [curve(r, "eval/payoff", 1.0 / ROUNDS) for r in rs] for opp, rs in runs.items()},
                   "payoff per round (held-out)", out / "payoff_vs_step.png",
                   "PPO in the repeated PD: payoff vs training opponent")
    body = [f"## Against the training opponent (held-out games, Prisoner's Dilemma, 5 rounds; mean of {len(seeds)} "
            "seeds)", "", *rows, "", "Per seed (warm start -> trained): " + "; ".join(per_seed), "",
            "![cooperation](cooperation_vs_step.png) ![payoff](payoff_vs_step.png)", "",
            "## Effects in the verdict (95% intervals)", "", *[f"- {e.line()}" for e in effects], ""]
    for r in results:
        if r.spec.arm != "behaviour":
            continue
        reports = sorted((r.run_dir / "games_eval").glob("step_*.md"))
        if not reports:
            continue
        body += [f"## Behavioural evaluation of the policy trained against {r.spec.params['opponent']} (seed 0, "
                 "`policy`) and its warm start (`init`)", "",
                 reports[-1].read_text().split("\n", 1)[1].replace("\n## ", "\n### "), ""]
        for png in (r.run_dir / "games_eval").glob("*.png"):
            target = out / f"{r.spec.params['opponent']}_{png.name}"
            shutil.copyfile(png, target)
            body.append(f"![{target.stem}]({target.name})")
        body.append("")
    n_games = len(per_game(train[0], 0, "payoff"))
    verdict = Verdict(
        reproduced=outcome == REPRODUCED, outcome=outcome,
        criterion="against Tit For Tat and against Defector, training closes more than half of the warm start's gap "
                  "to the best reply in both the cooperation rate and the payoff per round (held-out games; 95% "
                  f"intervals, two-level bootstrap over {len(seeds)} seeds x {n_games} games)",
        measured="; ".join(f"{e.name.split(':')[0]} {e.estimate:+.3f} [{e.low:+.3f}, {e.high:+.3f}] {e.outcome}"
                           for e in effects))
    return verdict, "\n".join(body)


register(Claim(
    name="games_cooperation", doc="docs/games.md",
    paper="Akata, Schulz, Coda-Forno, Oh, Bethge, Schulz 2023, Playing repeated games with Large Language Models "
          "(arXiv 2305.16867)",
    statement="A tiny LM trained with PPO against Tit For Tat in the repeated Prisoner's Dilemma learns to sustain "
              "mutual cooperation (cooperation and payoff rise well above the warm start's), while against Defector "
              "it learns to defect.",
    runs=sweep, analyze=analyze, workers=2,
    budget="1 SFT warm start, 2 opponents x 3 seeds x 50 PPO phases, 2 behavioural evaluations",
    history=[
        "First full run (one seed per opponent): fixed thresholds, against Tit For Tat cooperation +0.25 and payoff "
        "+0.5 per round, against Defector cooperation -0.25 and payoff +0.25 (held-out games, warm start -> trained). "
        "Verdict: NOT REPRODUCED on the Tit For Tat cooperation rise alone (0.57 -> 0.79 = +0.22; even the best "
        "reply, 0.8, cannot rise by 0.25 from 0.57).",
        "Second criterion, the same runs re-analysed: training closes >= 50% of the warm start's gap to the best "
        "reply in cooperation and payoff per round, one seed, no interval. Verdict: REPRODUCED (Tit For Tat "
        "cooperation 0.57 -> 0.79, payoff/round 2.70 -> 3.38; Defector cooperation 0.57 -> 0.00, payoff/round "
        "0.43 -> 1.00; >= 97% of every gap closed)."],
))
