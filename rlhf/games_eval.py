"""Behavioural evaluation on `env=games` (Akata et al.'s signatures), used by
`python -m rlhf.evaluate run=<games run>`:

* per game and opponent: mean payoff per round, cooperation rate, forgiveness, retaliation,
  coordination and alternation (Battle of the Sexes), invalid-answer rate;
* a round-robin tournament per game: the policy (and the initial policy) against every axelrod
  strategy of env.eval_opponents, the strategies among themselves (axelrod.Match), and the
  policies against each other (LLM vs LLM self-play, two token streams batched per round);
* plots (cooperation and payoff per opponent, before/after; tournament heat maps).

Definitions (moves in C/D terms, see envs/games.py; t = round index):
  cooperation   share of rounds the agent played C
  forgiveness   among rounds t where the opponent returns to cooperation (D at t-1, C at t),
                the share where the agent plays C at t+1
  retaliation   among rounds t where the agent was exploited (agent C, opponent D), the share
                where the agent plays D at t+1
  coordination  share of rounds both picked the same option (in BoS: the same event)
  alternation   among consecutive coordinated rounds (t-1, t), the share where the coordinated
                option switched (turn-taking in BoS)
A rate with no qualifying event is NaN (reported as null / "-").
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from envs.games import GAMES, ExternalOpponent, GameRecord, RepeatedGameEnv, import_axelrod, strategy_class
from rlhf.evaluation import eval_temperature
from rlhf.rollout.engine import SamplingParams
from rlhf.rollout.factory import make_engine
from rlhf.rollout.runner import EpisodeRunner

EVAL_SEED = 9_000_000_000  # behavioural-evaluation game seeds never coincide with training seeds
METRICS = ("payoff", "opponent_payoff", "cooperation", "mutual_cooperation", "forgiveness", "retaliation",
           "coordination", "alternation", "invalid")


# --------------------------------------------------------------------------------------------
# metrics from game records


def _rate(hits: int, events: int) -> float:
    return hits / events if events else math.nan


def behaviour(records: list[GameRecord]) -> dict[str, float]:
    """The behavioural signatures of a set of games (definitions in the module docstring)."""
    counts = {k: [0, 0] for k in ("forgiveness", "retaliation", "alternation")}
    rounds = [r for rec in records for r in rec.rounds]
    coop = mutual = coordinated = 0
    for rec in records:
        agent, opp = rec.moves()
        for t in range(len(agent)):
            coop += agent[t] == "C"
            mutual += agent[t] == "C" and opp[t] == "C"
            if t + 1 < len(agent):
                if t >= 1 and opp[t - 1] == "D" and opp[t] == "C":
                    counts["forgiveness"][0] += agent[t + 1] == "C"
                    counts["forgiveness"][1] += 1
                if agent[t] == "C" and opp[t] == "D":
                    counts["retaliation"][0] += agent[t + 1] == "D"
                    counts["retaliation"][1] += 1
        same = [r.agent == r.opponent for r in rec.rounds]
        coordinated += sum(same)
        for t in range(1, len(same)):
            if same[t] and same[t - 1]:
                counts["alternation"][0] += rec.rounds[t].agent != rec.rounds[t - 1].agent
                counts["alternation"][1] += 1
    n = max(len(rounds), 1)
    return {"payoff": sum(r.agent_payoff for r in rounds) / n,
            "opponent_payoff": sum(r.opponent_payoff for r in rounds) / n,
            "cooperation": coop / n, "mutual_cooperation": mutual / n,
            "forgiveness": _rate(*counts["forgiveness"]), "retaliation": _rate(*counts["retaliation"]),
            "coordination": coordinated / n, "alternation": _rate(*counts["alternation"]),
            "invalid": sum(not r.valid for r in rounds) / n}


# --------------------------------------------------------------------------------------------
# playing


def env_settings(env_cfg) -> dict:
    """The env keys that shape a game's text and rules (not which games/opponents are drawn)."""
    keys = ("rounds", "labels", "randomize_labels", "label_pool", "payoff_format", "reward_timing", "reward_scale",
            "invalid_move", "invalid_penalty")
    return {k: (list(env_cfg[k]) if k in ("labels", "label_pool") else env_cfg[k]) for k in keys if k in env_cfg}


def sampling_for(cfg) -> SamplingParams:
    return SamplingParams(temperature=eval_temperature(cfg), max_new_tokens=int(cfg.rollout.max_new_tokens),
                          stop_strings=tuple(cfg.rollout.stop_strings))


