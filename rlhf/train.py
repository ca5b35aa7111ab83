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
# what a resumed run cannot change: its weights, data and scores depend on them
FROZEN = ("algo.name", "env.", "model.", "reward.", "seed")
PER_INVOCATION = ("train.resume", "train.stop_after")  # settings of this invocation, not of the run


def flat(cfg) -> dict[str, object]:
    out = {}
    for key, value in OmegaConf.to_container(cfg, resolve=True).items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in flat(OmegaConf.create(value)).items()})
        else:
            out[key] = value
    return out


def resumed_config(cfg: DictConfig, run_dir: Path, overrides: list[str] | None) -> DictConfig:
    """The config a resume continues with: the checkpoint's own, plus only the settings given on
    this command line (`overrides`; None = `cfg` is the whole intended config, as in-process
    callers pass it). Each difference is printed; one that cannot change mid-run is an error."""
    import torch

    from rlhf import checkpoint as ckpt
    from rlhf.config import GROUPS, ConfigError

    checkpoint = ckpt.resolve_resume(cfg.train.resume, run_dir)  # no checkpoint: an error naming run_dir
    saved = OmegaConf.create(torch.load(checkpoint / ckpt.STATE, weights_only=False)["config"])
    if overrides is None:
        new = cfg.copy()
    else:
        new = saved.copy()
        for override in overrides:
            key = override.split("=", 1)[0].lstrip("+~")
            if key in GROUPS:  # a swapped config group: take it as composed
                new[key] = cfg[key]
            elif key not in PER_INVOCATION:
                OmegaConf.update(new, key, OmegaConf.select(cfg, key), force_add=True)
    for key in PER_INVOCATION:
        OmegaConf.update(new, key, OmegaConf.select(cfg, key), force_add=True)
    before, after = flat(saved), flat(new)
    for key in sorted(set(before) | set(after)):
        if key in PER_INVOCATION or key.startswith("hydra.") or before.get(key) == after.get(key):
            continue
        if key.startswith(FROZEN) or key == "algo.name":
            raise ConfigError(f"{key} cannot change when resuming ({before.get(key)!r} in {checkpoint}, "
                              f"{after.get(key)!r} now); start a new run instead")
        log.info(f"[resume] {key}: {before.get(key)!r} -> {after.get(key)!r}")
    return new


def run(cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None) -> dict:
    """Train with a composed config: validated first, then run in the harness (rlhf.harness):
    the shared RL loop for an Algorithm, the algorithm's own steps for a Job (rlhf.algos).
    A resume continues with the run's saved config plus `overrides` (the command line's)."""
    import torch

    from rlhf.algos import algorithm_class, in_shared_loop
    from rlhf.harness import run as run_job
    from rlhf.harness import seed_everything

    validate(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.train.resume:
        cfg = resumed_config(cfg, run_dir, overrides)
        validate(cfg)
        n = len(list(run_dir.glob("config.resume-*.yaml"))) + 1  # the original config.yaml stays as written
        (run_dir / f"config.resume-{n}.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if not (run_dir / "config.yaml").exists():
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if int(cfg.threads) > 0:
        torch.set_num_threads(int(cfg.threads))
    if in_shared_loop(str(cfg.algo.name)):
        from rlhf.trainer import Trainer

        return run_job(Trainer(cfg, run_dir))
    seed_everything(int(cfg.seed))
    return run_job(algorithm_class(str(cfg.algo.name))(cfg, run_dir))


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        hydra_cfg = HydraConfig.get()
        run(cfg, Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task))
    except CONFIG_ERRORS as err:
        log.error(f"config error: {err}")
        sys.exit(2)


def check_group_values(overrides: list[str]) -> None:
    """`algo=ppx`: name the valid options of the group and the closest one (Hydra would print
    its search path instead)."""
    import difflib

    from rlhf.config import GROUPS, ConfigError

    for override in overrides:
        group, _, value = override.lstrip("+~").partition("=")
        if group in GROUPS and value:
            options = sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))
            if value not in options:
                guess = difflib.get_close_matches(value, options, n=1)
                hint = f" Did you mean {group}={guess[0]}?" if guess else ""
                raise ConfigError(f"{group}={value} is not an option.{hint} Valid choices: {', '.join(options)}")


def precheck(argv: list[str]) -> None:
    """Reject unknown keys, bad values and impossible combinations before Hydra starts a
    run (Hydra would not list the valid keys, and would already have made a run dir)."""
    overrides = [a for a in argv if "=" in a and not a.startswith(("-", "hydra."))]
    check_group_values(overrides)
    try:
        cfg = compose(overrides)
    except CONFIG_ERRORS:
        raise
    except Exception:  # a bad group value or malformed override: Hydra reports it below
        return
    validate(cfg)


HELP_FLAGS = ("--help", "-h", "--hydra-help", "--info", "--shell-completion", "-sc")


def main() -> None:
    if any(a in HELP_FLAGS or a.startswith("--info") for a in sys.argv[1:]):
        _hydra_main()  # Hydra's own help: no config check, no torch
        return
    print("[rlhf] checking the config (the first import of torch and transformers takes a few seconds)",
          file=sys.stderr, flush=True)
    try:
        precheck(sys.argv[1:])
    except CONFIG_ERRORS as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.argv += keep_hydra_record(sys.argv[1:])
    _hydra_main()


def keep_hydra_record(argv: list[str]) -> list[str]:
    """A resume into an existing run directory records its Hydra files in .hydra-resume-<n>/,
    so that .hydra/ (config, overrides.yaml) keeps the settings the run was started with."""
    resume = [a.split("=", 1)[1] for a in argv if a.startswith("train.resume=")]
    run_dir = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")]
    if not resume or resume[-1].lower() in ("null", "none", "false") or not run_dir or \
            any(a.startswith("hydra.output_subdir=") for a in argv):
        return []
    root = Path(run_dir[-1]).expanduser()
    if not (root / ".hydra").is_dir():
        return []
    n = len(list(root.glob(".hydra-resume-*"))) + 1
    return [f"hydra.output_subdir=.hydra-resume-{n}"]


if __name__ == "__main__":
    main()
