"""Claim `games_reciprocity` (after Akata et al., "Playing repeated games with Large Language
Models", arXiv 2305.16867, Sec. 4: behaviour in the repeated Prisoner's Dilemma depends on the
other player's moves; docs/games.md): one policy trained against a *population* of axelrod
strategies, drawn per episode and never named to it, responds to its opponent through the history
it is shown: against Tit For Tat it sustains cooperation, against Defector it defects, against
Grudger it does not defect first. The policy trained against Tit For Tat alone (the
games_cooperation setting) learns an open-loop sequence instead.

Runs (env=games, Prisoner's Dilemma, 5 rounds, per-round payoff as reward, PPO with the
games_cooperation settings: algo.lam=1.0, 64 games per phase; one SFT warm start shared by all):
  population-s{0,1,2}  env.opponents=POPULATION (uniform per episode)
  tft-s{0,1,2}         env.opponents=[TitForTat]
then a behavioural evaluation of each final policy (python -m rlhf.evaluate; sampling at
temperature 1, game seeds disjoint from training) against POPULATION and HELD_OUT (strategies
never seen in training), the same games for every run.
Nothing is selected: every setting is games_cooperation's (fixed before this claim), the policy
is the last phase's, so no validation games are needed.

Criterion (stated before the full run). R = 5 rounds; "before the last round" means rounds
1..R-1, since defecting in round R is the best reply to every strategy here (no round is left
for it to answer). Each rate is measured per evaluation game, and its 95% interval is a two-level
percentile bootstrap (seeds with replacement, then games within each drawn seed), so an
interval spans the spread between training seeds as well as between games.
 1. The population policy shows each behaviour in more than 3 of 4 games/rounds (> 0.75):
    a. Tit For Tat: share of rounds 1..R-1 with mutual cooperation;
    b. Defector: share of rounds 2..R it defects in (round 1 cannot tell Defector from the
       others: the history is empty);
    c. Grudger: share of games in which it does not defect first before the last round.
 2. It conditions on the history where the Tit For Tat policy does not: cooperation in rounds
    2..R against Tit For Tat minus against Defector is larger for the population policy than for
    the Tit For Tat policy (difference of the two arms > 0, each arm bootstrapped on its own).
Each effect is REPRODUCED when its interval lies above its claimed value, NOT REPRODUCED when no
value in it does; the verdict combines them (rlhf.reproduce.stats.combine).

Reported, not in the verdict: per opponent (training and held-out) cooperation, payoff,
retaliation and forgiveness for both arms; payoff against the held-out strategies, population
minus Tit For Tat policy, with intervals; the cooperation of each round against each training
opponent; and two references computed exactly (expectimax over all histories): the Bayes-optimal
reply to an unknown opponent drawn from POPULATION, and the best reply to each known opponent.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from envs.games import C, GAMES, AxelrodOpponent, strategy_class
from rlhf.reproduce import Claim, RunResult, RunSpec, Verdict, register
from rlhf.reproduce.plots import metric_vs_step
from rlhf.reproduce.stats import N_BOOT, REPRODUCED, Effect, combine

POPULATION = ("TitForTat", "Defector", "Grudger", "Alternator", "Random")
HELD_OUT = ("SuspiciousTitForTat", "WinStayLoseShift", "Cooperator", "TitFor2Tats")
ARMS = {"population": POPULATION, "tft": ("TitForTat",)}
LABELS = {"population": "population", "tft": "Tit For Tat only"}
ROUNDS = 5
THRESHOLD = 0.75
COMMON = ["algo=ppo", "env=games", "reward=gold", "env.games=[pd]", f"env.rounds={ROUNDS}", f"env.max_turns={ROUNDS}",
          "rollout.max_new_tokens=3", "eval.samples_per_prompt=1", "train.checkpoint_every=0", "threads=1",
          "algo.lam=1.0"]


def sweep(quick: bool) -> list[RunSpec]:
    if quick:
        seeds, per_pair = (0,), 3
        train = ["train.steps=2", "eval.every=0", "train.prompts_per_step=4", "eval.prompts=4",
                 "model.sft.demonstrations=4000", "model.sft.epochs=1", "model.tokenizer.corpus_size=4000"]
    else:
        seeds, per_pair = (0, 1, 2), 48
        train = ["train.steps=40", "eval.every=10", "train.prompts_per_step=32", "eval.prompts=64",
                 "model.sft.demonstrations=8000", "model.sft.epochs=2"]
    opponents = ",".join((*POPULATION, *HELD_OUT))
    specs = [RunSpec(f"{arm}-s{s}", arm, [*COMMON, f"seed={s}", f"env.opponents=[{','.join(pool)}]", *train],
                     {"seed": s}) for s in seeds for arm, pool in ARMS.items()]
    specs += [RunSpec(f"behaviour-{arm}-s{s}", "behaviour",
                      ["env.eval_games=[pd]", f"env.eval_opponents=[{opponents}]", f"env.eval_games_per_pair={per_pair}",
                       f"env.eval_baseline={str(arm == 'population' and s == seeds[0]).lower()}"],
                      {"seed": s, "trained": arm}, evaluate=f"{arm}-s{s}") for s in seeds for arm in ARMS]
    return specs


# --------------------------------------------------------------------------------------------
# exact references: the best reply to a known opponent, and the Bayes-optimal reply to one
# drawn from a pool (expectimax over every history; the opponent's next move depends on the
# history only, moves are simultaneous)


@functools.lru_cache(maxsize=None)
def responses(name: str, agent: str) -> str:
    """A deterministic strategy's moves in rounds 1..len(agent)+1 against these agent moves."""
    opp, moves = AxelrodOpponent(name, GAMES["pd"], ROUNDS, 0), ""
    for a in agent:
        moves += opp.move()
        opp.update(moves[-1], a)
    return moves + opp.move()


