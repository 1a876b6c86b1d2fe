"""RouterBench's multi-model metrics (arXiv 2403.12031, §4): AIQ against the single-model hull, with intervals.

- **Normalised cost** ``x = (C - C_min) / (C_max - C_min)``, with ``C_min`` / ``C_max`` the mean cost per task
  of the cheapest and of the dearest single model on the same tasks. A policy cheaper than the cheapest model
  sits at 0.
- A policy's operating points (a lambda sweep, a threshold sweep, one point for a fixed model) span its
  **non-decreasing upper convex hull**: any point between two operating points is reachable by sending each
  task to one or the other at random, and paying more never has to lose accuracy. Right of its dearest point
  the hull is flat; left of its cheapest point the policy has no operating point, so the area there is 0.
- **AIQ** is the area under that hull over x in [0, 1]. The **zero router** is the hull of the single models
  alone (what mixing models at random reaches); the **oracle** picks, per task and lambda, the model maximising
  success - lambda x cost with the realised outcomes. A router is worth having where its AIQ is above the
  zero router's.
- **Accuracy at the best single model's cost** is the hull read at that model's x; the **cost to reach its
  accuracy** is the smallest cost on the hull at which the accuracy is at least the best single model's, given
  as a fraction of that model's cost (None: never reached).
- **Intervals**: a bootstrap over tasks (rows resampled with replacement, every policy and the normalisation
  recomputed on the same resample), 2.5 and 97.5 percentiles; ``gain`` is the paired difference to the zero
  router.

A policy is given by its per-task outcomes at each operating point: ``S`` and ``C`` of shape (points, tasks),
so a cascade's cost is what it paid for every call.
"""

from __future__ import annotations

import numpy as np


def upper_hull(x, y) -> tuple[np.ndarray, np.ndarray]:
    """The non-decreasing upper convex hull of points (x, y), as its vertices sorted by x."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if not len(x):
        return np.zeros(0), np.zeros(0)
    order = np.lexsort((-y, x))
    hull: list[tuple[float, float]] = []
    for px, py in zip(x[order], y[order]):
        if hull and px == hull[-1][0]:
            continue  # same x: the first (highest y) was kept
        if hull and py <= hull[-1][1]:
            continue  # dearer and no better: under the flat extension, never on a non-decreasing hull
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (py - y1) - (y2 - y1) * (px - x1) >= 0:  # hull[-1] on or below the chord
                hull.pop()
            else:
                break
        hull.append((float(px), float(py)))
    hx, hy = (np.asarray(v) for v in zip(*hull))
    return hx, hy


def hull_value(hx: np.ndarray, hy: np.ndarray, x: float) -> float | None:
    """The hull at ``x`` (flat right of its last vertex; None left of its first)."""
    if not len(hx) or x < hx[0] - 1e-12:
        return None
    return float(np.interp(x, hx, hy))


def hull_area(x, y) -> float:
    """Area under the non-decreasing upper hull of the points over [0, 1] (x clipped at 0 from below)."""
    hx, hy = upper_hull(np.maximum(np.asarray(x, np.float64), 0.0), y)
    if not len(hx) or hx[0] >= 1.0:
        return 0.0
    grid = np.unique(np.r_[hx[hx < 1.0], 1.0])
    vals = np.interp(grid, hx, hy)
    return float(np.sum((grid[1:] - grid[:-1]) * (vals[1:] + vals[:-1]) / 2.0))


def hull_cost_to(hx: np.ndarray, hy: np.ndarray, target: float) -> float | None:
    """Smallest x on the hull with accuracy >= target (None: never)."""
    above = np.flatnonzero(hy >= target - 1e-12)
    if not len(above):
        return None
    i = int(above[0])
    if i == 0:
        return float(hx[0])
    x0, x1, y0, y1 = hx[i - 1], hx[i], hy[i - 1], hy[i]
    return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0))


def sweep_outcomes(picks: np.ndarray, success: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-task (success, cost) at each operating point from model picks of shape (points, tasks)."""
    picks = np.atleast_2d(np.asarray(picks, np.int64))
    rows = np.arange(picks.shape[1])[None, :]
    return np.nan_to_num(success[rows, picks]), np.nan_to_num(cost[rows, picks])


