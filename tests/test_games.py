"""env=games: bookkeeping against axelrod.Match, label randomization, invalid answers, token
boundaries, multi-turn masking, behavioural metrics by hand, LLM-vs-LLM play, training and
the behavioural evaluation end to end."""
from __future__ import annotations

import json
import math
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from envs.games import GAMES, GameRecord, RepeatedGameEnv, Round, import_axelrod, parse_answer, strategy_class
from rlhf.config import ConfigError, compose, validate

STRATEGIES = ["TitForTat", "Grudger", "Alternator", "Defector", "Cooperator", "Random", "SuspiciousTitForTat",
              "WinStayLoseShift", "TitFor2Tats"]
EOS = "<|endoftext|>"
REPO = Path(__file__).resolve().parents[1]


def label_for(env: RepeatedGameEnv, move: str) -> str:
    return " " + env.record.labels[env.game.agent_option(move)]


@pytest.mark.parametrize("game", list(GAMES))
def test_bookkeeping_matches_axelrod_match(game):
    """Moves, per-round payoffs and totals equal axl.Match((Cycler(agent moves), strategy), seed)."""
    axl = import_axelrod()
    r, p, s, t = GAMES[game].rpst()
    rounds = 9
    for strategy in STRATEGIES:
        for seed in (0, 7, 123456, 7_000_000_123):
            moves = "".join(random.Random(seed).choice("CD") for _ in range(rounds))
            env = RepeatedGameEnv(games=[game], opponents=[strategy], rounds=rounds)
            env.reset(seed)
            rewards, infos = [], []
            for k, move in enumerate(moves):
                observation, reward, done, info = env.step(label_for(env, move))
                rewards.append(reward)
                infos.append(info)
                assert done == (k == rounds - 1) and (observation is None) == done
            match = axl.Match((axl.Cycler(moves), strategy_class(strategy)()), turns=rounds,
                              game=axl.Game(r=r, s=s, t=t, p=p), seed=seed % 2**32)
            played = match.play()
            assert [(i["agent_move"], i["opponent_move"]) for i in infos] == [(str(a), str(b)) for a, b in played]
            assert [(x["payoff"], x["opponent_payoff"]) for x in rewards] == [tuple(map(float, sc)) for sc in match.scores()]
            assert sum(x["payoff"] for x in rewards) == match.final_score()[0]
            assert sum(x["opponent_payoff"] for x in rewards) == match.final_score()[1]
            assert env.record.moves() == ([str(a) for a, _ in played], [str(b) for _, b in played])
            assert sum(x["cooperation"] for x in rewards) == pytest.approx(moves.count("C") / rounds)


def test_games_are_symmetric_in_cd_terms_and_payoffs_are_as_published():
    for game in GAMES.values():
        assert game.is_symmetric(), game.name
    axl = import_axelrod()
    assert GAMES["pd"].rpst() == tuple(axl.Game().RPST())  # axelrod's default PD: R=3, P=1, S=0, T=5
    bos = GAMES["bos"]  # option 0 = the agent's favourite
    assert bos.score(0, 0) == (10, 7) and bos.score(1, 1) == (7, 10) and bos.score(0, 1) == bos.score(1, 0) == (0, 0)
    assert bos.agent_cd(1) == "C" and bos.opponent_option("C") == 0  # C = go to the other's favourite
    r, p, s, t = GAMES["sh"].rpst()
    assert r > t >= p > s
    r, p, s, t = GAMES["chicken"].rpst()
    assert t > r > s > p


def parse_table(intro: str) -> dict[tuple[str, str], tuple[float, float]]:
    cells = re.findall(r"(\w)(\w) (\d+),(\d+)", intro.split("Points (you,other):")[1].split("\n")[0])
    return {(a, b): (float(x), float(y)) for a, b, x, y in cells}