def p_cooperate(name: str, agent: str, opponent: str) -> float | None:
    """P(the strategy plays C next | history), or None when it could not have played `opponent`."""
    cls = strategy_class(name)
    if cls.classifier["stochastic"]:
        if cls.__name__ != "Random":
            raise ValueError(f"{name}: only Random among stochastic strategies has an exact reference here")
        return cls().p
    moves = responses(name, agent)
    return None if moves[:-1] != opponent else float(moves[-1] == C)


def likelihood(name: str, opponent: str) -> float:
    """P(the strategy played `opponent`), given that it could have (see p_cooperate)."""
    cls = strategy_class(name)
    if not cls.classifier["stochastic"]:
        return 1.0
    p = cls().p
    return p ** opponent.count(C) * (1 - p) ** (len(opponent) - opponent.count(C))


def payoff(a: str, o: str) -> float:
    game = GAMES["pd"]
    return float(game.score(game.agent_option(a), game.opponent_option(o))[0])


@functools.lru_cache(maxsize=None)
def reply(pool: tuple[str, ...], agent: str = "", opponent: str = "") -> tuple[float, str]:
    """(expected remaining payoff, best move) after this history, the opponent drawn uniformly
    from `pool` and known only through the history (ties: C)."""
    if len(agent) == ROUNDS:
        return 0.0, ""
    # posterior over the pool (uniform prior): a deterministic strategy's likelihood of the history
    # is 1 or 0, Random's p^#C (1-p)^#D
    post = {n: p_cooperate(n, agent, opponent) for n in pool}
    post = {n: p for n, p in post.items() if p is not None}
    weights = np.array([likelihood(n, opponent) for n in post])
    pc = float(np.dot(weights, list(post.values())) / weights.sum())
    best = None
    for a in (C, "D"):
        value = sum(p * (payoff(a, o) + reply(pool, agent + a, opponent + o)[0])
                    for o, p in ((C, pc), ("D", 1 - pc)) if p > 0)
        if best is None or value > best[0] + 1e-9:
            best = (value, a)
    return best


