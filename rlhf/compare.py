"""`python -m rlhf.compare runs/a runs/b ...`: runs side by side.

For each run: its final held-out evaluation (the latest eval/step_N.json) and, for every eval/*
scalar logged more than once, its best value over training; then every config setting that
differs between the runs. Prints a markdown table and writes compare.md, compare.csv and
compare.png (grouped bars of the final evaluation) into `--out` (default: the current
directory).

    python -m rlhf.compare runs/p3o runs/ppo --out cmp/
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from omegaconf import OmegaConf

from rlhf.logger import read_scalars


def flatten(tree, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in (tree or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def run_config(run_dir: Path) -> dict[str, object]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise SystemExit(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    cfg.pop("hydra", None)
    return flatten(cfg)


def final_eval(run_dir: Path) -> dict[str, float]:
    files = sorted((run_dir / "eval").glob("step_*.json"))
    if not files:
        return {}
    data = json.loads(files[-1].read_text())
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and k != "step"}


def best_eval(run_dir: Path) -> dict[str, float]:
    scalars = read_scalars(run_dir)
    return {tag[len("eval/"):]: max(v for _, v in values) for tag, values in scalars.items()
            if tag.startswith("eval/") and len(values) > 1}


def config_differences(configs: list[dict[str, object]]) -> dict[str, list[object]]:
    keys = sorted(set().union(*configs))
    return {k: [c.get(k, "—") for c in configs] for k in keys if len({json.dumps(c.get(k), default=str)
                                                                    for c in configs}) > 1}


def compare(run_dirs: list[Path], out: Path) -> str:
    names = [d.name for d in run_dirs]
    finals = [final_eval(d) for d in run_dirs]
    bests = [best_eval(d) for d in run_dirs]
    diffs = config_differences([run_config(d) for d in run_dirs])
    metrics = sorted(set().union(*finals))
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for m in metrics:
        cells = []
        for f, b in zip(finals, bests):
            cell = f"{f[m]:.4g}" if m in f else "—"
            if m in b and m in f and b[m] != f[m]:
                cell += f" (best {b[m]:.4g})"
            cells.append(cell)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Config differences:", "", "| setting | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {k} | " + " | ".join(str(v) for v in values) + " |" for k, values in diffs.items()]
    if not diffs:
        lines.append("| (none) |" + " |" * len(names))
    table = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(table + "\n")
    with open(out / "compare.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["metric", *names])
        writer.writerows([[m, *[fin.get(m, "") for fin in finals]] for m in metrics])
    if metrics:
        from rlhf.reproduce.plots import grouped_bars

        grouped_bars({n: f for n, f in zip(names, finals)}, metrics, out / "compare.png", "Final held-out evaluation")
    return table


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m rlhf.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--out", type=Path, default=Path("."), help="where compare.md/.csv/.png go")
    args = parser.parse_args(argv)
    missing = [str(r) for r in args.runs if not r.is_dir()]
    if missing:
        raise SystemExit(f"not a directory: {', '.join(missing)}")
    table = compare(args.runs, args.out)
    print(table)
    return table


if __name__ == "__main__":
    main()
