"""`python -m rlhf.reproduce`: --list, a --quick claim end to end, and a report whose
numbers are the runs' own TensorBoard values."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.logger import read_scalars
from rlhf.reproduce.plots import envelope_at, upper_envelope

REPO = Path(__file__).resolve().parents[1]


def reproduce(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf.reproduce", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def test_list_and_unknown_claim():
    listed = reproduce("--list")
    assert listed.returncode == 0 and "p3o_frontier" in listed.stdout
    bad = reproduce("p3o_frontierz")
    assert bad.returncode != 0 and "valid choices: " in bad.stderr and "p3o_frontier" in bad.stderr


def test_upper_envelope_by_hand():
    points = [(2.0, 0.5), (1.0, 0.6), (3.0, 0.9), (0.5, 0.2), (4.0, 0.8)]
    assert upper_envelope(points) == [(0.5, 0.2), (1.0, 0.6), (3.0, 0.9)]
    assert envelope_at(points, [0.4, 0.7, 2.5, 10.0])[1:] == [0.2, 0.6, 0.9]


def test_parallel_sweep_fails_with_the_run_error(tmp_path):
    """Claim.workers > 1: a run that fails in a worker process fails the sweep with its own
    error, which names the bad value and the valid choices."""
    from rlhf.reproduce import RunSpec, execute_parallel

    specs = [RunSpec(f"bad-{i}", "x", ["algo=nonexistent"]) for i in range(3)]
    with pytest.raises(Exception, match=r"(?s)algo/nonexistent.*Available options.*ppo"):
        execute_parallel(specs, tmp_path / "runs", workers=2)


def record_interval(i, total, spec, runs_dir):
    """A stand-in run for the parallel scheduler test: sleeps and records when it ran."""
    import time

    from rlhf.reproduce import RunResult

    start = time.time()
    time.sleep(0.6)
    (runs_dir / f"{spec.name}.json").write_text(json.dumps([start, time.time()]))
    return RunResult(spec, runs_dir, {}, time.time() - start)


def test_parallel_sweep_starts_an_evaluation_after_its_run(tmp_path):
    from rlhf.reproduce import RunSpec, execute_parallel

    specs = [RunSpec("train-a", "x", []), RunSpec("eval-a", "x", [], evaluate="train-a"),
             RunSpec("train-b", "x", []), RunSpec("train-c", "x", [])]
    results = execute_parallel(specs, tmp_path, workers=2, execute_one=record_interval)
    assert [r.spec.name for r in results] == ["train-a", "eval-a", "train-b", "train-c"]
    when = {s.name: json.loads((tmp_path / f"{s.name}.json").read_text()) for s in specs}
    assert when["eval-a"][0] >= when["train-a"][1]  # the evaluation waited for its run
    assert when["train-b"][0] < when["train-a"][1]  # ...while another run used the second worker
    with pytest.raises(ValueError, match=r"not in the sweep: \['missing'\]"):
        execute_parallel([RunSpec("e", "x", [], evaluate="missing")], tmp_path, 2, record_interval)


@pytest.mark.slow
def test_quick_oreo_claim_reports_intervals_from_per_problem_samples(tmp_path):
    from rlhf.reproduce.claims.oreo_reasoning import outcomes, samples

    out = tmp_path / "oreo"
    result = reproduce("oreo_reasoning", "--quick", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert re.search(r"\*\*Verdict:\*\* (NOT REPRODUCED|REPRODUCED|INCONCLUSIVE): .+ measured: OREO - RFT", report)
    assert "95% CI" in report
    for png in ("accuracy_per_method.png", "accuracy_vs_beams.png", "calibration.png"):
        assert (out / png).stat().st_size > 1000
    runs = {r["name"]: Path(r["run_dir"]) for r in json.loads((out / "results.json").read_text())["runs"]}
    # the table's OREO accuracy is the mean of the run's own per-problem samples, which match its logged eval
    oreo = outcomes(samples(runs["oreo-s0"]))
    assert oreo.mean() == pytest.approx(read_scalars(runs["oreo-s0"])["eval/accuracy"][-1][1], abs=1e-6)
    row = next(line for line in report.splitlines() if line.startswith("| OREO |"))
    assert float(row.strip("|").split("|")[1]) == pytest.approx(oreo.mean(), abs=5e-4)
    assert json.loads((out / "results.json").read_text())["outcome"] in ("REPRODUCED", "NOT REPRODUCED", "INCONCLUSIVE")


@pytest.mark.slow
def test_quick_mcts_dpo_claim_reports_intervals(tmp_path):
    out = tmp_path / "mcts"
    result = reproduce("mcts_dpo", "--quick", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert re.search(r"\*\*Verdict:\*\* (NOT REPRODUCED|REPRODUCED|INCONCLUSIVE): .+ measured: MCTS-DPO after", report)
    assert "C = 0 ablation" in report and "95% CI" in report and "nan" not in report
    for png in ("accuracy_vs_iteration.png", "accuracy_per_method.png"):
        assert (out / png).stat().st_size > 1000


def test_a_finished_run_is_reused_only_with_the_same_settings_and_code(tmp_path, monkeypatch):
    """A claim re-run after a code change must not silently reuse runs trained on the old code
    (mario_reptile once mixed such runs into a verdict)."""
    import rlhf.train
    from rlhf import reproduce

    trained = []

    def fake_run(cfg, run_dir):
        trained.append(int(cfg.train.steps))
        (run_dir / "eval").mkdir(parents=True)
        (run_dir / "eval" / "step_000001.json").write_text("{}")

    monkeypatch.setattr(rlhf.train, "run", fake_run)
    one, two = reproduce.RunSpec("a", "arm", ["train.steps=1"]), reproduce.RunSpec("a", "arm", ["train.steps=2"])
    assert not reproduce.execute(one, tmp_path).reused
    assert reproduce.execute(one, tmp_path).reused  # same overrides, same code
    assert not reproduce.execute(two, tmp_path).reused  # other settings: moved aside, trained again
    assert (tmp_path / "a.stale-1" / "eval").is_dir()
    monkeypatch.setattr(reproduce, "training_code_digest", lambda: "other code")
    assert not reproduce.execute(two, tmp_path).reused  # other training code
    assert reproduce.execute(two, tmp_path).reused
    (tmp_path / "a" / reproduce.RUN_RECORD).unlink()  # a run made before runs were recorded
    assert not reproduce.execute(two, tmp_path).reused
    assert trained == [1, 2, 2, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "a.stale-1", "a.stale-2", "a.stale-3"]


def test_the_training_code_digest_ignores_the_claims_analysis():
    from rlhf import reproduce

    before = reproduce.training_code_digest()
    claim = Path(reproduce.__file__).parent / "claims" / "p3o_frontier.py"
    text = claim.read_text()
    try:
        claim.write_text(text + "\n# an analysis-only edit\n")
        assert reproduce.training_code_digest() == before
    finally:
        claim.write_text(text)


@pytest.mark.slow
def test_quick_alfworld_oreo_claim_reports_intervals_from_per_game_samples(tmp_path):
    pytest.importorskip("alfworld", reason="needs the alfworld extra: pip install -e '.[alfworld]'")
    from rlhf.reproduce.claims.alfworld_oreo import samples, success

    out = tmp_path / "alfworld_oreo"
    result = reproduce("alfworld_oreo", "--quick", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert re.search(r"\*\*Verdict:\*\* (NOT REPRODUCED|REPRODUCED|INCONCLUSIVE): .+ measured: OREO - SFT", report)
    for png in ("success_per_method.png", "ppo_success_vs_phase.png"):
        assert (out / png).stat().st_size > 1000
    runs = {r["name"]: Path(r["run_dir"]) for r in json.loads((out / "results.json").read_text())["runs"]}
    # every answer was an admissible command, and the table's numbers are the runs' own per-game samples
    for name in ("oreo-s0", "rft-s0", "ppo-s0", "oreo-seen-s0"):
        assert read_scalars(runs[name])["eval/invalid_rate"][-1][1] == 0.0
    oreo = success(samples(runs["oreo-s0"]))
    assert oreo.mean() == pytest.approx(read_scalars(runs["oreo-s0"])["eval/success"][-1][1], abs=1e-6)
    row = next(line for line in report.splitlines() if line.startswith("| OREO |"))
    assert float(row.strip("|").split("|")[1]) == pytest.approx(oreo.mean(), abs=5e-4)
