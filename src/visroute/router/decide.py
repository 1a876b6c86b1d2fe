"""Decision rules: from predicted success probabilities and model costs to one model per task."""

from __future__ import annotations

import numpy as np


def choose(proba: np.ndarray, costs: np.ndarray, lam: float) -> np.ndarray:
    """Per task, the model maximising predicted accuracy - lam * cost (ties: cheaper model)."""
    costs = np.asarray(costs, dtype=np.float64).reshape(-1)
    utility = proba - lam * costs[None, :]
    order = np.argsort(costs, kind="stable")
    # argmax over models visited from cheapest to dearest: the first maximum is the cheapest
    best = order[np.argmax(utility[:, order], axis=1)]
    return best


def lambda_grid(proba: np.ndarray, costs: np.ndarray, n: int = 200) -> np.ndarray:
    """Lambdas spanning 'always the most accurate' (0) to 'always the cheapest'."""
    spread = float(np.ptp(costs)) or 1.0
    return np.concatenate([[0.0], np.geomspace(1e-4 / spread, 1e3 / spread, n - 1)])


def calibrate(proba: np.ndarray, costs: np.ndarray, target_cost: float | None = None,
              target_share: float | None = None, model_index: int | None = None) -> float:
    """The lambda whose choices on this (validation) set cost at most ``target_cost`` per task, or send at most
    ``target_share`` of tasks to model ``model_index`` (e.g. the heavy model); the smallest such lambda,
    i.e. the most accurate operating point within the target."""
    grid = lambda_grid(proba, costs)
    for lam in grid:
        picks = choose(proba, costs, lam)
        if target_cost is not None and float(np.asarray(costs)[picks].mean()) <= target_cost + 1e-12:
            return float(lam)
        if target_share is not None and float(np.mean(picks == model_index)) <= target_share + 1e-12:
            return float(lam)
    return float(grid[-1])
