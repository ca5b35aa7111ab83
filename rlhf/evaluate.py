"""`python -m rlhf.evaluate`: score a run's checkpoint on held-out prompts.

    python -m rlhf.evaluate run=runs/<run>                  # its latest checkpoint
    python -m rlhf.evaluate run=runs/<run>/checkpoints/step_000100 eval.prompts=128

Writes <run>/eval/step_<N>.json and TensorBoard scalars `eval/*` into the run directory (or
into `out=<dir>`, e.g. to steer someone else's run with a value model without writing into
it), and prints the JSON. Settings not given on the command line come from the run's config;
config groups can be swapped too:

    python -m rlhf.evaluate run=runs/<sft-or-any-run> out=eval/vas-b4 decoding=vas \
        decoding.value_models=[runs/<vas run>] decoding.beta=4

Across environments (rlhf/suite.py): each run, and its SFT reference as a baseline row, on
every environment of a suite; one table (md, csv, json) and plots in out= (default
runs/suite-<time>):

    python -m rlhf.evaluate run=runs/<a> run=runs/<b> suite=lm      # text, math, code, games
    python -m rlhf.evaluate run=runs/<a> suite=text,math eval.prompts=32
"""
from __future__ import annotations

import inspect
import json
import logging
import sys
from pathlib import Path

from rlhf.config import CONFIG_DIR

log = logging.getLogger("rlhf")  # torch, transformers and the algorithms load only once the arguments are checked


USAGE = ("usage: python -m rlhf.evaluate run=<run dir or checkpoint dir> [out=<dir>] "
         "[group=option ...] [key=value ...]   (--help lists them)")
RUN_SHAPE = ("a run directory with checkpoints (runs/<time>-<algo>-<env>, holding checkpoints/step_N) or one "
             "checkpoint (runs/<run>/checkpoints/step_000100)")


def help_text() -> str:
    groups = sorted(p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir())
    lines = [USAGE.split("   ")[0], "", (__doc__ or "").strip(), "", "options:",
             f"  run=<path>        required: {RUN_SHAPE}",
             "  out=<dir>         where eval/ and the TensorBoard scalars go (default: the run's own directory)",
             "  suite=<name|list> evaluate every run= (repeatable) on several envs: lm (text, math, code, games), "
             "reasoning (math, code), agent (alfworld), or a comma list such as text,math",
             "  <group>=<option>  swap a config group of the run's config:"]
    for group in groups:
        options = sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))
        lines.append(f"                      {group}: {', '.join(options)}")
    lines.append("  <key>=<value>     override a setting of the run's config, e.g. eval.prompts=128 "
                 "eval.temperature=0.7 env.tasks=humaneval")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> tuple[str, Path | None, list[str]]:
    """`run=<dir>`, optional `out=<dir>` (default: the run's own directory), then overrides of
    the run's config: config groups (decoding=vas) and dotted keys (eval.prompts=128)."""
    if any(a in ("-h", "--help") for a in argv):
        print(help_text())
        raise SystemExit(0)
    runs = [a.split("=", 1)[1] for a in argv if a.startswith("run=")]
    outs = [a.split("=", 1)[1] for a in argv if a.startswith("out=")]
    if len(runs) != 1 or len(outs) > 1:
        raise SystemExit(USAGE)
    rest = [a for a in argv if not a.startswith(("run=", "out="))]
    check_run_path(runs[0])
    return runs[0], Path(outs[0]) if outs else None, rest


def suite_main(argv: list[str]) -> Path:
    """`run=<a> [run=<b> ...] suite=<spec> [out=<dir>] [key=value ...]` (rlhf.suite)."""
    import time

    from rlhf.suite import evaluate_suite, suite_envs, write_suite

    runs = [a.split("=", 1)[1] for a in argv if a.startswith("run=")]
    specs = [a.split("=", 1)[1] for a in argv if a.startswith("suite=")]
    outs = [a.split("=", 1)[1] for a in argv if a.startswith("out=")]
    if not runs or len(specs) != 1 or len(outs) > 1:
        raise SystemExit("usage: python -m rlhf.evaluate run=<run> [run=<run> ...] suite=<name|list> [out=<dir>]")
    for run in runs:
        check_run_path(run)
    suite_envs(specs[0])  # a bad suite fails before anything loads
    out = Path(outs[0]) if outs else Path("runs") / f"suite-{time.strftime('%Y%m%d-%H%M%S')}"
    overrides = [a for a in argv if not a.startswith(("run=", "out=", "suite="))]
    log.info(f"[suite] {len(runs)} run(s) on suite={specs[0]} -> {out}")
    table = write_suite(evaluate_suite(runs, specs[0], load_run, overrides), out)
    print(table.read_text())
    log.info(f"[suite] wrote {table} (and suite.csv, suite.json, suite_*.png)")
    return table


def check_run_path(path: str) -> None:
    """`run=` names a run or a checkpoint: one line before anything heavy is imported."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise SystemExit(f"run={path}: no such directory; expected {RUN_SHAPE}")
    if not ((p / "trainer_state.pt").is_file() or (p / "checkpoints").is_dir()):
        raise SystemExit(f"run={path}: has no checkpoints (no {p / 'checkpoints'}/, no trainer_state.pt); "
                         f"expected {RUN_SHAPE}")


def load_run(path: str, overrides: list[str]):
    import torch
    from omegaconf import OmegaConf

    from rlhf import checkpoint as ckpt
    from rlhf.config import GROUPS, compose

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
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if any(a.startswith("suite=") for a in argv) and not any(a in ("-h", "--help") for a in argv):
        suite_main(argv)
        return {}
    path, out_dir, overrides = parse_args(argv)
    log.info(f"[eval] loading {path} (torch, transformers: a few seconds)")
    import torch
    from omegaconf import OmegaConf
    from torch.utils.tensorboard import SummaryWriter

    from rlhf.algos import algorithm_module, in_shared_loop
    from rlhf.evaluation import evaluate_lm_checkpoint
    from rlhf.harness import save_eval

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
