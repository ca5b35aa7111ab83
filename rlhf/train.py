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
    """Train with a composed config: validated first, then the RL loop or the algorithm's
    own entry point (rlhf.algos.STANDALONE_ALGOS)."""
    import torch

    from rlhf.algos import standalone_module

    validate(cfg)
    if int(cfg.threads) > 0:
        torch.set_num_threads(int(cfg.threads))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    module = standalone_module(str(cfg.algo.name))
    if module is not None:
        return module.train(cfg, run_dir)
    from rlhf.trainer import Trainer

    return Trainer(cfg, run_dir).fit()


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
