"""`python -m rlhf.reproduce.table`: the README's claims table is written from reports."""
import json

import pytest

from rlhf.reproduce.table import BEGIN, END, build, main

README = f"""# x

{BEGIN}
| claim | paper's claim tested | budget | latest verdict |
|---|---|---|---|
| `p3o_frontier` | old words | 12 runs | NOT REPRODUCED: hand-typed |
{END}

after
"""


def write(repro, name, **extra):
    (repro / name).mkdir(parents=True)
    result = {"claim": name, "quick": False, "outcome": "INCONCLUSIVE", "statement": "A beats B",
              "measured": "A - B +0.100 [-0.020, +0.230]", "minutes": 12.5, "runs": [{}] * 9, **extra}
    (repro / name / "results.json").write_text(json.dumps(result))


def test_rows_come_from_reports_and_other_rows_are_kept(tmp_path):
    write(tmp_path, "bcoder_code", history=["first criterion: INCONCLUSIVE"], doc="docs/bcoder.md")
    write(tmp_path, "mcts_dpo", quick=True)  # a quick run never reaches the README
    messages = []
    new = build(README, tmp_path, log=messages.append)
    assert new.startswith("# x\n") and new.endswith(f"{END}\n\nafter\n")
    bcoder = next(line for line in new.splitlines() if line.startswith("| `bcoder_code`"))
    assert "9 runs, 12.5 min" in bcoder and "**INCONCLUSIVE**: A - B +0.100 [-0.020, +0.230]" in bcoder
    assert "criterion revised 1x" in bcoder and "(docs/bcoder.md)" in bcoder
    assert "| `p3o_frontier` | old words | 12 runs | NOT REPRODUCED: hand-typed |" in new
    assert "`mcts_dpo`" not in new and any("mcts_dpo" in m and "no full report" in m for m in messages)
    assert build(new, tmp_path, log=lambda m: None) == new  # idempotent


def test_check_flags_a_stale_readme_and_missing_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    write(tmp_path / "repro", "bcoder_code")
    args = ["--repro", str(tmp_path / "repro"), "--readme", str(readme)]
    assert main([*args, "--check"]) == 1
    assert main(args) == 0 and main([*args, "--check"]) == 0
    readme.write_text("no table here")
    with pytest.raises(SystemExit, match="no claims table markers"):
        main(args)


def test_a_reanalysis_keeps_the_wall_time_of_the_sweep_that_trained(tmp_path):
    from rlhf.reproduce import previous_minutes

    assert previous_minutes(tmp_path) is None
    (tmp_path / "report.md").write_text("Runs: 9 (full sweep), wall time 14.2 min. Every number")
    assert previous_minutes(tmp_path) == 14.2
    (tmp_path / "results.json").write_text(json.dumps({"minutes": 9.5}))
    assert previous_minutes(tmp_path) == 9.5


def test_sweep_runs_get_tensorboard_hparams(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rlhf.reproduce import RunSpec, write_hparams

    run_dir = tmp_path / "p3o-s0"
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "eval" / "step_000040.json").write_text(json.dumps({"step": 40, "gold": 0.7, "kl": 3.5}))
    spec = RunSpec("p3o-s0", "p3o", ["algo=p3o", "seed=0"], {"seed": 0, "kl_coef": 0.05})
    write_hparams(spec, run_dir)
    write_hparams(spec, run_dir)  # once per run directory
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    assert events.Scalars("hparams/gold")[0].value == pytest.approx(0.7)
    assert len(events.Scalars("hparams/kl")) == 1
    plugin = events.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugin and b"kl_coef" in plugin["_hparams_/session_start_info"]
