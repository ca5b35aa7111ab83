"""Plot helpers shared by all claims: metric vs step, metric vs KL (frontiers), Pareto fronts.

Each takes plain numbers grouped by arm and writes one PNG (matplotlib, Agg backend).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

Curve = Sequence[tuple[float, float]]


def _colors(arms: Sequence[str]) -> dict[str, str]:
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {arm: palette[i % len(palette)] for i, arm in enumerate(sorted(arms))}


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def metric_vs_step(curves: dict[str, list[Curve]], ylabel: str, path: Path, title: str = "",
                   xlabel: str = "step") -> Path:
    """One line per run, colored by arm; the arm's mean over runs (same x values) in bold.
    x is the training step by default, or any other per-point quantity (e.g. KL)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = _colors(list(curves))
    for arm, runs in sorted(curves.items()):
        for curve in runs:
            xs, ys = zip(*curve)
            ax.plot(xs, ys, color=colors[arm], alpha=0.3, linewidth=1)
        common = sorted(set.intersection(*(set(x for x, _ in c) for c in runs)))
        if common:
            mean = [np.mean([dict(c)[x] for c in runs]) for x in common]
            ax.plot(common, mean, color=colors[arm], linewidth=2.2, label=f"{arm} (mean of {len(runs)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def upper_envelope(points: Curve) -> list[tuple[float, float]]:
    """Best y reached at or below each x: the frontier of (cost, value) points."""
    envelope, best = [], -np.inf
    for x, y in sorted(points):
        if y > best:
            best = y
            envelope.append((x, y))
    return envelope


def envelope_at(points: Curve, xs: Sequence[float]) -> list[float]:
    """The upper envelope (best y with x' <= x) evaluated at each x (NaN below all points)."""
    env = upper_envelope(points)
    out = []
    for x in xs:
        ys = [y for px, y in env if px <= x]
        out.append(max(ys) if ys else float("nan"))
    return out


def frontier(points: dict[str, Curve], xlabel: str, ylabel: str, path: Path, title: str = "",
             shade: tuple[float, float] | None = None) -> Path:
    """Scatter of (KL, reward) points per arm with each arm's upper envelope as a step line."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = _colors(list(points))
    for arm, pts in sorted(points.items()):
        xs, ys = zip(*pts)
        ax.scatter(xs, ys, color=colors[arm], alpha=0.45, s=18)
        ex, ey = zip(*upper_envelope(pts))
        ax.step(list(ex) + [max(xs)], list(ey) + [ey[-1]], where="post", color=colors[arm], linewidth=2,
                label=f"{arm} frontier")
    if shade:
        ax.axvspan(*shade, color="grey", alpha=0.1, label="common KL range")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def pareto_front(points: dict[str, Curve], xlabel: str, ylabel: str, path: Path, title: str = "",
                 reference: Curve | None = None) -> Path:
    """Points per arm (both objectives maximized) with each arm's non-dominated set joined,
    and an optional known front."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = _colors(list(points))
    for arm, pts in sorted(points.items()):
        xs, ys = zip(*pts)
        ax.scatter(xs, ys, color=colors[arm], alpha=0.5, s=18)
        front = sorted(p for p in pts if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in pts))
        if front:
            fx, fy = zip(*front)
            ax.plot(fx, fy, color=colors[arm], linewidth=2, marker="o", label=f"{arm} front")
    if reference:
        rx, ry = zip(*sorted(reference))
        ax.plot(rx, ry, color="black", linestyle="--", label="known front")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def bars(values: dict[str, tuple[float, float, float]], ylabel: str, path: Path, title: str = "") -> Path:
    """One bar per arm (in the given order) with its 95% interval: {arm: (estimate, low, high)}."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    names = list(values)
    est = np.array([values[n][0] for n in names])
    err = np.array([[est[i] - values[n][1] for i, n in enumerate(names)],
                    [values[n][2] - est[i] for i, n in enumerate(names)]])
    ax.bar(names, est, yerr=err, capsize=6, color=[_colors(names)[n] for n in names], alpha=0.8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def scatter(points: dict[str, Curve], xlabel: str, ylabel: str, path: Path, title: str = "") -> Path:
    """Points per arm, no lines (e.g. a value estimate against the measured success rate)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = _colors(list(points))
    for arm, pts in sorted(points.items()):
        xs, ys = zip(*pts)
        ax.scatter(xs, ys, color=colors[arm], alpha=0.5, s=14, label=arm)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def grouped_bars(values: dict[str, dict[str, float]], metrics: list[str], path: Path, title: str = "") -> Path:
    """One group per metric, one bar per run (a run missing a metric leaves a gap)."""
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(metrics) * max(1, len(values)) / 2), 4.2))
    runs = list(values)
    width = 0.8 / max(len(runs), 1)
    colors = _colors(runs)
    for i, run in enumerate(runs):
        xs = [j + i * width for j, m in enumerate(metrics) if m in values[run]]
        ys = [values[run][m] for m in metrics if m in values[run]]
        ax.bar(xs, ys, width, label=run, color=colors[run])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))])
    ax.set_xticklabels(metrics, rotation=30, ha="right")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)