def test_label_randomization_keeps_payoffs_consistent():
    """With random labels, every round's payoffs are the shown table's entry for (my label, the
    label the observation says the other picked), and C/D bookkeeping is unchanged."""
    seen = set()
    for seed in range(60):
        env = RepeatedGameEnv(games=list(GAMES), opponents=["Random", "Alternator", "TitForTat"], rounds=5,
                              randomize_labels=True)
        intro = env.reset(seed)
        labels = env.record.labels
        seen.add(labels)
        table = parse_table(intro)
        assert len(table) == 4 and set(a for a, _ in table) == set(labels)
        rng = random.Random(seed)
        for _ in range(5):
            mine = rng.choice(labels)
            observation, reward, done, info = env.step(" " + mine)
            theirs = labels[info["opponent_option"]]
            if observation is not None:
                assert observation.startswith(f"\nOther: {theirs}.")
            assert (reward["payoff"], reward["opponent_payoff"]) == table[(mine, theirs)]
            assert info["agent_option"] == labels.index(mine)
            assert info["agent_move"] == env.game.agent_cd(labels.index(mine))
    assert len(seen) > 10  # labels really vary ...
    assert len({labels[0] for labels in seen}) > 3  # ... including which label means option 0


def test_parse_rule():
    labels = ("J", "F")
    assert parse_answer(" J", labels) == 0 and parse_answer("f", labels) == 1 and parse_answer("F.", labels) == 1
    assert parse_answer("J because", labels) == 0
    for bad in ("", "   ", "JF", "maybe", "Jx", ".", "K"):
        assert parse_answer(bad, labels) is None, bad


def test_invalid_answers_are_counted_penalized_and_never_end_the_episode():
    env = RepeatedGameEnv(games=["pd"], opponents=["Cooperator"], rounds=4, invalid_move="D", invalid_penalty=2.0)
    env.reset(3)
    answers = ["garbage", "", " J", "JF J"]
    rewards, infos, observations = [], [], []
    for a in answers:
        observation, reward, done, info = env.step(a)
        rewards.append(reward)
        infos.append(info)
        observations.append(observation)
    assert [i["valid"] for i in infos] == [False, False, True, False]
    assert [i["agent_move"] for i in infos] == ["D", "D", "C", "D"]  # invalid -> D (defect)
    assert [r["payoff"] for r in rewards] == [5.0, 5.0, 3.0, 5.0]
    assert [r["gold"] for r in rewards] == [3.0, 3.0, 3.0, 3.0]  # payoff - penalty when invalid
    assert sum(r["invalid"] for r in rewards) == pytest.approx(0.75)
    assert "Invalid answer" in observations[0] and "Invalid answer" not in observations[2]
    assert done and observations[-1] is None and len(env.record.rounds) == 4
    bos = RepeatedGameEnv(games=["bos"], opponents=["Cooperator"], rounds=2)
    bos.reset(0)
    assert bos.step("??")[3]["agent_option"] == 0  # D in BoS: insist on one's own favourite (option 0)
    end = RepeatedGameEnv(games=["pd"], opponents=["Cooperator"], rounds=3, reward_timing="end")
    end.reset(0)
    golds = [end.step(a)[1]["gold"] for a in (" J", " F", " F")]
    assert golds == [0.0, 0.0, pytest.approx((3 + 5 + 5) / 3)]


def test_bad_settings_fail_with_valid_choices():
    with pytest.raises(ValueError, match="valid choices: pd, bos, sh, chicken"):
        RepeatedGameEnv(games=["pdd"])
    with pytest.raises(ValueError, match="valid choices: TitForTat"):
        RepeatedGameEnv(opponents=["TitForTwoTats"])
    with pytest.raises(ValueError, match="two distinct labels"):
        RepeatedGameEnv(labels=["J", "j"])
    with pytest.raises(ValueError, match=r"ZDExtort2 cannot play game 'bos' .* drop it or the game"):
        RepeatedGameEnv(games=["pd", "bos"], opponents=["TitForTat", "ZDExtort2"])  # before any reset()
    assert RepeatedGameEnv(games=["pd"], opponents=["ZDExtort2"]).reset(0)
    assert strategy_class("GrimTrigger") is strategy_class("Grudger")
    with pytest.raises(ConfigError, match="reward=gold"):
        validate(compose(["algo=ppo", "env=games", "reward=rm"]))
    with pytest.raises(ConfigError, match="must equal"):
        validate(compose(["algo=ppo", "env=games", "reward=gold", "env.rounds=7"]))
    with pytest.raises(ConfigError, match="valid choices: round, end"):
        validate(compose(["algo=ppo", "env=games", "reward=gold", "env.reward_timing=late"]))


