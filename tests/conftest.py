"""Shared fixtures: compose configs with Hydra's Compose API and run training in-process."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)

from rlhf.config import compose as compose_cfg  # noqa: E402,F401  (re-exported for tests)
from rlhf.logger import read_scalars  # noqa: E402,F401

# Small but real settings for tests that only need *a* warm-started policy, not a good one:
# a 2,000-demonstration SFT (~5 s) and a 300-pair reward model (~5 s), cached like any run.
SMALL = ["model.sft.demonstrations=2000", "model.sft.epochs=1", "env.preference_pairs=300",
         "train.prompts_per_step=8", "eval.prompts=8", "rollout.max_new_tokens=24"]


@pytest.fixture
def train_run(tmp_path):
    """train_run(overrides, name) -> run dir, after training in this process."""
    from rlhf.train import run

    def _run(overrides: list[str], name: str = "run") -> Path:
        cfg = compose_cfg(overrides)
        run_dir = tmp_path / name
        run(cfg, run_dir)
        return run_dir

    return _run