def reference(pool: tuple[str, ...], name: str) -> dict[str, object]:
    """Expected behaviour of the pool's optimal reply against `name`: cooperation and payoff per
    round, cooperation per round."""
    by_round = np.zeros(ROUNDS)
    total = 0.0

    def walk(agent: str, opponent: str, prob: float):
        nonlocal total
        if len(agent) == ROUNDS:
            return
        a = reply(pool, agent, opponent)[1]
        pc = p_cooperate(name, agent, opponent)
        by_round[len(agent)] += prob * (a == C)
        for o, p in ((C, pc), ("D", 1 - pc)):
            if p > 0:
                total += prob * p * payoff(a, o)
                walk(agent + a, opponent + o, prob * p)

    walk("", "", 1.0)
    return {"cooperation": float(by_round.mean()), "payoff": total / ROUNDS, "by_round": by_round.tolist()}


# --------------------------------------------------------------------------------------------
# per-game measures (moves in C/D terms, one string per player, e.g. "CCCCD")


def mutual_before_last(a: str, o: str) -> float:
    return float(np.mean([x == C and y == C for x, y in zip(a[:-1], o[:-1])]))


def defects_after_first(a: str, o: str) -> float:
    return float(np.mean([x != C for x in a[1:]]))


def not_first_defector(a: str, o: str) -> float:
    """1 unless the agent defects before the opponent does, in a round before the last."""
    first = lambda moves: next((t for t, x in enumerate(moves) if x != C), len(moves))  # noqa: E731
    return float(not (first(a) < first(o) and first(a) < len(a) - 1))


def by_round(a: str, o: str) -> list[float]:
    """Cooperation in each round (NaN after a game that the context length cut short)."""
    return [float(a[t] == C) if t < len(a) else np.nan for t in range(ROUNDS)]


def cooperation_after_first(a: str, o: str) -> float:
    return float(np.mean([x == C for x in a[1:]]))


def boot_means(x: np.ndarray, seed: int) -> np.ndarray:
    """Two-level bootstrap of the mean of x [seeds, games]: seeds with replacement, then games
    within each drawn seed."""
    rng = np.random.default_rng(seed)
    s, g = x.shape
    seeds = rng.integers(0, s, size=(N_BOOT, s))
    games = rng.integers(0, g, size=(N_BOOT, s, g))
    return x[seeds[..., None], games].mean((1, 2))


def effect(name: str, x: np.ndarray, claimed: float = 0.0, minus: np.ndarray | None = None, seed: int = 0) -> Effect:
    """Mean of x (minus the mean of `minus`, bootstrapped on its own) with a 95% interval."""
    boots = boot_means(x, seed) - (boot_means(minus, seed + 1) if minus is not None else 0.0)
    est = x.mean() - (minus.mean() if minus is not None else 0.0)
    low, high = np.percentile(boots, [2.5, 97.5])
    return Effect(name, float(est), float(low), float(high), claimed, 1,
                  f"two-level bootstrap over {x.shape[0]} seeds x {x.shape[1]} games")


def games_of(run: RunResult) -> dict[str, list[dict]]:
    table = json.loads(sorted((run.run_dir / "games_eval").glob("step_*.json"))[-1].read_text())
    return table["games"]


def measure(rows: dict[str, list[dict]], opp: str, fn) -> np.ndarray:
    """[seeds, games] of fn(agent moves, opponent moves) against `opp`."""
    return np.array([[fn(g["agent"], g["opponent"]) for g in by_seed[opp]] for by_seed in rows])