@pytest.fixture(scope="module")
def tiny():
    """A tokenizer trained on the env's corpus and an untrained tiny model (no SFT needed here)."""
    from agents.models import build_tiny_lm
    from rlhf.warmstart import train_tokenizer

    env = RepeatedGameEnv(games=list(GAMES), opponents=["Random"])
    tokenizer = train_tokenizer(env.corpus(400, seed=1), 1024)
    torch.manual_seed(0)
    model_cfg = compose(["env=games", "reward=gold", "model.max_position_embeddings=256"]).model
    model = build_tiny_lm(model_cfg, tokenizer).eval()
    return tokenizer, model


def test_transcript_tokenizes_like_its_pieces(tiny):
    """SFT sees whole transcripts; rollouts see the pieces encoded one by one. They agree."""
    tokenizer, _ = tiny
    env = RepeatedGameEnv(games=list(GAMES), opponents=["Random"], randomize_labels=True)

    def enc(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    for seed in range(20):
        text = env.reset(seed)
        pieces = enc(text)
        for k in range(env.rounds):
            answer = " " + env.record.labels[k % 2]
            observation, _, done, _ = env.step(answer)
            text += answer + EOS
            pieces += enc(answer) + [tokenizer.eos_token_id]
            if not done:
                text += observation
                pieces += enc(observation)
        assert enc(text) == pieces
    prompt, response = RepeatedGameEnv().demonstrations(3, seed=0)[0]
    assert prompt.endswith(":") and response.strip() in ("J", "F")


def test_multiturn_masking_observation_tokens_carry_no_loss(tiny):
    """Episodes through the shared runner: masked spans are exactly the env's text (rules, then
    each round's outcome + question); the policy loss has zero gradient there."""
    from rlhf.functional import clipped_policy_loss, gae, token_logprobs
    from rlhf.rollout.batch import collate
    from rlhf.rollout.engine import HFEngine, SamplingParams
    from rlhf.rollout.runner import EpisodeRunner

    tokenizer, model = tiny
    observations: dict[int, list[str]] = {}

    class Recording(RepeatedGameEnv):
        def reset(self, seed):
            text = super().reset(seed)
            self.log = observations.setdefault(seed, [])
            self.log.append(text)
            return text

        def step(self, action_text):
            out = super().step(action_text)
            if out[0] is not None:
                self.log.append(out[0])
            return out

    envs = [Recording(games=["pd", "bos"], opponents=["TitForTat", "Random"]) for _ in range(6)]
    runner = EpisodeRunner(HFEngine(model, tokenizer), tokenizer, SamplingParams(max_new_tokens=3), max_turns=5,
                           max_total_tokens=model.config.max_position_embeddings)
    torch.manual_seed(1)
    episodes = runner.run(envs, list(range(6)))
    for ep, env in zip(episodes, envs):
        assert len(ep.turn_ends) == len(env.record.rounds) == 5 and ep.done
        spans, current, flag = [], [], ep.action_mask[0]
        for tok, m in zip(ep.token_ids, ep.action_mask):
            if m != flag:
                spans.append((flag, current))
                current, flag = [], m
            current.append(tok)
        spans.append((flag, current))
        masked = [ids for m, ids in spans if m == 0]
        assert masked == [tokenizer(t, add_special_tokens=False)["input_ids"] for t in observations[ep.seed]]
        assert all(lp == 0.0 for lp, m in zip(ep.logprobs, ep.action_mask) if m == 0)
    batch = collate(episodes, tokenizer.pad_token_id)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logp = token_logprobs(logits, batch.input_ids).detach().requires_grad_(True)
    rewards = torch.zeros_like(logp)
    rewards[batch.turn_end_mask.bool()] = torch.randn(int(batch.turn_end_mask.sum()))
    advantages, _ = gae(rewards, torch.randn_like(logp), batch.action_mask)
    loss, _ = clipped_policy_loss(logp, logp.detach() + 0.1 * torch.randn_like(logp), advantages, batch.action_mask)
    loss.backward()
    masked = batch.action_mask == 0
    assert torch.all(logp.grad[masked] == 0) and torch.any(logp.grad[~masked] != 0)
    assert torch.all(advantages[masked] == 0)


def record(game, agent_opts, opp_opts, valid=None) -> GameRecord:
    g = GAMES[game]
    rec = GameRecord(game, "hand", ("J", "F"))
    for k, (a, b) in enumerate(zip(agent_opts, opp_opts)):
        mine, theirs = g.score(a, b)
        rec.rounds.append(Round(a, b, mine, theirs, True if valid is None else valid[k], ""))
    return rec


def test_behaviour_metrics_by_hand():
    from rlhf.games_eval import behaviour

    # PD, options 0 = C, 1 = D. agent C C D C C, opponent C D C C D.
    m = behaviour([record("pd", [0, 0, 1, 0, 0], [0, 1, 0, 0, 1], valid=[True, True, True, False, True])])
    assert m["cooperation"] == pytest.approx(0.8) and m["mutual_cooperation"] == pytest.approx(0.4)
    assert m["forgiveness"] == 1.0  # opponent back to C at round 2 -> agent C at round 3
    assert m["retaliation"] == 1.0  # exploited at round 1 -> D at round 2 (round 4 has no next round)
    assert m["payoff"] == pytest.approx((3 + 0 + 5 + 3 + 0) / 5) and m["invalid"] == pytest.approx(0.2)
    unforgiving = behaviour([record("pd", [0, 1, 1, 1], [1, 0, 0, 0])])
    assert unforgiving["forgiveness"] == 0.0 and unforgiving["retaliation"] == 1.0
    assert math.isnan(behaviour([record("pd", [0, 0], [0, 0])])["forgiveness"])
    # BoS: coordinated on 0, 1, 0, then miscoordinated: alternation 2/2, coordination 3/4.
    b = behaviour([record("bos", [0, 1, 0, 0], [0, 1, 0, 1])])
    assert b["coordination"] == pytest.approx(0.75) and b["alternation"] == 1.0
    stuck = behaviour([record("bos", [0, 0, 0], [0, 0, 0])])
    assert stuck["alternation"] == 0.0 and stuck["payoff"] == 10.0


def test_strategy_entries_of_the_tournament_are_axelrod_matches():
    from rlhf.games_eval import strategy_vs_strategy

    assert strategy_vs_strategy("TitForTat", "Defector", "pd", 5, 2) == (pytest.approx(4 / 5), pytest.approx(9 / 5))
    assert strategy_vs_strategy("Cooperator", "Cooperator", "sh", 5, 1) == (4.0, 4.0)
    assert strategy_vs_strategy("Defector", "Cooperator", "bos", 4, 1) == (10.0, 7.0)  # insist vs accommodate


def test_llm_vs_llm_views_agree(tiny):
    from rlhf.games_eval import play_llm_vs_llm

    tokenizer, model = tiny
    cfg = compose(["env=games", "reward=gold", "rollout.max_new_tokens=3"])
    for game in ("pd", "bos"):
        a, b = play_llm_vs_llm(model, model, tokenizer, cfg, game, n=4)
        for ra, rb in zip(a, b):
            assert len(ra.rounds) == len(rb.rounds) == cfg.env.rounds
            am, ao = ra.moves()
            bm, bo = rb.moves()
            assert am == bo and ao == bm
            assert [(x.agent_payoff, x.opponent_payoff) for x in ra.rounds] == \
                [(y.opponent_payoff, y.agent_payoff) for y in rb.rounds]


# The warm start of the claim's --quick mode (shared cache): 4,000 demonstrations, one epoch.
SMALL_GAMES = ["algo=ppo", "env=games", "reward=gold", "model.sft.demonstrations=4000", "model.sft.epochs=1",
               "model.tokenizer.corpus_size=4000", "train.prompts_per_step=4", "eval.prompts=4",
               "rollout.max_new_tokens=3", "train.steps=2"]


@pytest.mark.slow
def test_ppo_and_p3o_train_on_games_and_evaluate_behaviour(train_run):
    from rlhf.evaluate import main as evaluate
    from rlhf.logger import read_scalars

    run_dir = train_run(SMALL_GAMES, "ppo")
    scalars = read_scalars(run_dir)
    for tag in ("env/games/payoff", "env/games/cooperation", "env/games/invalid", "objective/gold", "eval/cooperation"):
        assert tag in scalars, tag
    assert all(1.0 <= v <= 5.0 for _, v in scalars["env/games/rounds"])
    p3o_dir = train_run(["algo=p3o", *SMALL_GAMES[1:], "train.steps=1", "train.prompts_per_step=2"], "p3o")
    p3o = read_scalars(p3o_dir)
    assert "loss/policy" in p3o and "env/games/payoff" in p3o
    metrics = evaluate([f"run={run_dir}", "env.eval_games=[pd,bos]", "env.eval_opponents=[TitForTat,Defector]",
                        "env.eval_games_per_pair=2", f"env.eval_rivals=[{p3o_dir}]"])
    for key in ("policy/pd/TitForTat/cooperation", "init/bos/Defector/coordination", "policy/pd/vs_init/payoff",
                "policy/bos/vs_p3o/coordination", "tournament/pd/TitForTat/mean", "tournament/pd/p3o/rank", "kl"):
        assert key in metrics, key
    out = run_dir / "games_eval"
    table = json.loads((out / "step_000002.json").read_text().replace("NaN", "null"))
    assert table["tournament"]["pd"]["players"] == ["policy", "init", "p3o", "TitForTat", "Defector"]
    assert table["tournament"]["pd"]["payoff"][3][4] == pytest.approx(4 / 5)  # TFT vs Defector, 5 rounds
    assert (out / "behaviour_step_000002.png").stat().st_size > 1000
    assert (out / "tournament_step_000002.png").stat().st_size > 1000
    assert "| rank | player |" in (out / "step_000002.md").read_text()


@pytest.mark.slow
def test_quick_games_cooperation_claim(tmp_path):
    out = tmp_path / "games"
    result = subprocess.run([sys.executable, "-m", "rlhf.reproduce", "games_cooperation", "--quick", "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert re.search(r"\*\*Verdict:\*\* (NOT REPRODUCED|REPRODUCED|INCONCLUSIVE): .+ measured: TitForTat", report)
    assert "## Criterion history" in report and "cooperation 0.57 -> 0.79" in report
    assert (out / "cooperation_vs_step.png").stat().st_size > 1000
    from rlhf.logger import read_scalars
    from rlhf.reproduce.claims.games_cooperation import best_reply
    from rlhf.reproduce.claims.games_reciprocity import effect

    runs = {r["name"]: Path(r["run_dir"]) for r in json.loads((out / "results.json").read_text())["runs"]}
    logged = read_scalars(runs["ppo-TitForTat-s0"])
    row = next(line for line in report.splitlines() if line.startswith("| TitForTat |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[1]) == pytest.approx(logged["eval/cooperation"][0][1], abs=5e-3)
    assert float(cells[2]) == pytest.approx(logged["eval/cooperation"][-1][1], abs=5e-3)
    # the verdict's effect for Defector's payoff, recomputed from the per-game evaluation samples
    last = int(read_scalars(runs["ppo-Defector-s0"])["eval/payoff"][-1][0])

    def games(step):
        rows = (runs["ppo-Defector-s0"] / "eval" / f"samples_step_{step:06d}.jsonl").read_text().splitlines()
        return np.array([[r["payoff"] / 5 for r in sorted(map(json.loads, rows), key=lambda r: r["seed"])]])

    best = best_reply("Defector")[1]
    warm, trained = games(0), games(last)
    e = effect("Defector payoff/round", np.sign(best - warm.mean()) * (trained - (warm + best) / 2))
    assert f"Defector payoff/round: trained - (warm start + best reply 1.00) / 2, towards the best reply: " \
           f"{e.estimate:+.4f} [95% CI {e.low:+.4f}, {e.high:+.4f}]" in report
