"""Checkpoints: resume is exact, kill -9 loses at most the steps since the last checkpoint,
and `python -m rlhf.evaluate` scores a run directory."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlhf import checkpoint as ckpt
from tests.conftest import SMALL, read_scalars

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("algo", ["p3o", "ppo"])
def test_resume_equals_uninterrupted(train_run, algo):
    """train(4) and train(2) + resume + train(2) end with the same weights (max |diff| <= 1e-5)
    and log the same scores at steps 3 and 4."""
    common = SMALL + [f"algo={algo}", "train.checkpoint_every=2"]
    straight = train_run(common + ["train.steps=4"], "straight")
    split = train_run(common + ["train.steps=2"], "split")
    assert ckpt.latest_checkpoint(split).name == "step_000002"
    train_run(common + ["train.steps=4", f"train.resume={split}"], "split")
    a = torch.load(ckpt.latest_checkpoint(straight) / "policy.pt")
    b = torch.load(ckpt.latest_checkpoint(split) / "policy.pt")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    sa, sb = read_scalars(straight), read_scalars(split)
    for tag in ("objective/scores", "objective/gold", "objective/kl"):
        tail_a = [v for s, v in sa[tag] if s > 2]
        tail_b = [v for s, v in sb[tag] if s > 2]
        assert len(tail_a) == len(tail_b) == 2
        assert tail_a == pytest.approx(tail_b, abs=1e-5), tag


@pytest.mark.slow
def test_checkpoint_is_atomic_under_kill9(tmp_path):
    """kill -9 during a run: the latest checkpoint is complete and resumes from its step."""
    run_dir = tmp_path / "killed"
    args = [sys.executable, "-m", "rlhf.train", *SMALL, "train.steps=200", "train.checkpoint_every=1",
            f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            found = ckpt.latest_checkpoint(run_dir)
            if found is not None and found.name >= "step_000003":
                break
            time.sleep(0.2)
        else:
            pytest.fail("no third checkpoint within 240 s")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    latest = ckpt.latest_checkpoint(run_dir)
    state, modules = ckpt.load_checkpoint(latest)
    assert state["step"] == int(latest.name.split("_")[1]) >= 3 and "policy" in modules
    assert (latest / "hf" / "config.json").exists()
    resumed = subprocess.run([sys.executable, "-m", "rlhf.train", *SMALL, f"train.steps={state['step'] + 1}",
                              "train.resume=true", f"hydra.run.dir={run_dir}"], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"[resume] from {latest} at step {state['step']}" in resumed.stdout + resumed.stderr
    assert ckpt.latest_checkpoint(run_dir).name == f"step_{state['step'] + 1:06d}"


def test_evaluate_cli_scores_a_run(train_run):
    run_dir = train_run(SMALL + ["train.steps=2"], "evaluated")
    result = subprocess.run([sys.executable, "-m", "rlhf.evaluate", f"run={run_dir}", "eval.prompts=4"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((run_dir / "eval" / "step_000002.json").read_text())
    for key in ("gold", "proxy", "kl", "response_length", "distinct_1", "distinct_2"):
        assert key in report and report[key] == report[key]  # present and not NaN
    assert 0.0 <= report["gold"] <= 1.0 and report["response_length"] > 0
    assert "eval/gold" in read_scalars(run_dir)
    bad = subprocess.run([sys.executable, "-m", "rlhf.evaluate", f"run={run_dir}", "eval.promptz=4"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "valid keys under 'eval'" in bad.stderr
