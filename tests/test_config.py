"""The CLI's config contract: documented keys, clear errors before any work, --cfg job."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.config import CONFIG_DIR, ConfigError, check_override_keys, validate
from tests.conftest import compose_cfg

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf.train", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_every_config_key_has_a_comment():
    """Each `key:` line in configs/ carries a comment, inline or on the line above."""
    undocumented = []
    for path in sorted(Path(CONFIG_DIR).rglob("*.yaml")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if not re.match(r"^\s*[A-Za-z_][\w.-]*\s*:", line) or line.strip().startswith("#"):
                continue
            if line.strip().startswith("defaults"):
                continue
            above = lines[i - 1].strip() if i else ""
            if "#" not in line and not above.startswith("#"):
                undocumented.append(f"{path.name}:{i + 1}: {line.strip()}")
    assert not undocumented, "keys without a comment:\n" + "\n".join(undocumented)


def test_unknown_key_names_valid_keys_and_a_guess():
    cfg = compose_cfg([])
    with pytest.raises(ConfigError, match=r"algo\.lrr.*Did you mean 'algo\.lr'.*Valid keys under 'algo'"):
        check_override_keys(cfg, ["algo.lrr=1"])
    with pytest.raises(ConfigError, match=r"Valid keys at the top level: .*train"):
        check_override_keys(cfg, ["trainer.lr=1"])
    check_override_keys(cfg, ["algo.lr=1", "algo=ppo", "+extra.key=1"])  # valid ones pass


@pytest.mark.parametrize("overrides, message", [
    (["algo.clip_variant=both"], r"algo.clip_variant='both'.*valid choices: joint, separate"),
    (["algo=ppo", "algo.kl_estimator=k9"], r"valid choices: k1, k2, k3"),
    (["algo=p3o", "algo.samples_per_prompt=3"], r"samples_per_prompt must be 2"),
    (["algo=rm", "reward=gold"], r"algo=rm needs proxy reward models"),
    (["algo=bon", "reward=gold"], r"algo=bon needs proxy reward models"),
    (["reward=ensemble", "reward.members=1", "reward.objective=wco"], r"reward.members must be >= 2"),
    (["reward=ensemble", "reward.objective=median"], r"valid choices: mean, wco, uwo"),
    (["algo=ppo", "reward=gold", "algo.critic_init=reward_model"], r"critic_init=reward_model needs a reward model"),
    (["rollout.top_p=1.5"], r"top_p=1.5 must lie in \(0, 1\]"),
    (["env.label_noise=2"], r"env.label_noise=2 must lie in \[0, 1\]"),
    (["train.steps=0"], r"train.steps=0 must be a positive integer"),
    (["model.path=/nonexistent/model"], r"model.path=/nonexistent/model is not a directory"),
    (["train.resume=/nonexistent/run"], r"train.resume=/nonexistent/run does not exist"),
])
def test_bad_values_and_combinations_are_rejected(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg(overrides))


def test_cli_rejects_before_any_work(tmp_path):
    """Bad key, value, group: exit code != 0, a message naming the valid choices, no run dir."""
    result = cli("algo.lrr=1", cwd=tmp_path)
    assert result.returncode == 2 and "Did you mean 'algo.lr'" in result.stderr
    result = cli("algo=ppx", cwd=tmp_path)
    assert result.returncode == 2
    assert "Did you mean algo=ppo? Valid choices:" in result.stderr and "p3o" in result.stderr
    result = cli("algo.clip_variant=both", cwd=tmp_path)
    assert result.returncode == 2 and "valid choices: joint, separate" in result.stderr
    assert not (tmp_path / "runs").exists(), "a run directory was created for a rejected config"


def test_cfg_job_prints_resolved_config(tmp_path):
    result = cli("algo=ppo", "algo.lr=0.001", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "name: ppo" in result.stdout and "lr: 0.001" in result.stdout
    assert "cache_dir:" in result.stdout


def test_cli_names_valid_group_options_and_checks_learning_rates():
    import subprocess
    import sys

    bad_group = subprocess.run([sys.executable, "-m", "rlhf.train", "env=atari"], capture_output=True, text=True,
                               timeout=120)
    assert bad_group.returncode == 2
    assert "env=atari is not an option. Did you mean env=mario? Valid choices: alfworld, code, games, mario, math" in \
        bad_group.stderr
    assert "HYDRA_FULL_ERROR" not in bad_group.stderr
    from rlhf.config import ConfigError, compose, validate

    with pytest.raises(ConfigError, match=r"algo.critic_lr=-0.001 must be > 0"):
        validate(compose(["algo=oreo", "env=math", "reward=verifier", "algo.critic_lr=-0.001"]))


@pytest.mark.parametrize("override, message", [
    ("algo.kl_coef=-0.1", r"algo.kl_coef=-0.1 must be >= 0"),
    ("algo.gamma=1.5", r"algo.gamma=1.5 must be in \[0, 1\]"),
    ("algo.lam=-0.2", r"algo.lam=-0.2 must be in \[0, 1\]"),
    ("env.label_noise=2", r"env.label_noise=2 must"),
    ("algo.vf_coef=-1", r"algo.vf_coef=-1 must be >= 0"),
    ("algo.max_grad_norm=0", r"algo.max_grad_norm=0 must be > 0"),
    ("rollout.top_p=0", r"rollout.top_p=0"),
])
def test_numeric_ranges_are_checked_by_name_in_every_group(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg(["algo=ppo", override]))


def test_every_shipped_config_is_in_range():
    from pathlib import Path

    from rlhf.config import CONFIG_DIR, check_ranges

    checked = 0
    for group in sorted(p for p in Path(CONFIG_DIR).iterdir() if p.is_dir()):
        for option in sorted(group.glob("*.yaml")):
            try:
                cfg = compose_cfg([f"{group.name}={option.stem}"])
            except ConfigError:  # an option that needs another group (e.g. reward=verifier needs env=math)
                continue
            check_ranges(cfg)
            checked += 1
    assert checked >= 30


def test_evaluate_help_and_a_missing_run_answer_without_loading_torch(tmp_path):
    import subprocess
    import sys

    code = ("import sys\nfrom rlhf.evaluate import parse_args\ntry:\n    parse_args(sys.argv[1:])\n"
            "except SystemExit as e:\n    print(e.code if e.code not in (0, None) else '', file=sys.stderr)\n"
            "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')")
    helped = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, timeout=60)
    assert "run=<path>" in helped.stdout and "out=<dir>" in helped.stdout and "decoding: " in helped.stdout
    assert "algo: " in helped.stdout and "p3o" in helped.stdout and "torch not loaded" in helped.stdout
    missing = subprocess.run([sys.executable, "-c", code, f"run={tmp_path / 'nope'}"], capture_output=True,
                             text=True, timeout=60)
    assert f"run={tmp_path / 'nope'}: no such directory; expected a run directory" in missing.stderr
    assert "torch not loaded" in missing.stdout
    (tmp_path / "empty").mkdir()
    empty = subprocess.run([sys.executable, "-m", "rlhf.evaluate", f"run={tmp_path / 'empty'}"], capture_output=True,
                           text=True, timeout=60)
    assert empty.returncode == 1 and "has no checkpoints" in empty.stderr and "Traceback" not in empty.stderr


def test_train_help_does_not_import_torch():
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "rlhf.train", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "Configuration groups" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "hydra" in imported and "torch" not in imported and "transformers" not in imported
