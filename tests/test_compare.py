"""`python -m rlhf.compare`: final and best metrics side by side, and the config differences."""
import json
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from rlhf.harness import samples_table

REPO = Path(__file__).resolve().parents[1]


def fake_run(path: Path, lr: float, accuracy: float) -> Path:
    path.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"algo": {"name": "oreo", "actor_lr": lr}, "seed": 0,
                                     "hydra": {"run": {"dir": str(path)}}}), path / "config.yaml")
    (path / "eval").mkdir()
    (path / "eval" / "step_000010.json").write_text(json.dumps({"step": 10, "accuracy": accuracy, "kl": 0.5}))
    return path


def test_compare_reports_metrics_and_config_differences(tmp_path):
    a, b = fake_run(tmp_path / "a", 3e-4, 0.9), fake_run(tmp_path / "b", 1e-3, 0.7)
    result = subprocess.run([sys.executable, "-m", "rlhf.compare", str(a), str(b), "--out", str(tmp_path / "cmp")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| accuracy | 0.9 | 0.7 |" in result.stdout
    assert "| algo.actor_lr | 0.0003 | 0.001 |" in result.stdout
    assert "seed" not in result.stdout.split("Config differences")[1] and "hydra" not in result.stdout
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 1000
    assert (tmp_path / "cmp" / "compare.csv").read_text().splitlines()[0] == "metric,a,b"
    bad = subprocess.run([sys.executable, "-m", "rlhf.compare", str(tmp_path / "nope")], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "not a directory" in bad.stderr


def test_samples_table_escapes_and_lists_scores():
    table = samples_table([{"seed": 1, "prompt": "a|b", "response": "x\ny", "accuracy": 1.0, "kl": 0.25}])
    assert table.splitlines()[0] == "| prompt | response | accuracy | kl |"
    assert "a\\|b" in table and "x ⏎ y" in table and "| 1 | 0.25 |" in table
