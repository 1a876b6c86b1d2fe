"""Routing policies scored on one split with RouteLLM's metrics: the router, and the baselines every router must
beat (random at equal share, oracle, dataset prior), each as a whole curve and at the router's operating point.

A policy is given by predicted success probabilities ``proba`` (tasks x models): with two models it ranks tasks
by ``proba[strong] - proba[cheap]`` (the strong-call share axis); with more it is the lambda sweep of
``decide.choose`` (the normalised-cost axis). See ``visroute.router.evaluate.metrics`` for the definitions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from visroute.router.decide.rules import choose, lambda_grid
from visroute.router.evaluate.metrics import (Curve, normalised_cost, points_curve, sweep_metrics, threshold_curve,
                                     two_model_metrics)


@dataclass
class Reference:
    """The two single models PGR is measured between, on one split."""

    cheap: int
    best: int
    a_cheap: float
    a_best: float
    c_cheap: float
    c_best: float
    two_models: bool

    def x_of(self, picks: np.ndarray, cost: float, weight: np.ndarray) -> float:
        """Where an operating point lies on the axis: strong-call share (two models) or normalised cost."""
        if self.two_models:
            w = weight / weight.sum()
            return float(w[picks == self.best].sum())
        return float(normalised_cost(np.array([cost]), self.c_cheap, self.c_best)[0])

    def as_dict(self, models: list[str]) -> dict:
        return {"cheap": models[self.cheap], "best": models[self.best], "accuracy_cheap": self.a_cheap,
                "accuracy_best": self.a_best, "cost_cheap": self.c_cheap, "cost_best": self.c_best,
                "axis": "strong_share" if self.two_models else "normalised_cost"}


def _mean(a: np.ndarray, w: np.ndarray) -> float:
    return float((np.nan_to_num(a) * w).sum() / w.sum())


def reference(success: np.ndarray, cost: np.ndarray, expected_costs: np.ndarray, weight=None) -> Reference:
    """Cheapest model (by expected cost) and the strong reference: with two models the other one, otherwise the
    single model with the best accuracy on this split (ties: the cheaper)."""
    n, m = success.shape
    w = np.ones(n) if weight is None else np.asarray(weight, np.float64)
    acc = [_mean(success[:, j], w) for j in range(m)]
    mc = [_mean(cost[:, j], w) for j in range(m)]
    cheap = int(np.argsort(expected_costs, kind="stable")[0])
    if m == 2:
        best = 1 - cheap
    else:
        best = int(max(range(m), key=lambda j: (acc[j], -expected_costs[j])))
    return Reference(cheap, best, acc[cheap], acc[best], mc[cheap], mc[best], m == 2)


def sweep(proba: np.ndarray, success: np.ndarray, cost: np.ndarray, expected_costs: np.ndarray, weight,
          n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy, mean cost) of ``choose`` over a lambda sweep."""
    w = np.asarray(weight, np.float64) / np.sum(weight)
    rows = np.arange(len(proba))
    accs, costs = [], []
    for lam in lambda_grid(proba, expected_costs, n):
        picks = choose(proba, expected_costs, lam)
        accs.append(float((np.nan_to_num(success[rows, picks]) * w).sum()))
        costs.append(float((np.nan_to_num(cost[rows, picks]) * w).sum()))
    return np.asarray(accs), np.asarray(costs)


def policy_curve(proba: np.ndarray, success: np.ndarray, cost: np.ndarray, expected_costs: np.ndarray, weight,
                 ref: Reference) -> tuple[dict, Curve]:
    """RouteLLM metrics of a probability-predicting policy and its curve on the reference axis."""
    n = len(proba)
    w = np.ones(n) if weight is None else np.asarray(weight, np.float64)
    if ref.two_models:
        score = proba[:, ref.best] - proba[:, ref.cheap]
        metrics = two_model_metrics(score, success, cost, ref.cheap, ref.best, w)
        curve = threshold_curve(score, success[:, ref.cheap], success[:, ref.best], cost[:, ref.cheap],
                                cost[:, ref.best], w)
        return metrics, curve
    accs, costs = sweep(proba, success, cost, expected_costs, w)
    metrics = sweep_metrics(accs, costs, ref.a_cheap, ref.c_cheap, ref.a_best, ref.c_best)
    x = normalised_cost(costs, ref.c_cheap, ref.c_best)
    return metrics, points_curve(np.r_[0.0, x], np.r_[ref.a_cheap, accs], np.r_[ref.c_cheap, costs])


def at_share(curve: Curve, x: float, ref: Reference) -> dict:
    """A policy's accuracy, cost and PGR at axis position ``x`` (the router's realised share)."""
    acc, c = curve.clipped().at(x)
    gap = ref.a_best - ref.a_cheap
    return {"x": x, "accuracy": acc, "cost": c, "pgr": (acc - ref.a_cheap) / gap if gap > 0 else None}


def random_policy(ref: Reference) -> tuple[dict, Curve]:
    """Random at equal share, in expectation: the straight line from always-cheapest to always-best (each task
    sent to the best model with probability x). APGR 0.5, CPT(p) = p by construction, with any number of models."""
    from visroute.router.evaluate.metrics import summarise

    curve = Curve(np.array([0.0, 1.0]), np.array([ref.a_cheap, ref.a_best]), np.array([ref.c_cheap, ref.c_best]))
    grid = np.linspace(0, 1, 11)
    out = summarise(curve, ref.a_cheap, ref.a_best, (grid, np.interp(grid, curve.x, curve.accuracy)))
    out["axis"] = "strong_share" if ref.two_models else "normalised_cost"
    return out, curve


def dataset_prior(train_groups: np.ndarray, train_success: np.ndarray, groups: np.ndarray,
                  train_weight=None) -> np.ndarray:
    """Per task, each model's mean training success on the task's dataset (or topic); the overall training mean
    for groups never seen in training. No text model: the baseline a text router must beat."""
    w = np.ones(len(train_groups)) if train_weight is None else np.asarray(train_weight, np.float64)
    mask = ~np.isnan(train_success)
    ys = np.nan_to_num(train_success) * w[:, None]
    overall = ys.sum(0) / np.maximum((mask * w[:, None]).sum(0), 1e-12)
    out = np.tile(overall, (len(groups), 1))
    for g in np.unique(groups):
        sel = train_groups == g
        if sel.any():
            den = (mask[sel] * w[sel, None]).sum(0)
            out[groups == g] = np.where(den > 0, ys[sel].sum(0) / np.maximum(den, 1e-12), overall)
    return out


def share_threshold(score_val: np.ndarray, target: float, weight=None) -> float:
    """The cut on a two-model score that sends (at most) ``target`` of the validation tasks to the strong model:
    a weighted quantile, so the realised share on validation is the target up to ties."""
    s = np.asarray(score_val, np.float64)
    w = np.ones(len(s)) if weight is None else np.asarray(weight, np.float64)
    order = np.argsort(-s, kind="stable")
    cum = np.cumsum(w[order]) / w.sum()
    k = int(np.searchsorted(cum, target + 1e-12, side="right"))  # tasks that fit in the share
    if k <= 0:
        return float(s[order[0]]) if len(s) else 0.0  # nothing goes strong: cut at the top score (strict >)
    if k >= len(s):
        return float(s[order[-1]]) - 1.0
    # strong iff score > cut; the cut sits at the first task that no longer fits (ties all stay cheap)
    return float(s[order[k]])


def threshold_picks(score: np.ndarray, cut: float, ref: Reference) -> np.ndarray:
    return np.where(np.asarray(score) > cut, ref.best, ref.cheap)