def analyze(results: list[RunResult], out: Path) -> tuple[Verdict, str]:
    behaviour = [r for r in results if r.spec.arm == "behaviour"]
    seeds = sorted({r.spec.params["seed"] for r in behaviour})
    games = {arm: [games_of(next(r for r in behaviour if r.spec.params == {"seed": s, "trained": arm}))["policy"]["pd"]
                   for s in seeds] for arm in ARMS}
    init = next((games_of(r)["init"]["pd"] for r in behaviour if "init" in games_of(r)), None)
    opponents = [*POPULATION, *HELD_OUT]
    per_round = {arm: {o: np.nanmean(measure(games[arm], o, by_round), (0, 1)) for o in POPULATION} for arm in ARMS}

    checks = {arm: [
        effect(f"{LABELS[arm]} vs TitForTat: mutual cooperation, rounds 1..{ROUNDS - 1}",
               measure(games[arm], "TitForTat", mutual_before_last), THRESHOLD),
        effect(f"{LABELS[arm]} vs Defector: defection, rounds 2..{ROUNDS}",
               measure(games[arm], "Defector", defects_after_first), THRESHOLD),
        effect(f"{LABELS[arm]} vs Grudger: games it does not defect first before round {ROUNDS}",
               measure(games[arm], "Grudger", not_first_defector), THRESHOLD)] for arm in ARMS}
    contrast = {arm: measure(games[arm], "TitForTat", cooperation_after_first)
                - measure(games[arm], "Defector", cooperation_after_first) for arm in ARMS}
    conditioning = effect(f"cooperation rounds 2..{ROUNDS}, TitForTat minus Defector: population - Tit For Tat only",
                          contrast["population"], 0.0, minus=contrast["tft"], seed=7)
    part1, part2 = combine([e.outcome for e in checks["population"]]), conditioning.outcome
    outcome = combine([part1, part2])
    held_out = [effect(f"payoff/round vs {o}: population - Tit For Tat only",
                       measure(games["population"], o, lambda a, b: payoff_of(a, b)),
                       minus=measure(games["tft"], o, lambda a, b: payoff_of(a, b)), seed=11 + k)
                for k, o in enumerate(HELD_OUT)]
    held_mean = effect("payoff/round, mean over held-out strategies: population - Tit For Tat only",
                       np.mean([measure(games["population"], o, payoff_of) for o in HELD_OUT], 0),
                       minus=np.mean([measure(games["tft"], o, payoff_of) for o in HELD_OUT], 0), seed=23)

    bayes = {o: reference(POPULATION, o) for o in opponents}
    known = {o: reference((o,), o) for o in opponents}
    table = ["| opponent | arm | cooperation | payoff/round [95% CI] | retaliation | forgiveness | invalid |",
             "|---|---|---|---|---|---|---|"]
    bars = {}
    for o in opponents:
        for arm in ARMS:
            pay = effect("", measure(games[arm], o, payoff_of))
            coop = effect("", measure(games[arm], o, lambda a, _: float(np.mean([x == C for x in a]))))
            rates = pooled_rates([g for by_seed in games[arm] for g in by_seed[o]])
            bars[(arm, o)] = (coop, pay)
            table.append(f"| {o}{' (held out)' if o in HELD_OUT else ''} | {LABELS[arm]} | {coop.estimate:.2f} "
                         f"[{coop.low:.2f}, {coop.high:.2f}] | {pay.estimate:.2f} [{pay.low:.2f}, {pay.high:.2f}] | "
                         f"{fmt(rates['retaliation'])} | {fmt(rates['forgiveness'])} | {rates['invalid']:.3f} |")
        w = pooled_rates(init[o]) if init else None
        if w:
            table.append(f"| {o} | warm start | {w['cooperation']:.2f} | {w['payoff']:.2f} | {fmt(w['retaliation'])} | "
                         f"{fmt(w['forgiveness'])} | {w['invalid']:.3f} |")
        table.append(f"| {o} | Bayes-optimal vs population (exact) | {bayes[o]['cooperation']:.2f} | "
                     f"{bayes[o]['payoff']:.2f} | | | |")
        table.append(f"| {o} | best reply, opponent known (exact) | {known[o]['cooperation']:.2f} | "
                     f"{known[o]['payoff']:.2f} | | | |")
    round_rows = ["| opponent | arm | " + " | ".join(f"round {t + 1}" for t in range(ROUNDS)) + " |",
                  "|---|---|" + "---|" * ROUNDS]
    for o in POPULATION:
        for arm in ARMS:
            round_rows.append(f"| {o} | {LABELS[arm]} | " + " | ".join(f"{x:.2f}" for x in per_round[arm][o]) + " |")
        round_rows.append(f"| {o} | Bayes-optimal (exact) | " + " | ".join(f"{x:.2f}" for x in bayes[o]["by_round"])
                          + " |")

    plot_behaviour(bars, bayes, opponents, out / "behaviour_per_opponent.png")
    plot_rounds(per_round, bayes, out / "cooperation_per_round.png")
    runs = {r.spec.name: r for r in results}
    curves = {LABELS[arm]: [[(x, y / ROUNDS) for x, y in runs[f"{arm}-s{s}"].scalars.get("eval/payoff", [])]
                            for s in seeds] for arm in ARMS}
    if all(c for cs in curves.values() for c in cs):
        metric_vs_step(curves, "payoff per round (held-out games, own opponents)", out / "payoff_vs_step.png",
                       "PPO in the repeated PD: learning curves")

    verdict = Verdict(
        reproduced=outcome == REPRODUCED, outcome=outcome,
        criterion=f"(1) the population policy shows each behaviour in > {THRESHOLD} of games/rounds: mutual "
                  f"cooperation with TitForTat in rounds 1..{ROUNDS - 1}, defection against Defector in rounds "
                  f"2..{ROUNDS}, no first defection against Grudger before round {ROUNDS}; (2) cooperation in rounds "
                  f"2..{ROUNDS} against TitForTat minus against Defector is larger for the population policy than for "
                  f"the Tit For Tat policy (> 0) — 95% intervals, two-level bootstrap over {len(seeds)} seeds and "
                  f"{contrast['population'].shape[1]} games per opponent",
        measured=f"part 1: {part1}; part 2: {part2}; " + "; ".join(
            f"{e.name} {e.estimate:.3f} [{e.low:.3f}, {e.high:.3f}]" for e in [*checks["population"], conditioning]))
    body = "\n".join([
        "## Effects in the verdict (95% intervals)", "",
        *[f"- {e.line()}" for e in [*checks["population"], conditioning]],
        f"- Part 1 (behaviour of the population policy): {part1}", f"- Part 2 (conditioning vs Tit For Tat only): {part2}",
        "", "The same behaviours of the Tit For Tat policy (not in the verdict):", "",
        *[f"- {e.line()}" for e in checks["tft"]], "",
        f"## Against strategies held out of training ({', '.join(HELD_OUT)})", "",
        *[f"- {e.line()}" for e in [*held_out, held_mean]], "",
        "## Behaviour per opponent (evaluation games, Prisoner's Dilemma, 5 rounds; mean of seeds)", "",
        "Cooperation and payoff per round with 95% intervals (two-level bootstrap); retaliation, forgiveness and "
        "invalid answers pooled over seeds and games (docs/games.md). Warm start: the shared SFT policy.", "",
        *table, "", "![behaviour](behaviour_per_opponent.png)", "",
        "## Cooperation per round against the training population (mean of seeds)", "", *round_rows, "",
        "![per round](cooperation_per_round.png) ![learning curves](payoff_vs_step.png)", ""])
    return verdict, body


