"""Claim `games_reciprocity`: the exact references and per-game measures it decides with, and the
quick claim end to end (a three-valued verdict whose numbers are recomputed here from the
behavioural evaluations' per-game moves)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("axelrod")

from rlhf.reproduce.claims import games_reciprocity as claim  # noqa: E402


def test_exact_references():
    """Best replies over 5 known rounds, and the Bayes-optimal reply to an unknown opponent from the
    training population: probe with C, then defect against a first-round defector and cooperate
    until the last round with Tit For Tat and Grudger."""
    pool = claim.POPULATION
    assert claim.reference(("TitForTat",), "TitForTat")["by_round"] == [1, 1, 1, 1, 0]
    assert claim.reference(("Defector",), "Defector")["payoff"] == pytest.approx(1.0)
    assert claim.reference(("Random",), "Random")["payoff"] == pytest.approx(3.0)  # always D: (5 + 1) / 2
    assert claim.reference(pool, "Defector")["by_round"] == [1, 0, 0, 0, 0]
    for name in ("TitForTat", "Grudger"):
        assert claim.reference(pool, name)["by_round"] == [1, 1, 1, 1, 0]
    # expected total payoff of the Bayes-optimal reply = mean over the pool of its payoff against each
    total = claim.reply(pool)[0]
    assert total == pytest.approx(np.mean([claim.reference(pool, o)["payoff"] for o in pool]) * claim.ROUNDS)


def test_per_game_measures():
    assert claim.not_first_defector("CCCCD", "CCCCC") == 1.0  # last round only
    assert claim.not_first_defector("CCDDD", "CCCDD") == 0.0
    assert claim.not_first_defector("CDDDD", "DDDDD") == 1.0  # the opponent defected first
    assert claim.not_first_defector("DCCCC", "DCCCC") == 1.0  # simultaneous: not first
    assert claim.mutual_before_last("CCDDD", "CCCDD") == 0.5
    assert claim.defects_after_first("CDDCD", "DDDDD") == 0.75
    assert claim.payoff_of("CD", "CC") == pytest.approx(4.0)


@pytest.mark.slow
def test_quick_games_reciprocity_claim(tmp_path):
    out = tmp_path / "games_reciprocity"
    result = subprocess.run([sys.executable, "-m", "rlhf.reproduce", "games_reciprocity", "--quick", "--out", str(out)],
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (out / "report.md").read_text()
    summary = json.loads((out / "results.json").read_text())
    assert summary["outcome"] in ("REPRODUCED", "NOT REPRODUCED", "INCONCLUSIVE")
    assert f"**Verdict:** {summary['outcome']}: " in report
    for png in ("behaviour_per_opponent.png", "cooperation_per_round.png"):
        assert (out / png).stat().st_size > 1000
    runs = {r["name"]: Path(r["run_dir"]) for r in summary["runs"]}
    tables = {arm: json.loads(sorted((runs[f"behaviour-{arm}-s0"] / "games_eval").glob("step_*.json"))[-1].read_text())
              for arm in claim.ARMS}
    # every training and held-out opponent was played, and the per-game moves agree with the
    # evaluation's own aggregate (rlhf/games_eval.behaviour)
    pd = tables["population"]["games"]["policy"]["pd"]
    assert set(pd) == {*claim.POPULATION, *claim.HELD_OUT}
    for opp, rows in pd.items():
        aggregate = tables["population"]["behaviour"]["policy"]["pd"][opp]
        assert claim.pooled_rates(rows)["cooperation"] == pytest.approx(aggregate["cooperation"])
        assert claim.pooled_rates(rows)["payoff"] == pytest.approx(aggregate["payoff"])
        assert all(claim.payoff_of(g["agent"], g["opponent"]) * len(g["agent"]) == pytest.approx(g["payoff"])
                   for g in rows)
    # the verdict's Defector effect, recomputed from the moves
    defect = np.mean([claim.defects_after_first(g["agent"], g["opponent"]) for g in pd["Defector"]])
    line = next(x for x in report.splitlines() if x.startswith("- population vs Defector: defection"))
    assert f": {defect:+.4f} [95% CI " in line and line.endswith(("REPRODUCED", "INCONCLUSIVE"))
    # the warm start is evaluated once, beside the first population run only
    assert "init" in tables["population"]["games"] and "init" not in tables["tft"]["games"]
