"""Proxy points of a composite reward's components (Moskovitz et al. 2024):

    python -m rlhf.proxy_points RUN_DIR [RUN_DIR ...] --out proxy_points.json [--use joint|individual]

Reads from each run's TensorBoard log the per-phase means of every component
(`composite/<name>`) and of the evaluation score (`composite/eval`) of its training samples,
from runs trained with fixed component weights (reward=composite, e.g. each component alone
and their sum). The proxy point of a component is where more of it stops raising the
evaluation score:

* individual: for component i, the runs whose weight on i is positive; eval is fitted as a
  quadratic in r_i; theta_i = the fit's argmax within the observed range of r_i;
* joint (the paper's key finding: correlated components shift each other's proxy point):
  eval is fitted as a quadratic surface in all components over every run's points;
  theta = its argmax over the observed box (grid search). A quadratic whose Hessian is not
  negative definite has no peak (its box argmax is a corner the fit extrapolates to, where no
  run went), so then theta = the argmax over the logged points of a kernel-smoothed surface
  (Nadaraya-Watson, Gaussian kernel, Scott's-rule bandwidth per component) -- the paper fits
  "a smooth surface" with KDE smoothing; `joint_method` in the file says which was used.

The file holds `thresholds` (the chosen method's values, what `algo.thresholds=<file>` of
algo=constrained_ppo reads), both estimates, the fits and the observed ranges.
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

GRID = 81  # grid points per component for the joint argmax


def observations(run_dirs: list[Path], names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(components [P, N], eval [P]) over every phase of every run, and per-run weights."""
    from rlhf.logger import read_scalars

    rows, evals, runs = [], [], []
    for run_dir in run_dirs:
        scalars = read_scalars(run_dir)
        needed = [f"composite/{n}" for n in names] + ["composite/eval"]
        missing = [tag for tag in needed if tag not in scalars]
        if missing:
            raise ValueError(f"{run_dir} has no {missing} in its logs: proxy points need runs trained with "
                             "reward=composite")
        series = [dict(scalars[f"composite/{n}"]) for n in names]
        evaluation = dict(scalars["composite/eval"])
        steps = sorted(set(evaluation).intersection(*series))
        rows += [[s[step] for s in series] for step in steps]
        evals += [evaluation[step] for step in steps]
        runs.append({"run": str(run_dir), "weights": run_weights(run_dir, len(names)), "points": len(steps)})
    return np.asarray(rows), np.asarray(evals), runs


def run_weights(run_dir: Path, n: int) -> list[float]:
    """reward.weights of a run (from its saved config), or all ones when it has none."""
    import yaml

    config = Path(run_dir) / ".hydra" / "config.yaml"
    if not config.is_file():
        config = Path(run_dir) / "config.yaml"
    if config.is_file():
        reward = yaml.safe_load(config.read_text()).get("reward", {})
        if reward.get("name") == "composite":
            return [float(w) for w in reward["weights"]]
    return [1.0] * n


def quadratic_features(x: np.ndarray) -> np.ndarray:
    """1, x_i, x_i * x_j (i <= j) for x [P, N]."""
    cols = [np.ones(len(x))] + [x[:, i] for i in range(x.shape[1])]
    cols += [x[:, i] * x[:, j] for i, j in itertools.combinations_with_replacement(range(x.shape[1]), 2)]
    return np.stack(cols, axis=1)


def fit_quadratic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares quadratic (coefficients, R^2)."""
    features = quadratic_features(x)
    coef, *_ = np.linalg.lstsq(features, y, rcond=None)
    residual = y - features @ coef
    r2 = 1.0 - float(residual.var() / y.var()) if y.var() > 0 else 0.0
    return coef, r2


def argmax_on_box(coef: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    axes = [np.linspace(lo, hi, GRID) for lo, hi in zip(low, high)]
    grid = np.stack([g.ravel() for g in np.meshgrid(*axes, indexing="ij")], axis=1)
    return grid[int(np.argmax(quadratic_features(grid) @ coef))]


def concave(coef: np.ndarray, n: int) -> bool:
    """Is the quadratic's Hessian negative definite (a single interior peak)?"""
    hessian = np.zeros((n, n))
    for (i, j), c in zip(itertools.combinations_with_replacement(range(n), 2), coef[1 + n:]):
        hessian[i, j] += c
        hessian[j, i] += c
    return bool(np.all(np.linalg.eigvalsh(hessian) < 0))


def kernel_argmax(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """The logged point where a Nadaraya-Watson smoothing of eval (Gaussian kernel, Scott's
    rule bandwidth on each component) is highest, and that smoothed value."""
    bandwidth = np.maximum(x.std(0), 1e-12) * len(x) ** (-1.0 / (x.shape[1] + 4))
    weights = np.exp(-0.5 * (((x[:, None, :] - x[None, :, :]) / bandwidth) ** 2).sum(-1))
    smooth = weights @ y / weights.sum(1)
    best = int(np.argmax(smooth))
    return x[best], float(smooth[best])


def proxy_points(run_dirs: list[Path], use: str = "joint") -> dict:
    from envs.composite import COMPONENTS

    if use not in ("joint", "individual"):
        raise ValueError(f"--use {use!r} unknown; valid choices: joint, individual")
    x, y, runs = observations(run_dirs, COMPONENTS)
    if len(y) < 10:
        raise ValueError(f"only {len(y)} logged phases in {len(run_dirs)} runs: too few to fit proxy points")
    low, high = x.min(0), x.max(0)
    joint_coef, joint_r2 = fit_quadratic(x, y)
    joint_method = "quadratic" if concave(joint_coef, x.shape[1]) else "kernel"
    joint = argmax_on_box(joint_coef, low, high) if joint_method == "quadratic" else kernel_argmax(x, y)[0]
    individual, fits = {}, {}
    for i, name in enumerate(COMPONENTS):
        rows = np.concatenate([np.full(r["points"], r["weights"][i] > 0) for r in runs])
        xi, yi = x[rows][:, i:i + 1], y[rows]
        if len(yi) < 5:
            raise ValueError(f"no run optimized '{name}' (reward.weights with a positive weight on it)")
        coef, r2 = fit_quadratic(xi, yi)
        individual[name] = float(argmax_on_box(coef, xi.min(0), xi.max(0))[0])
        fits[name] = {"coefficients": coef.tolist(), "r2": r2, "points": int(len(yi))}
    chosen = dict(zip(COMPONENTS, map(float, joint))) if use == "joint" else individual
    return {"thresholds": chosen, "method": use,
            "joint": dict(zip(COMPONENTS, map(float, joint))), "joint_method": joint_method, "individual": individual,
            "joint_fit": {"coefficients": joint_coef.tolist(), "r2": joint_r2, "points": int(len(y))},
            "individual_fits": fits,
            "observed": {n: [float(low[i]), float(high[i])] for i, n in enumerate(COMPONENTS)},
            "runs": runs}


def write(run_dirs: list[Path], out: Path, use: str = "joint") -> dict:
    result = proxy_points(run_dirs, use)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories trained with reward=composite")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--use", default="joint", choices=("joint", "individual"),
                        help="which estimate goes into `thresholds`")
    args = parser.parse_args(argv)
    result = write(args.runs, args.out, args.use)
    print(f"proxy points ({args.use}): " + ", ".join(f"{k}={v:.4f}" for k, v in result["thresholds"].items())
          + f"  [joint: {result['joint_method']}; quadratic fit R^2 {result['joint_fit']['r2']:.3f} on "
          f"{result['joint_fit']['points']} points] -> {args.out}")


if __name__ == "__main__":
    main()
