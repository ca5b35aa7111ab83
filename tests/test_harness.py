"""The run harness on a toy job (no model, no env): what it promises every algorithm.

A job's private generators and the global RNGs come back on resume, a pause with
train.stop_after leaves a checkpoint at that step, `algo.threads` holds while the job runs
and the caller's setting comes back, reserved state keys are refused, and the per-job
keep_checkpoints hook decides what stays on disk.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from rlhf import harness
from rlhf.checkpoint import latest_checkpoint, load_checkpoint


def config(**train) -> OmegaConf:
    return OmegaConf.create({
        "algo": {"name": "toy", "threads": 1}, "env": {"name": "none"}, "eval": {"every": 0},
        "train": {"steps": 6, "checkpoint_every": 0, "keep_checkpoints": 1, "resume": None, "log_every": 1,
                  "stop_after": None, **train}})


class Toy(harness.Job):
    """Each step draws from a private generator and from every global RNG into a weight."""

    def __init__(self, cfg, run_dir, keep: int | None = None):
        super().__init__(cfg, run_dir)
        self.weight = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.zeros_(self.weight.weight)
        self.private = random.Random(7)
        self.draws: list[float] = []
        self.threads_seen: list[int] = []
        self.keep = keep

    def step(self):
        x = self.private.random() + random.random() + float(np.random.rand()) + float(torch.rand(()))
        with torch.no_grad():
            self.weight.weight += x
        self.draws.append(x)
        self.threads_seen.append(torch.get_num_threads())
        return {"toy/x": x}

    def modules(self):
        return {"weight": self.weight}

    def generators(self):
        return {"private": self.private}

    @property
    def keep_checkpoints(self) -> int:
        return self.keep if self.keep is not None else super().keep_checkpoints


def fresh(cfg, run_dir, **kw) -> Toy:
    harness.seed_everything(0)
    return Toy(cfg, run_dir, **kw)


def test_pause_and_resume_equal_one_go(tmp_path):
    whole = fresh(config(), tmp_path / "whole")
    harness.run(whole)
    first = fresh(config(stop_after=2), tmp_path / "paused")
    harness.run(first)
    assert load_checkpoint(latest_checkpoint(tmp_path / "paused"))[0]["step"] == 2
    harness.seed_everything(123)  # the resumed process starts from other global RNG states
    second = Toy(config(resume=True), tmp_path / "paused")
    second.private.seed(999)  # and another private generator state: the checkpoint must restore both
    harness.run(second)
    assert first.draws + second.draws == pytest.approx(whole.draws, abs=0)
    assert torch.equal(second.weight.weight, whole.weight.weight)


def test_algo_threads_hold_during_the_run_and_the_caller_gets_its_own_back(tmp_path):
    torch.set_num_threads(2)
    job = fresh(config(steps=2), tmp_path)
    harness.run(job)
    assert job.threads_seen == [1, 1]
    assert torch.get_num_threads() == 2


def test_reserved_state_keys_are_refused(tmp_path):
    job = fresh(config(steps=1), tmp_path)
    job.state_dict = lambda: {"rng": 1}
    with pytest.raises(KeyError, match="reserved keys"):
        harness.run(job)


@pytest.mark.parametrize("keep, kept", [(None, 1), (6, 6)])
def test_keep_checkpoints_hook(tmp_path, keep, kept):
    harness.run(fresh(config(checkpoint_every=1), tmp_path, keep=keep))
    assert len(list((tmp_path / "checkpoints").glob("step_*"))) == kept


def test_resume_without_a_checkpoint_names_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "empty")):
        harness.run(fresh(config(resume=True), tmp_path / "empty"))


class Scored(Toy):
    """A Toy whose evaluation draws from every global RNG, as sampling an evaluation does."""

    def evaluate(self):
        return {"score": random.random() + float(np.random.rand()) + float(torch.rand(()))}


def test_evaluation_at_start_and_end_and_it_never_changes_training_draws(tmp_path):
    from rlhf.logger import read_scalars

    harness.seed_everything(0)  # eval.every 0: at step 0 (eval.at_start) and at the end
    plain = Scored(config(), tmp_path / "plain")
    harness.run(plain)
    assert [x for x, _ in read_scalars(tmp_path / "plain")["eval/score"]] == [0, 6]
    cfg = config()
    cfg.eval = {"every": 2, "at_start": False}
    harness.seed_everything(0)
    often = Scored(cfg, tmp_path / "often")
    harness.run(often)
    assert [x for x, _ in read_scalars(tmp_path / "often")["eval/score"]] == [2, 4, 6]
    assert often.draws == plain.draws  # evaluating more often drew nothing from training's RNGs


def test_the_final_evaluation_prints_the_start_beside_it(tmp_path, caplog):
    import json
    import logging

    harness.seed_everything(0)
    job = Scored(config(), tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="rlhf"):
        harness.run(job)
    start = json.loads((tmp_path / "run" / "eval" / "start.json").read_text())["score"]
    final = json.loads((tmp_path / "run" / "eval" / "step_000006.json").read_text())["score"]
    assert f"[eval] held out, before training -> after step 6: score {start:.4g} -> {final:.4g}" in caplog.text
    assert harness.before_after({"kl": 0.0, "gold": 0.5, "x": 1}, {"gold": 0.7, "kl": 2.0, "x": 3}, 9) == \
        "[eval] held out, before training -> after step 9: gold 0.5 -> 0.7 | kl 0 -> 2 | x 1 -> 3"


def test_a_resume_after_a_kill_reads_as_one_clean_series_in_tensorboard(tmp_path):
    """A killed run has logged steps past its last checkpoint; the resumed run re-logs them.
    TensorBoard's own reader must see each step once, with the resumed run's values."""
    from torch.utils.tensorboard import SummaryWriter

    from rlhf.logger import read_scalars

    run_dir = tmp_path / "run"
    harness.run(fresh(config(stop_after=2, checkpoint_every=2), run_dir))
    orphan = SummaryWriter(str(run_dir))  # what the killed process wrote after step 2's checkpoint
    for step in (3, 4):
        orphan.add_scalar("toy/x", 999.0, step)
    orphan.close()
    resumed = Toy(config(resume=True, checkpoint_every=2), run_dir)
    harness.run(resumed)
    series = read_scalars(run_dir)["toy/x"]
    assert [s for s, _ in series] == [1, 2, 3, 4, 5, 6]
    assert [v for s, v in series if s > 2] == pytest.approx(resumed.draws, rel=1e-6)
    assert 999.0 not in [v for _, v in series]


def test_the_checkpoint_a_resume_starts_from_survives_a_kill_while_the_next_one_is_written(tmp_path, monkeypatch):
    """Rotation (keep 1) deletes the old checkpoint only after the new one is complete."""
    import rlhf.checkpoint as ckpt_module

    run_dir = tmp_path / "run"
    harness.run(fresh(config(stop_after=2, checkpoint_every=2), run_dir))

    def killed(src, dst):
        raise KeyboardInterrupt("killed while renaming the new checkpoint into place")

    monkeypatch.setattr(ckpt_module.os, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        harness.run(Toy(config(resume=True, checkpoint_every=2), run_dir))
    assert [p.name for p in (run_dir / "checkpoints").glob("step_*")] == ["step_000002"]
    assert load_checkpoint(latest_checkpoint(run_dir))[0]["step"] == 2