def payoff_of(a: str, o: str) -> float:
    return sum(payoff(x, y) for x, y in zip(a, o)) / len(a)


def pooled_rates(rows: list[dict]) -> dict[str, float]:
    """Cooperation, payoff per round, retaliation and forgiveness (rlhf/games_eval.py's
    definitions) pooled over games."""
    ret, forg = [0, 0], [0, 0]
    for g in rows:
        a, o = g["agent"], g["opponent"]
        for t in range(len(a) - 1):
            if a[t] == C and o[t] != C:
                ret[0] += a[t + 1] != C
                ret[1] += 1
            if t >= 1 and o[t - 1] != C and o[t] == C:
                forg[0] += a[t + 1] == C
                forg[1] += 1
    n = sum(len(g["agent"]) for g in rows)
    return {"cooperation": sum(g["agent"].count(C) for g in rows) / n, "payoff": sum(g["payoff"] for g in rows) / n,
            "retaliation": ret[0] / ret[1] if ret[1] else float("nan"),
            "forgiveness": forg[0] / forg[1] if forg[1] else float("nan"),
            "invalid": sum(g["invalid"] for g in rows) / n}


def fmt(x: float) -> str:
    return "-" if np.isnan(x) else f"{x:.2f}"


def plot_behaviour(bars: dict, bayes: dict, opponents: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    x = np.arange(len(opponents))
    for k, (metric, ax) in enumerate(zip(("cooperation", "payoff per round"), axes)):
        for j, arm in enumerate(ARMS):
            e = [bars[(arm, o)][k] for o in opponents]
            ax.bar(x + (j - 0.5) * 0.38, [v.estimate for v in e], 0.38, label=LABELS[arm],
                   yerr=[[v.estimate - v.low for v in e], [v.high - v.estimate for v in e]], capsize=2)
        ax.scatter(x, [bayes[o]["cooperation" if k == 0 else "payoff"] for o in opponents], marker="_", s=300,
                   color="black", zorder=3, label="Bayes-optimal vs population")
        ax.axvline(len(POPULATION) - 0.5, color="grey", linestyle=":")
        ax.set_xticks(x, opponents, rotation=40, ha="right", fontsize=8)
        ax.set_title(f"{metric} (right of the dotted line: held out)", fontsize=9)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_rounds(per_round: dict, bayes: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(POPULATION), figsize=(3.2 * len(POPULATION), 3.2), sharey=True)
    rounds = np.arange(1, ROUNDS + 1)
    for ax, o in zip(axes, POPULATION):
        for arm in ARMS:
            ax.plot(rounds, per_round[arm][o], marker="o", label=LABELS[arm])
        ax.plot(rounds, bayes[o]["by_round"], color="black", linestyle="--", label="Bayes-optimal")
        ax.set_title(f"vs {o}", fontsize=9)
        ax.set_xlabel("round")
        ax.set_ylim(-0.05, 1.05)
    axes[0].set_ylabel("cooperation")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


register(Claim(
    name="games_reciprocity", doc="docs/games.md",
    paper="Akata, Schulz, Coda-Forno, Oh, Bethge, Schulz 2023, Playing repeated games with Large Language Models "
          "(arXiv 2305.16867)",
    statement="A tiny LM trained with PPO against a population of axelrod strategies, drawn per episode and unknown "
              "to it, conditions on the history: it sustains cooperation with Tit For Tat, defects against Defector "
              "and does not defect first against Grudger, where the policy trained against Tit For Tat alone plays "
              "one open-loop sequence against everyone.",
    runs=sweep, analyze=analyze, workers=2,
    budget="1 SFT warm start, 2 arms x 3 seeds x 40 PPO phases of 64 games, 6 behavioural evaluations "
           "(9 opponents x 48 games): 4.6 min wall on 2 nearly quiet cores (7.7 CPU-min), warm start built in it",
    history=["Full run 1 (2026-12-03, same criterion, on the code before the PPO phase speed-ups of docs/profile.md: "
             "log-probs from the LM head on generated tokens only and pi_old from the engine's behaviour log-probs, "
             "which change float rounding; 48.9 min on contended cores): REPRODUCED, every population seed "
             "conditioned on the history (vs Tit For Tat mutual cooperation 0.965 [0.938, 0.986], vs Defector "
             "defection 0.934 [0.894, 0.964], vs Grudger no first defection 0.938 [0.868, 0.986]; part 2 +0.684 "
             "[+0.627, +0.741]). Full run 2 (this report, current code, criterion unchanged) gives the verdict above."],
))
