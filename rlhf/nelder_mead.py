"""Nelder-Mead simplex search (Nelder & Mead 1965, "A Simplex Method for Function
Minimization") in ask/tell form: the caller evaluates each point asked for however long it
takes (NM-PPO, Moskovitz et al. 2024, trains a policy on a threshold vector for a segment of
phases before telling its evaluation score) and tells the value back.

    nm = NelderMead(initial_simplex)      # N + 1 points in R^N
    while not nm.converged():
        x = nm.ask(); nm.tell(f(x))
    best_point, best_value = nm.best()
"""
from __future__ import annotations

import numpy as np


class NelderMead:
    """Nelder-Mead as ask/tell (minimizes f), so the training loop keeps control: the point
    asked for is trained on for a segment of phases, then told its f. Plain-python state,
    so it checkpoints and resumes exactly. Coefficients: reflection 1, expansion 2,
    contraction 0.5, shrink 0.5 (the standard ones of Nelder & Mead 1965)."""

    ALPHA, GAMMA, RHO, SIGMA = 1.0, 2.0, 0.5, 0.5

    def __init__(self, simplex: list[list[float]], tol: float = 0.01):
        self.points = [list(map(float, p)) for p in simplex]
        self.fvals: list[float | None] = [None] * len(self.points)
        self.tol = tol
        self.stage = "init"        # init | reflect | expand | contract_out | contract_in | shrink
        self.pending: list[float] = self.points[0]
        self.reflected: tuple[list[float], float] | None = None
        self.shrink_index = 0
        self.evaluations = 0

    def state_dict(self) -> dict:
        return {k: v for k, v in vars(self).items()}

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)

    def ask(self) -> list[float]:
        return list(self.pending)

    def best(self) -> tuple[list[float], float]:
        known = [(f, p) for f, p in zip(self.fvals, self.points) if f is not None]
        f, p = min(known)
        return list(p), f

    def converged(self) -> bool:
        return None not in self.fvals and float(np.std(self.fvals)) < self.tol

    def _order(self) -> None:
        order = sorted(range(len(self.points)), key=lambda i: self.fvals[i])
        self.points = [self.points[i] for i in order]
        self.fvals = [self.fvals[i] for i in order]

    def _centroid(self) -> np.ndarray:
        return np.mean(np.asarray(self.points[:-1]), axis=0)

    def _start_iteration(self) -> None:
        self._order()
        c = self._centroid()
        self.pending = (c + self.ALPHA * (c - np.asarray(self.points[-1]))).tolist()
        self.stage = "reflect"

    def _replace_worst(self, point: list[float], f: float) -> None:
        self.points[-1], self.fvals[-1] = list(point), f
        self._start_iteration()

    def _start_shrink(self) -> None:
        best = np.asarray(self.points[0])
        self.points = [self.points[0]] + [(best + self.SIGMA * (np.asarray(p) - best)).tolist() for p in self.points[1:]]
        self.fvals = [self.fvals[0]] + [None] * (len(self.points) - 1)
        self.stage, self.shrink_index = "shrink", 1
        self.pending = self.points[1]

    def tell(self, f: float) -> None:
        self.evaluations += 1
        point = self.pending
        if self.stage in ("init", "shrink"):
            i = self.fvals.index(None)
            self.fvals[i] = f
            if None in self.fvals:
                self.pending = self.points[self.fvals.index(None)]
            else:
                self._start_iteration()
            return
        c, worst = self._centroid(), np.asarray(self.points[-1])
        if self.stage == "reflect":
            if self.fvals[0] <= f < self.fvals[-2]:
                self._replace_worst(point, f)
            elif f < self.fvals[0]:
                self.reflected = (point, f)
                self.pending = (c + self.GAMMA * (np.asarray(point) - c)).tolist()
                self.stage = "expand"
            else:
                self.reflected = (point, f)
                outside = f < self.fvals[-1]
                target = np.asarray(point) if outside else worst
                self.pending = (c + self.RHO * (target - c)).tolist()
                self.stage = "contract_out" if outside else "contract_in"
        elif self.stage == "expand":
            reflected, f_r = self.reflected
            if f < f_r:
                self._replace_worst(point, f)
            else:
                self._replace_worst(reflected, f_r)
        else:  # a contraction
            f_r = self.reflected[1]
            accept = f <= f_r if self.stage == "contract_out" else f < self.fvals[-1]
            if accept:
                self._replace_worst(point, f)
            else:
                self._start_shrink()
