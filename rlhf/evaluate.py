"""`python -m rlhf.evaluate`: score a run's checkpoint on held-out prompts.

    python -m rlhf.evaluate run=runs/<run>                  # its latest checkpoint
    python -m rlhf.evaluate run=runs/<run>/checkpoints/step_000100 eval.prompts=128

Writes <run>/eval/step_<N>.json and TensorBoard scalars `eval/*` into the run directory (or
into `out=<dir>`, e.g. to steer someone else's run with a value model without writing into
it), and prints the JSON. Settings not given on the command line come from the run's config;
config groups can be swapped too:

    python -m rlhf.evaluate run=runs/<sft-or-any-run> out=eval/vas-b4 decoding=vas \
        decoding.value_models=[runs/<vas run>] decoding.beta=4
"""
from __future__ import annotations

import inspect
import json
import logging
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from rlhf.config import GROUPS, compose
from rlhf.evaluation import evaluate_lm_checkpoint
from rlhf.harness import save_eval

log = logging.getLogger("rlhf")


USAGE = ("usage: python -m rlhf.evaluate run=<run dir or checkpoint dir> [out=<dir>] "
         "[group=option ...] [key=value ...]")


def parse_args(argv: list[str]) -> tuple[str, Path | None, list[str]]:
    """`run=<dir>`, optional `out=<dir>` (default: the run's own directory), then overrides of
    the run's config: config groups (decoding=vas) and dotted keys (eval.prompts=128)."""
    runs = [a.split("=", 1)[1] for a in argv if a.startswith("run=")]
    outs = [a.split("=", 1)[1] for a in argv if a.startswith("out=")]
    if len(runs) != 1 or len(outs) > 1:
        raise SystemExit(USAGE)
    rest = [a for a in argv if not a.startswith(("run=", "out="))]
    return runs[0], Path(outs[0]) if outs else None, rest


def load_run(path: str, overrides: list[str]):
    from rlhf import checkpoint as ckpt

    checkpoint = ckpt.resolve_resume(path, Path(path))
    state = torch.load(checkpoint / ckpt.STATE, weights_only=False)
    cfg = OmegaConf.create(state["config"])
    groups = [o for o in overrides if o.split("=", 1)[0] in GROUPS]
    if groups:  # e.g. decoding=vas: take that group's config as `rlhf.train` would compose it
        fresh = compose(groups)
        for override in groups:
            group = override.split("=", 1)[0]
            cfg[group] = fresh[group]
    overrides = [o for o in overrides if o not in groups]
    OmegaConf.set_struct(cfg, True)
    missing = object()
    for override in overrides:
        key = override.split("=", 1)[0]
        if OmegaConf.select(cfg, key, default=missing) is missing and "." in key:
            parent = key.rsplit(".", 1)[0]
            valid = list(OmegaConf.select(cfg, parent, default={}) or {})
            raise SystemExit(f"unknown key '{key}'; valid keys under '{parent}': {', '.join(map(str, valid))}")
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    return checkpoint, state, cfg


def main(argv: list[str] | None = None) -> dict[str, float]:
    from rlhf.algos import algorithm_module, in_shared_loop

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path, out_dir, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    checkpoint, state, cfg = load_run(path, overrides)
    torch.set_num_threads(int(cfg.threads) or torch.get_num_threads())
    run_dir = out_dir or checkpoint.parent.parent
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "eval_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    module = None if in_shared_loop(str(cfg.algo.name)) else algorithm_module(str(cfg.algo.name))
    samples: list[dict] = []
    if module is None and cfg.env.name == "games":  # behavioural evaluation (rlhf.games_eval)
        from rlhf.games_eval import evaluate_checkpoint

        metrics = evaluate_checkpoint(cfg, checkpoint, state, run_dir)
    elif module is None:
        metrics = evaluate_lm_checkpoint(cfg, checkpoint, state, samples)
    elif hasattr(module, "evaluate"):
        takes_records = "records" in inspect.signature(module.evaluate).parameters
        metrics = module.evaluate(cfg, checkpoint, run_dir, samples) if takes_records else module.evaluate(cfg, checkpoint, run_dir)
    else:
        raise SystemExit(f"algo={cfg.algo.name} runs have no evaluation; evaluate the runs that use them")
    out = save_eval(run_dir, int(state["step"]), metrics, samples)
    with SummaryWriter(str(run_dir)) as writer:
        for key, value in metrics.items():
            writer.add_scalar(f"eval/{key}", value, int(state["step"]))
    print(json.dumps({"checkpoint": str(checkpoint), "step": int(state["step"]), **metrics}, indent=2))
    log.info(f"[eval] wrote {out}")
    return metrics


if __name__ == "__main__":
    main()
