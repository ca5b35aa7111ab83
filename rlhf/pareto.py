"""Pareto fronts of multi-objective policies: preference grids, non-dominated filtering, crowding
distance, the policy archive of C-MORL (Liu et al., ICLR 2025, Section 4.3, Algorithm 1), the
front metrics (hypervolume, expected utility, sparsity, cardinality, IGD: morl-baselines'
`performance_indicators`, Felten et al. 2023, used and not re-implemented), and front plots.

Shared by algo=cmorl, algo=morl_baselines and the `cmorl_pareto` claim, so that every front is
scored the same way: on its non-dominated points at or above the reference point.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def simplex_weights(m: int, delta: float, min_w: float = 0.0, max_w: float = 1.0) -> np.ndarray:
    """All w with w_1..w_{m-1} in {min_w, min_w + delta, ..., <= max_w}, w_m = 1 - sum, every
    entry in [min_w, max_w] (the C-MORL authors' generate_weights_batch_dfs): Stage 1's
    preference grid (Section 4.2) and the expected-utility grid. delta = 1 gives the one-hots."""
    if m < 1 or delta <= 0:
        raise ValueError(f"simplex_weights needs m >= 1 and delta > 0, got m={m}, delta={delta}")
    steps = min_w + delta * np.arange(math.floor((max_w - min_w) / delta + 1e-9) + 1)
    out: list[list[float]] = []

    def extend(prefix: list[float], total: float) -> None:
        if len(prefix) == m - 1:
            last = 1.0 - total
            if min_w - 1e-9 <= last <= max_w + 1e-9:
                out.append(prefix + [max(last, 0.0)])
            return
        for w in steps:
            if total + w <= 1.0 + 1e-9:
                extend(prefix + [float(w)], total + float(w))

    extend([], 0.0)
    return np.round(np.array(out, dtype=np.float64).reshape(-1, m), 10)


def non_dominated(points: np.ndarray) -> list[int]:
    """Indices of the non-dominated points, in input order; of equal vectors the first
    (morl-baselines' get_non_pareto_dominated_inds)."""
    from morl_baselines.common.pareto import get_non_pareto_dominated_inds

    points = np.asarray(points, dtype=np.float64)
    if len(points) < 2:
        return list(range(len(points)))
    return [int(i) for i in np.flatnonzero(get_non_pareto_dominated_inds(points, remove_duplicates=True))]


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance (Deb et al. 2002), C-MORL's selection criterion (Section 4.3):
    per objective, sort; extremes +inf; interior points add (next - prev) / (max - min). An
    objective with zero range cannot rank the points and is skipped (the authors' code divides
    by zero there). Ties keep their input order."""
    points = np.asarray(points, dtype=np.float64)
    n = len(points)
    distance = np.zeros(n)
    if n == 0:
        return distance
    for j in range(points.shape[1]):
        order = np.argsort(points[:, j], kind="stable")
        span = points[order[-1], j] - points[order[0], j]
        if span <= 0:
            continue
        distance[order[0]] = distance[order[-1]] = np.inf
        for k in range(1, n - 1):
            distance[order[k]] += (points[order[k + 1], j] - points[order[k - 1], j]) / span
    return distance


@dataclass
class Member:
    """One policy of the archive: its evaluated objective vector and everything needed to run
    or extend it (weights with their observation statistics, return-normaliser state)."""
    objectives: np.ndarray
    policy: dict[str, Any]
    obj_norm: dict
    origin: dict[str, Any]
    uid: int

    def to_state(self) -> dict:
        return {"objectives": self.objectives.tolist(), "policy": self.policy, "obj_norm": self.obj_norm,
                "origin": self.origin, "uid": self.uid}

    @classmethod
    def from_state(cls, s: dict) -> Member:
        return cls(np.asarray(s["objectives"], dtype=np.float64), s["policy"], s["obj_norm"], s["origin"], s["uid"])


@dataclass
class ParetoArchive:
    """Non-dominated policies >= the reference point, at most `capacity` (crowding distance
    decides), and the objective vectors already selected for extension."""
    ref_point: np.ndarray
    capacity: int
    members: list[Member] = field(default_factory=list)
    history: list[tuple[float, ...]] = field(default_factory=list)
    dropped_below_ref: int = 0
    history_resets: int = 0
    tol: float = 1e-9

    def objectives(self) -> np.ndarray:
        m = len(self.ref_point)
        return np.array([p.objectives for p in self.members], dtype=np.float64).reshape(-1, m)

    def update(self, candidates: list[Member]) -> None:
        """Union with the candidates; keep the non-dominated points >= ref (old members win
        ties with equal new vectors); if over capacity, the largest crowding distances."""
        self.dropped_below_ref += sum(bool(np.any(c.objectives < self.ref_point)) for c in candidates)
        pool = [p for p in self.members + candidates if not np.any(p.objectives < self.ref_point)]
        pool = [pool[i] for i in non_dominated(np.array([p.objectives for p in pool]).reshape(-1, len(self.ref_point)))]
        if len(pool) > self.capacity:
            cd = crowding_distance(np.array([p.objectives for p in pool]))
            best = sorted(range(len(pool)), key=lambda i: (-cd[i], i))[:self.capacity]
            pool = [pool[i] for i in sorted(best)]
        self.members = pool

    def _selected_before(self, v: np.ndarray) -> bool:
        return any(np.allclose(v, h, rtol=0.0, atol=self.tol) for h in self.history)

    def select(self, k: int) -> list[Member]:
        """The k members with the largest crowding distance whose objective vectors were not
        selected before (ties: archive order). When every member has been extended already,
        the history is set aside for this pick (counted in history_resets)."""
        if not self.members:
            return []
        cd = crowding_distance(self.objectives())
        order = sorted(range(len(self.members)), key=lambda i: (-cd[i], i))
        fresh = [i for i in order if not self._selected_before(self.members[i].objectives)]
        if not fresh:
            self.history_resets += 1
            fresh = order
        chosen = [self.members[i] for i in fresh[:k]]
        self.history.extend(tuple(float(x) for x in c.objectives) for c in chosen)
        return chosen

    def choose(self, w: np.ndarray) -> tuple[int, Member]:
        """Deployment: the member maximising w.G (its stored, evaluated G)."""
        if not self.members:
            raise ValueError("the archive is empty: no policy reached the reference point")
        index = int(np.argmax(self.objectives() @ w))
        return index, self.members[index]

    def metrics(self, eu_weights: np.ndarray, known_front: np.ndarray | None = None) -> dict[str, float]:
        """front_metrics of the members, and the archive's own counts."""
        return {**front_metrics(self.objectives(), self.ref_point, eu_weights, known_front),
                "archive_size": float(len(self.members)), "dropped_below_ref": float(self.dropped_below_ref),
                "history_resets": float(self.history_resets)}

    def state_dict(self) -> dict:
        return {"ref_point": self.ref_point.tolist(), "capacity": self.capacity,
                "members": [p.to_state() for p in self.members], "history": [list(h) for h in self.history],
                "dropped_below_ref": self.dropped_below_ref, "history_resets": self.history_resets}

    @classmethod
    def from_state(cls, s: dict) -> ParetoArchive:
        return cls(np.asarray(s["ref_point"], dtype=np.float64), int(s["capacity"]),
                   [Member.from_state(p) for p in s["members"]], [tuple(h) for h in s["history"]],
                   int(s["dropped_below_ref"]), int(s["history_resets"]))


def preference(given, names: list[str]) -> np.ndarray:
    """A deployment preference w (eval.preference; [] = equal weights), normalised to sum 1."""
    m = len(names)
    given = [float(x) for x in (given or [])]
    if given and (len(given) != m or min(given) < 0 or sum(given) <= 0):
        raise ValueError(f"eval.preference={given} must have {m} non-negative entries with a positive sum "
                         f"(objectives: {', '.join(names)})")
    return np.asarray(given, dtype=np.float64) / sum(given) if given else np.full(m, 1.0 / m)


# --- metrics ---------------------------------------------------------------------------------------

def pareto_front(points, ref_point: np.ndarray) -> np.ndarray:
    """The non-dominated points >= ref (what HV, EU, SP and IGD are computed on)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, len(ref_point))
    pts = pts[np.all(pts >= ref_point, axis=1)]
    return pts[non_dominated(pts)] if len(pts) else pts


def front_metrics(points, ref_point: np.ndarray, eu_weights: np.ndarray,
                  known_front: np.ndarray | None = None) -> dict[str, float]:
    """HV (ref_point), EU (mean over eu_weights of max_p w.p), sparsity, cardinality and, with
    a known front, IGD, of the non-dominated points >= ref. Empty front: HV 0, the rest NaN."""
    from morl_baselines.common.performance_indicators import cardinality, expected_utility, hypervolume, igd, sparsity

    front = pareto_front(points, ref_point)
    if len(front) == 0:
        out = {"hypervolume": 0.0, "expected_utility": float("nan"), "sparsity": float("nan"), "cardinality": 0.0}
        if known_front is not None:
            out["igd"] = float("nan")
        return out
    out = {"hypervolume": float(hypervolume(ref_point, list(front))),
           "expected_utility": float(expected_utility(list(front), weights_set=list(eu_weights))),
           "sparsity": float(sparsity(list(front))), "cardinality": float(cardinality(list(front)))}
    if known_front is not None:
        out["igd"] = float(igd(list(known_front), list(front)))
    return out


def supported_points(front: np.ndarray, resolution: int = 1000) -> np.ndarray:
    """The points of a front that maximise w.p for some w (what linear scalarisation can
    reach), found on a fine weight grid."""
    front = np.asarray(front, dtype=np.float64)
    weights = simplex_weights(front.shape[1], 1.0 / resolution) if front.shape[1] <= 2 else \
        simplex_weights(front.shape[1], 0.02)
    winners = sorted({int(np.argmax(front @ w)) for w in weights})
    return front[winners]


# --- files -------------------------------------------------------------------------------------------

def plot_front(path: Path, arms: dict[str, np.ndarray], names: list[str], known: np.ndarray | None,
               title: str) -> Path | None:
    """A 2-objective scatter of each arm's points against the known front (None for m != 2)."""
    from rlhf.reproduce.plots import pareto_front as plot_pareto

    arms = {k: [tuple(p) for p in v] for k, v in arms.items() if len(v)}
    if not arms or len(names) != 2:
        return None
    return plot_pareto(arms, names[0], names[1], Path(path), title,
                       reference=[tuple(p) for p in known] if known is not None else None)


def write_front(out_dir: Path, points: np.ndarray, names: list[str], ref: np.ndarray, gamma: float,
                known: np.ndarray | None, label: str, title: str, origins: list | None = None,
                plot: bool = True) -> None:
    """front.json (the points, their origins, the known front) and, with plot, front.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = {"objectives": names, "ref_point": np.asarray(ref).tolist(), "eval_gamma": gamma,
            "points": np.asarray(points).tolist(), "known_front": known.tolist() if known is not None else None}
    if origins is not None:
        info["origins"] = origins
    (out_dir / "front.json").write_text(json.dumps(info, indent=1))
    if plot:
        plot_front(out_dir / "front.png", {label: np.asarray(points)}, names, known, title)
