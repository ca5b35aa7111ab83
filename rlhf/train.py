"""`python -m rlhf.train algo=<name> env=<name> model=<name> reward=<name> rollout=<name> ...`

Hydra composes configs/ (see configs/config.yaml); `--cfg job` prints the resolved config.
Each run writes into its own directory (runs/<time>-<algo>-<env>/): config.yaml, the
TensorBoard events, checkpoints/, eval/ and train.log.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from rlhf.config import CONFIG_DIR, ConfigError, compose, validate

log = logging.getLogger("rlhf")


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train (or, for algo=rm, build the reward model) with a composed, validated config."""
    import torch

    validate(cfg)
    if int(cfg.threads) > 0:
        torch.set_num_threads(int(cfg.threads))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if cfg.algo.name == "rm":
        return train_reward_model(cfg, run_dir)
    from rlhf.trainer import Trainer

    return Trainer(cfg, run_dir).fit()


def train_reward_model(cfg: DictConfig, run_dir: Path) -> dict:
    import json

    from torch.utils.tensorboard import SummaryWriter

    from agents.warmstart import warm_start_policy
    from envs import base as env_base
    from rlhf.algos.rm import env_kwargs, reward_model_dir

    env = env_base.make(str(cfg.env.name), split="train", **env_kwargs(cfg))
    path = reward_model_dir(cfg, warm_start_policy(cfg, env, log.info), log.info)
    metrics = json.loads((path / "metrics.json").read_text())
    with SummaryWriter(str(run_dir)) as writer:
        for key, value in metrics.items():
            writer.add_scalar(key, value, 0)
    (run_dir / "reward_model.txt").write_text(f"{path}\n")
    log.info(f"[rm] reward model at {path}: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return metrics


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except ConfigError as err:
        log.error(f"config error: {err}")
        sys.exit(2)


def precheck(argv: list[str]) -> None:
    """Reject unknown keys, bad values and impossible combinations before Hydra starts a
    run (Hydra would not list the valid keys, and would already have made a run dir)."""
    overrides = [a for a in argv if "=" in a and not a.startswith(("-", "hydra."))]
    try:
        cfg = compose(overrides)
    except ConfigError:
        raise
    except Exception:  # a bad group value or malformed override: Hydra reports it below
        return
    validate(cfg)


def main() -> None:
    try:
        precheck(sys.argv[1:])
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    _hydra_main()


if __name__ == "__main__":
    main()
