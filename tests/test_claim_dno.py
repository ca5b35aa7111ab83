"""The quick `dno_self_improvement` claim end to end: a three-valued verdict whose effects and
intervals are recomputed here from the runs' logs (the held-out samples of every iterate)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from envs.preference import PreferenceOracle
from rlhf.logger import read_scalars
from rlhf.reproduce.stats import paired_effect


def prompts(run_dir: Path, step: int) -> list[list[dict]]:
    rows = [json.loads(line) for line in (run_dir / "eval" / f"samples_step_{step:06d}.jsonl").read_text().splitlines()]
    return [[r for r in rows if r["seed"] == seed] for seed in sorted({r["seed"] for r in rows})]


def win_rates(run_dir: Path, step: int, key: str = "win_rate_vs_initial") -> np.ndarray:
    return np.array([np.mean([r[key] for r in group]) for group in prompts(run_dir, step)])


@pytest.mark.slow
def test_quick_dno_claim_reports_intervals_from_the_logs(tmp_path):
    out = tmp_path / "dno"
    result = subprocess.run([sys.executable, "-m", "rlhf.reproduce", "dno_self_improvement", "--quick", "--out", str(out)],
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (out / "report.md").read_text()
    summary = json.loads((out / "results.json").read_text())
    assert summary["outcome"] in ("REPRODUCED", "NOT REPRODUCED", "INCONCLUSIVE")
    assert f"**Verdict:** {summary['outcome']}: " in report
    assert "## Criterion history" in report and "head-to-head DNO vs PPO-on-BT 0.478" in report
    assert (out / "win_rate_vs_iteration.png").stat().st_size > 1000
    runs = {r["name"]: Path(r["run_dir"]) for r in summary["runs"]}

    # the table row is the logged curve, and the samples' per-prompt win rates average to it
    gold = runs["dno-gold-s0"]
    logged = [v for _, v in read_scalars(gold)["dno/win_rate_vs_initial"]]
    row = next(line for line in report.splitlines() if line.startswith("| DNO, gold |"))
    assert [float(x) for x in row.strip("|").split("|")[1:-1]] == pytest.approx(logged, abs=5e-4)
    assert [win_rates(gold, t).mean() for t in range(len(logged))] == pytest.approx(logged, abs=1e-6)

    def reported(effect):  # the effect's line in the report, with the outcome its interval gives
        start = f"- {effect.name}: {effect.estimate:+.4f} [95% CI {effect.low:+.4f}, {effect.high:+.4f}] "
        return any(line.startswith(start) and line.endswith(f"-> {effect.outcome}") for line in report.splitlines())

    # part 1: an iteration's gain, recomputed from the samples (one seed: [1, prompts])
    gain = paired_effect("gold: W(pi_3) - W(pi_2)", win_rates(gold, 2)[None], win_rates(gold, 1)[None])
    assert reported(gain)
    # part 2: the head-to-head against DNO-Restrictive, from the two runs' final samples under the oracle
    oracle = PreferenceOracle("intransitive")
    feats = lambda group: [oracle.features(r["response"]) for r in group]  # noqa: E731
    h2h = np.array([oracle.prob(feats(a), feats(b)).mean() for a, b in
                    zip(prompts(runs["dno-intransitive-s0"], 2), prompts(runs["restrictive-s0"], 2))])
    beats = paired_effect("P(DNO > DNO-Restrictive) - 1/2 after 2 iterations", h2h[None], np.full((1, len(h2h)), 0.5))
    assert reported(beats)
    # the PPO finding: the evaluation's per-sample head-to-head averages to its logged win rate
    h2h_run = runs["head-to-head-s0"]
    assert win_rates(h2h_run, 2, "win_rate_vs_opponent").mean() == pytest.approx(
        read_scalars(h2h_run)["eval/dno/win_rate_vs_opponent"][-1][1], abs=1e-6)
