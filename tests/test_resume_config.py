"""A resume continues the run it names with that run's own settings: the checkpoint's config
plus only what the command line changes (each change printed), never a frozen setting."""
import logging

import pytest

from rlhf.config import ConfigError, compose
from rlhf.train import run
from tests.conftest import SMALL, read_scalars

BASE = ["algo=p3o", *SMALL, "train.prompts_per_step=4", "eval.prompts=4", "eval.samples_per_prompt=1"]


@pytest.mark.slow
def test_resume_restores_the_saved_config_and_applies_only_the_given_overrides(tmp_path, caplog):
    run_dir = tmp_path / "run"
    first = BASE + ["train.steps=4", "train.checkpoint_every=2", "train.log_every=1"]
    run(compose(first + ["train.stop_after=2"]), run_dir, first + ["train.stop_after=2"])
    original = (run_dir / "config.yaml").read_text()
    # the command line names only the resume and one harmless change; train.steps (default 100)
    # and checkpoint_every (default 50) must come back from the checkpoint, not the defaults
    given = ["train.resume=true", "train.log_every=3"]
    with caplog.at_level(logging.INFO, logger="rlhf"):
        run(compose(given), run_dir, given)
    assert "[resume] train.log_every: 1 -> 3" in caplog.text
    assert "[resume] train.steps" not in caplog.text and "[resume] train.checkpoint_every" not in caplog.text
    assert max(x for x, _ in read_scalars(run_dir)["objective/scores"]) == 4  # ended at the saved 4 steps
    assert (run_dir / "config.yaml").read_text() == original
    resumed = (run_dir / "config.resume-1.yaml").read_text()
    assert "steps: 4" in resumed and "log_every: 3" in resumed
    with pytest.raises(ConfigError, match=r"env.eval_fraction cannot change when resuming \(0.25 .* 0.5 now\)"):
        bad = ["train.resume=true", "env.eval_fraction=0.5"]
        run(compose(bad), run_dir, bad)


def test_resume_without_a_checkpoint_names_the_directory(tmp_path):
    (tmp_path / "sibling" / "checkpoints").mkdir(parents=True)  # never searched
    with pytest.raises(FileNotFoundError, match=f"the run directory {tmp_path / 'typo'} has no checkpoint"):
        run(compose(["train.resume=true"]), tmp_path / "typo", ["train.resume=true"])


def test_a_resume_keeps_the_original_hydra_record(tmp_path):
    from rlhf.train import keep_hydra_record

    run_dir = tmp_path / "run"
    assert keep_hydra_record(["train.resume=true", f"hydra.run.dir={run_dir}"]) == []  # nothing recorded yet
    (run_dir / ".hydra").mkdir(parents=True)
    given = ["train.resume=true", f"hydra.run.dir={run_dir}"]
    assert keep_hydra_record(given) == ["hydra.output_subdir=.hydra-resume-1"]
    (run_dir / ".hydra-resume-1").mkdir()
    assert keep_hydra_record(given) == ["hydra.output_subdir=.hydra-resume-2"]
    assert keep_hydra_record([f"hydra.run.dir={run_dir}"]) == []  # not a resume
    assert keep_hydra_record(["train.resume=null", f"hydra.run.dir={run_dir}"]) == []