def oracle_picks(success: np.ndarray, cost: np.ndarray, n: int = 120) -> np.ndarray:
    """Per lambda, per task, the model maximising realised success - lambda x cost (ties: the cheaper call)."""
    s, c = np.nan_to_num(success), np.nan_to_num(cost)
    spread = float(np.ptp(c)) or 1.0
    lams = np.r_[0.0, np.geomspace(1e-4 / spread, 1e3 / spread, n - 1)]
    out = []
    for lam in lams:
        u = s - lam * c - 1e-12 * c  # the tiny cost term breaks ties toward the cheaper call
        out.append(np.argmax(u, axis=1))
    return np.asarray(out)


def _summary(S: np.ndarray, C: np.ndarray, w: np.ndarray, c_min: float, c_max: float, a_best: float,
             c_best: float) -> dict:
    acc, cost = S @ w / w.sum(), C @ w / w.sum()
    span = c_max - c_min
    x = (cost - c_min) / span if span > 0 else np.zeros_like(cost)
    hx, hy = upper_hull(np.maximum(x, 0.0), acc)
    xb = (c_best - c_min) / span if span > 0 else 0.0
    xr = hull_cost_to(hx, hy, a_best)
    return {"aiq": hull_area(x, acc), "accuracy_at_best_cost": hull_value(hx, hy, xb),
            "cost_to_best_accuracy": (None if xr is None or c_best <= 0 else (c_min + xr * span) / c_best),
            "hull": {"cost": [float(c_min + v * span) for v in hx], "accuracy": [float(v) for v in hy]}}


def aiq_report(policies: dict[str, tuple[np.ndarray, np.ndarray]], success: np.ndarray, cost: np.ndarray,
               weight=None, n_boot: int = 200, seed: int = 0) -> dict:
    """AIQ, accuracy at the best single model's cost and cost to reach its accuracy for the zero router (single
    models), the oracle and every given policy ((points, tasks) success and cost), with bootstrap intervals."""
    success, cost = np.nan_to_num(np.asarray(success, np.float64)), np.nan_to_num(np.asarray(cost, np.float64))
    n, m = success.shape
    w = np.ones(n) if weight is None else np.asarray(weight, np.float64)
    all_p = {"zero_router": (success.T, cost.T), "oracle": sweep_outcomes(oracle_picks(success, cost), success, cost),
             **policies}

    def one(wt: np.ndarray) -> dict:
        acc, mc = success.T @ wt / wt.sum(), cost.T @ wt / wt.sum()
        best = int(max(range(m), key=lambda j: (acc[j], -mc[j])))
        return {k: _summary(S, C, wt, float(mc.min()), float(mc.max()), float(acc[best]), float(mc[best]))
                for k, (S, C) in all_p.items()}

    point = one(w)
    rng = np.random.default_rng(seed)
    boots = [one(w * rng.multinomial(n, np.full(n, 1.0 / n))) for _ in range(n_boot)] if n > 1 and n_boot else []
    keys = ("aiq", "accuracy_at_best_cost", "cost_to_best_accuracy")
    out = {"n_boot": len(boots), "tasks": int(n)}
    for k, v in point.items():
        r = dict(v)
        for key in keys:
            vals = np.array([b[k][key] for b in boots if b[k][key] is not None], np.float64)
            r[key + "_ci"] = [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))] \
                if len(vals) >= max(10, 0.9 * len(boots)) else None
        gains = np.array([b[k]["aiq"] - b["zero_router"]["aiq"] for b in boots])
        r["gain"] = v["aiq"] - point["zero_router"]["aiq"]
        r["gain_ci"] = [float(np.percentile(gains, 2.5)), float(np.percentile(gains, 97.5))] if len(gains) else None
        out[k] = r
    return out
