"""`python -m rlhf.evaluate run=<a> run=<b> suite=<envs>`: every run on every env of the suite,
with its SFT reference as a baseline row, and pairs that cannot run listed as skipped."""
import csv
import json

import pytest
import torch

from rlhf.checkpoint import save_checkpoint
from rlhf.config import compose
from tests.conftest import SMALL


def control_run(tmp_path):
    """A checkpoint of a control algorithm (C-MORL on MO-Gymnasium): no text interface."""
    from omegaconf import OmegaConf

    cfg = compose(["algo=cmorl", "env=mo"])
    save_checkpoint(tmp_path / "cmorl-run", 1, {"step": 1, "config": OmegaConf.to_container(cfg, resolve=True)},
                    {"net": torch.nn.Linear(1, 1)}, keep=1)
    return tmp_path / "cmorl-run"


@pytest.mark.slow
def test_two_runs_two_envs_table_with_baselines_and_a_skipped_pair(train_run, tmp_path):
    from rlhf.evaluate import main

    lm = train_run(["algo=p3o", *SMALL, "train.steps=1", "eval.at_start=false"], "p3o-run")
    out = tmp_path / "suite"
    main([f"run={lm}", f"run={control_run(tmp_path)}", "suite=text,math", f"out={out}", "eval.prompts=2",
          "eval.samples_per_prompt=1"])
    rows = json.loads((out / "suite.json").read_text())
    policies = {(r["policy"], r["env"]) for r in rows["rows"]}
    assert policies == {(p, e) for p in ("p3o-run", "p3o-run (SFT reference)") for e in ("text", "math")}
    for row in rows["rows"]:
        assert "gold" in row and "distinct_2" in row and row["step"] == 1
        if row["baseline"]:
            assert abs(row["kl"]) < 1e-4  # the reference against itself
    assert {(s["run"], s["env"]) for s in rows["skipped"]} == {("cmorl-run", "text"), ("cmorl-run", "math")}
    assert all("acts only in its own environment" in s["reason"] for s in rows["skipped"])
    table = (out / "suite.md").read_text()
    assert "## env=text" in table and "## env=math" in table and "| p3o-run (SFT reference) |" in table
    assert "- cmorl-run on env=math: a control policy (algo=cmorl, env=mo)" in table
    with open(out / "suite.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    assert (out / "suite_gold.png").stat().st_size > 5000 and (out / "suite_distinct_2.png").exists()


def test_bad_suite_and_missing_run_fail_before_loading(tmp_path):
    from rlhf.evaluate import suite_main

    (tmp_path / "r" / "checkpoints").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"suite=atari: unknown env\(s\) atari; valid choices: lm, reasoning"):
        suite_main([f"run={tmp_path / 'r'}", "suite=atari"])
    with pytest.raises(SystemExit, match="no such directory"):
        suite_main([f"run={tmp_path / 'missing'}", "suite=lm"])