@torch.no_grad()
def play_vs_strategies(policy, tokenizer, cfg, games, opponents, n: int, seed: int = 0) -> dict[tuple[str, str], list]:
    """n games of the policy against each (game, axelrod strategy); -> {(game, opponent): [GameRecord]}."""
    settings = env_settings(cfg.env)
    pairs = [(g, o) for g in games for o in opponents]
    envs = [RepeatedGameEnv(games=[g], opponents=[o], **settings) for g, o in pairs for _ in range(n)]
    seeds = [EVAL_SEED + seed * 1_000_003 + i for i in range(len(envs))]
    engine = make_engine(cfg, policy, tokenizer)
    runner = EpisodeRunner(engine, tokenizer, sampling_for(cfg), max_turns=int(settings["rounds"]),
                           max_total_tokens=int(policy.config.max_position_embeddings))
    was_training = policy.training
    policy.eval()
    with torch.random.fork_rng():
        torch.manual_seed(int(cfg.seed) + seed)
        runner.run(envs, seeds)
    policy.train(was_training)
    out: dict[tuple[str, str], list] = {p: [] for p in pairs}
    for i, env in enumerate(envs):
        out[pairs[i // n]].append(env.record)
    return out


@torch.no_grad()
def play_llm_vs_llm(policy_a, policy_b, tokenizer, cfg, game: str, n: int, seed: int = 0):
    """n games of policy A against policy B (the same object for self-play), batched: each
    round both sides generate on their own transcripts, then each sees the other's move.
    -> (A's records, B's records), each in its own frame."""
    settings = env_settings(cfg.env)
    rounds = int(settings["rounds"])
    sampling = sampling_for(cfg)
    sides = []
    for k, policy in enumerate((policy_a, policy_b)):
        envs = [RepeatedGameEnv(games=[game], opponent=ExternalOpponent(), **settings) for _ in range(n)]
        ids = [tokenizer(env.reset(EVAL_SEED + seed * 1_000_003 + i), add_special_tokens=False)["input_ids"]
               for i, env in enumerate(envs)]
        sides.append((make_engine(cfg, policy, tokenizer), envs, ids))
    limit = int(policy_a.config.max_position_embeddings)
    eos = tokenizer.eos_token_id
    with torch.random.fork_rng():
        torch.manual_seed(int(cfg.seed) + seed + 17)
        for _ in range(rounds):
            if max(len(x) for _, _, ids in sides for x in ids) >= limit:
                break
            texts, moves = [], []
            for engine, envs, ids in sides:
                completions = engine.generate(ids, sampling)
                side_texts = [tokenizer.decode([t for t in c.token_ids if t != eos], skip_special_tokens=True)
                              for c in completions]
                for x, c in zip(ids, completions):
                    x += c.token_ids
                texts.append(side_texts)
                moves.append([env.game.agent_cd(env.resolve(t)[0]) for env, t in zip(envs, side_texts)])
            for k, (engine, envs, ids) in enumerate(sides):
                for i, env in enumerate(envs):
                    env.opponent.next_move = moves[1 - k][i]
                    observation, _, done, _ = env.step(texts[k][i])
                    if not done:
                        ids[i] += tokenizer(observation, add_special_tokens=False)["input_ids"]
    return [env.record for env in sides[0][1]], [env.record for env in sides[1][1]]


def strategy_vs_strategy(row: str, col: str, game: str, rounds: int, n: int, seed: int = 0) -> tuple[float, float]:
    """Mean payoff per round of two axelrod strategies (row, col) over n axl.Match games."""
    axl = import_axelrod()
    r, p, s, t = GAMES[game].rpst()
    total_row = total_col = 0.0
    for i in range(n):
        match = axl.Match((strategy_class(row)(), strategy_class(col)()), turns=rounds,
                          game=axl.Game(r=r, s=s, t=t, p=p), seed=(EVAL_SEED + seed * 1_000_003 + i) % 2**32)
        match.play()
        scores = match.final_score()
        total_row, total_col = total_row + scores[0], total_col + scores[1]
    return total_row / (n * rounds), total_col / (n * rounds)


def tournament(game: str, strategies: list[str], llm_records: dict[str, dict], llm_pairs: dict[tuple[str, str], tuple],
               rounds: int, n: int) -> tuple[list[str], np.ndarray]:
    """Round-robin table: M[i, j] = mean payoff per round of player i against player j.
    llm_records[name][(game, strategy)] holds that policy's games against the strategy;
    llm_pairs[(a, b)] = (a's records, b's records) of LLM vs LLM games."""
    players = [*llm_records, *strategies]
    table = np.full((len(players), len(players)), np.nan)
    for i, a in enumerate(players):
        for j, b in enumerate(players):
            if a in llm_records and b in llm_records:
                recs = llm_pairs.get((a, b))
                if recs is not None:
                    table[i, j] = behaviour(recs[0])["payoff"]
                elif (b, a) in llm_pairs:
                    table[i, j] = behaviour(llm_pairs[(b, a)][1])["payoff"]
            elif a in llm_records:
                table[i, j] = behaviour(llm_records[a][(game, b)])["payoff"]
            elif b in llm_records:
                table[i, j] = behaviour(llm_records[b][(game, a)])["opponent_payoff"]
            elif j >= i:
                table[i, j], table[j, i] = strategy_vs_strategy(a, b, game, rounds, n)
    return players, table


# --------------------------------------------------------------------------------------------
# the whole evaluation


def game_row(record: GameRecord) -> dict:
    """One game against a strategy, for per-game statistics: moves in C/D terms, total payoff,
    invalid answers."""
    agent, opp = record.moves()
    return {"agent": "".join(agent), "opponent": "".join(opp), "payoff": sum(r.agent_payoff for r in record.rounds),
            "invalid": sum(not r.valid for r in record.rounds)}


def _fmt(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def evaluate_games(cfg, policies: dict, tokenizer, out_dir: Path, step: int) -> dict[str, float]:
    """Behaviour of each policy ({name: model}, e.g. {"policy": trained, "init": warm start}) per
    eval game and opponent, LLM-vs-LLM play, tournaments, plots. Writes
    out_dir/games_eval/step_N.{json,md} and PNGs; returns flat metrics '<policy>/<game>/<opponent>/<metric>'."""
    env = cfg.env
    games, opponents = list(env.eval_games), list(env.eval_opponents)
    n, rounds = int(env.eval_games_per_pair), int(env.rounds)
    records = {name: play_vs_strategies(model, tokenizer, cfg, games, opponents, n, seed=k)
               for k, (name, model) in enumerate(policies.items())}
    names = list(policies)
    llm_pairs = {}
    for game in games:
        for i, a in enumerate(names):
            for j, b in enumerate(names[i:], i):
                llm_pairs[(game, a, b)] = play_llm_vs_llm(policies[a], policies[b], tokenizer, cfg, game, n,
                                                          seed=100 + 10 * i + j)
    flat: dict[str, float] = {}
    table: dict = {"step": step, "games_per_pair": n, "rounds": rounds, "behaviour": {}, "games": {}, "tournament": {}}
    for name in names:
        for (game, opp), recs in records[name].items():
            m = behaviour(recs)
            table["behaviour"].setdefault(name, {}).setdefault(game, {})[opp] = m
            table["games"].setdefault(name, {}).setdefault(game, {})[opp] = [game_row(r) for r in recs]
            flat.update({f"{name}/{game}/{opp}/{k}": v for k, v in m.items()})
        for game in games:
            m = behaviour([r for opp in opponents for r in records[name][(game, opp)]])
            flat.update({f"{name}/{game}/all/{k}": v for k, v in m.items()})
    for (game, a, b), (ra, rb) in llm_pairs.items():
        m = behaviour(ra)
        table["behaviour"][a][game][f"vs {b}"] = m
        flat.update({f"{a}/{game}/vs_{b}/{k}": v for k, v in m.items()})
    md = [f"# Behavioural evaluation (step {step}; {n} games of {rounds} rounds per pair)", ""]
    for game in games:
        md += [f"## {GAMES[game].title} (`{game}`)", "",
               "| policy | opponent | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
        for name in names:
            for opp, m in table["behaviour"][name][game].items():
                md.append(f"| {name} | {opp} | " + " | ".join(_fmt(m[k]) for k in METRICS) + " |")
        players, scores = tournament(game, opponents, {nm: records[nm] for nm in names},
                                     {(a, b): v for (g, a, b), v in llm_pairs.items() if g == game}, rounds, n)
        order = np.argsort(-np.nanmean(scores, axis=1), kind="stable")
        table["tournament"][game] = {"players": players, "payoff": scores.tolist()}
        md += ["", "Tournament (mean payoff per round of the row player against the column player; rank by the row mean):",
               "", "| rank | player | mean | " + " | ".join(players) + " |", "|---|---|---|" + "---|" * len(players)]
        for rank, i in enumerate(order, 1):
            md.append(f"| {rank} | {players[i]} | {np.nanmean(scores[i]):.2f} | "
                      + " | ".join(_fmt(float(x)) for x in scores[i]) + " |")
            flat[f"tournament/{game}/{players[i]}/mean"] = float(np.nanmean(scores[i]))
            flat[f"tournament/{game}/{players[i]}/rank"] = float(rank)
        md.append("")
    out = Path(out_dir) / "games_eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"step_{step:06d}.json").write_text(json.dumps(table, indent=1))
    (out / f"step_{step:06d}.md").write_text("\n".join(md))
    plot_behaviour(table, games, opponents, names, out / f"behaviour_step_{step:06d}.png")
    plot_tournaments(table, games, out / f"tournament_step_{step:06d}.png")
    return flat


def plot_behaviour(table: dict, games: list[str], opponents: list[str], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(games), figsize=(4.2 * len(games), 6.5), squeeze=False)
    x = np.arange(len(opponents))
    width = 0.8 / len(names)
    for col, game in enumerate(games):
        for row, metric in enumerate(("cooperation", "payoff")):
            ax = axes[row, col]
            for k, name in enumerate(names):
                values = [table["behaviour"][name][game][o][metric] for o in opponents]
                ax.bar(x + k * width, values, width, label=name)
            ax.set_xticks(x + width * (len(names) - 1) / 2, opponents, rotation=60, ha="right", fontsize=7)
            ax.set_title(f"{GAMES[game].title}: {metric}", fontsize=9)
            if row == 0:
                ax.set_ylim(0, 1)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_tournaments(table: dict, games: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(games), figsize=(5 * len(games), 4.6), squeeze=False)
    for ax, game in zip(axes[0], games):
        players = table["tournament"][game]["players"]
        scores = np.array(table["tournament"][game]["payoff"], dtype=float)
        im = ax.imshow(scores, cmap="viridis")
        ax.set_xticks(range(len(players)), players, rotation=70, ha="right", fontsize=7)
        ax.set_yticks(range(len(players)), players, fontsize=7)
        ax.set_title(f"{GAMES[game].title}: row's payoff/round", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def evaluate_checkpoint(cfg, checkpoint: Path, state: dict, run_dir: Path) -> dict[str, float]:
    """`python -m rlhf.evaluate` on a games run: the generic held-out metrics (KL etc., on the
    training opponents) plus the behavioural evaluation of the checkpoint and, with
    env.eval_baseline, of its warm start."""
    from rlhf.evaluation import checkpoint_policy, evaluate_policy

    policy, ref, tokenizer, policy_dir = checkpoint_policy(cfg, checkpoint, state)
    metrics = evaluate_policy(cfg, policy, ref, tokenizer)
    policies = {"policy": policy, **({"init": ref} if bool(cfg.env.get("eval_baseline", True)) else {})}
    for rival in cfg.env.get("eval_rivals", None) or []:  # other checkpoints: LLM-vs-LLM play and the tournament
        policies[Path(str(rival)).name] = load_rival(str(rival), policy_dir)
    metrics.update(evaluate_games(cfg, policies, tokenizer, run_dir, int(state["step"])))
    return metrics


def load_rival(path: str, policy_dir: Path):
    """The policy of another run or checkpoint directory, which must start from the same warm
    start (the same tokenizer) as the evaluated run."""
    from agents.models import apply_lora, load_lm
    from rlhf import checkpoint as ckpt

    checkpoint = ckpt.resolve_resume(path, Path(path))
    state = torch.load(checkpoint / ckpt.STATE, weights_only=False)
    if Path(state["policy_dir"]) != policy_dir:
        raise ValueError(f"env.eval_rivals: {path} starts from {state['policy_dir']}, not from this run's warm start "
                         f"{policy_dir}; LLM-vs-LLM play needs one tokenizer")
    rival = load_lm(policy_dir)
    lora = state["config"]["model"]["lora"]
    if int(lora["rank"]) > 0:
        from omegaconf import OmegaConf

        rival = apply_lora(rival, OmegaConf.create(lora))
    rival.load_state_dict(torch.load(checkpoint / "policy.pt", weights_only=True))
    return rival.eval()
