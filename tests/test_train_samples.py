"""Training leaves a few of its samples every train.samples_every phases (file + text tab)."""
import json

from rlhf.config import compose
from rlhf.train import run
from tests.conftest import SMALL


def test_training_samples_every_n_phases(tmp_path):
    run(compose(["algo=p3o", *SMALL, "train.steps=3", "train.samples_every=2", "eval.at_start=false",
                 "eval.prompts=2"]), tmp_path / "run")
    files = sorted(p.name for p in (tmp_path / "run" / "samples").glob("*.jsonl"))
    assert files == ["train_step_000002.jsonl"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "samples" / files[0]).read_text().splitlines()]
    assert len(rows) == 8
    for row in rows:
        assert row["prompt"].startswith("review:") and isinstance(row["response"], str)
        assert isinstance(row["score"], float) and 0.0 <= row["gold"] <= 1.0 and row["turns"] == [row["response"]]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"tensors": 0})
    events.Reload()
    assert "train/samples/text_summary" in events.Tags()["tensors"]
