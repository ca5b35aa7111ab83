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

from rlhf.config import CONFIG_DIR, CONFIG_ERRORS, compose, validate

log = logging.getLogger("rlhf")


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train with a composed config: validated first, then run in the harness (rlhf.harness):
    the shared RL loop for an Algorithm, the algorithm's own steps for a Job (rlhf.algos)."""
    import torch

    from rlhf.algos import algorithm_class, in_shared_loop
    from rlhf.harness import run as run_job
    from rlhf.harness import seed_everything

    validate(cfg)
    if int(cfg.threads) > 0:
        torch.set_num_threads(int(cfg.threads))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if in_shared_loop(str(cfg.algo.name)):
        from rlhf.trainer import Trainer

        return run_job(Trainer(cfg, run_dir))
    seed_everything(int(cfg.seed))
    return run_job(algorithm_class(str(cfg.algo.name))(cfg, run_dir))


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except CONFIG_ERRORS as err:
        log.error(f"config error: {err}")
        sys.exit(2)


def precheck(argv: list[str]) -> None:
    """Reject unknown keys, bad values and impossible combinations before Hydra starts a
    run (Hydra would not list the valid keys, and would already have made a run dir)."""
    overrides = [a for a in argv if "=" in a and not a.startswith(("-", "hydra."))]
    try:
        cfg = compose(overrides)
    except CONFIG_ERRORS:
        raise
    except Exception:  # a bad group value or malformed override: Hydra reports it below
        return
    validate(cfg)


def main() -> None:
    try:
        precheck(sys.argv[1:])
    except CONFIG_ERRORS as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    _hydra_main()


if __name__ == "__main__":
    main()
