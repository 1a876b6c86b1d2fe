"""Decision rules: from predicted success probabilities and model costs to one model per task.

**What the decision trusts** (``decision_rule`` / ``apply_rule``, the default of every trained bundle). A
router's per-task success predictions are noisy, and ``choose`` compares them across models whose costs differ
by up to 100x: an error on a dear model's prediction sends a task there for nothing. On RouterBench's 11 models
(``benchmarks/routing_signal.py``) the out-of-fold AUC of each model's prediction is 0.5-0.65. So the decision
(1) shrinks each prediction halfway towards that model's training accuracy and (2) caps a model off the training
cost-accuracy chain (dearer and no more accurate than a cheaper one) just below the best prediction among the
cheaper chain models, so it is never chosen. Out of fold on RouterBench (``benchmarks/routing_multi.py``) this
lifts kNN from well below the single-model hull to about it and changes the parametric routers by less than
their spread over repeats; a router already regularised towards the base rates (scikit-learn's L2 logistic at
C=0.1 in ``routing_signal.py``) loses about half its gain by it, so such a router needs the shrink fitted on
validation rather than this default. A shrink that keeps each model's order leaves two-model routing unchanged where the
dearer model is the more accurate one (RouteLLM's curves).
"""

from __future__ import annotations

import numpy as np

from visroute.errors import InputError


def choose(proba: np.ndarray, costs: np.ndarray, lam: float) -> np.ndarray:
    """Per task, the model maximising predicted accuracy - lam * cost (ties: cheaper model)."""
    costs = np.asarray(costs, dtype=np.float64).reshape(-1)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[1] != len(costs):
        raise InputError(f"choose: probabilities of shape {proba.shape} do not match {len(costs)} model costs")
    if not np.all(np.isfinite(costs)) or np.any(costs < 0):
        raise InputError(f"choose: model costs must be finite and >= 0, found {costs.tolist()!r:.80}")
    if not np.isfinite(lam) or lam < 0:
        raise InputError(f"choose: lambda must be finite and >= 0, found {lam!r}")
    utility = proba - lam * costs[None, :]
    order = np.argsort(costs, kind="stable")
    # argmax over models visited from cheapest to dearest: the first maximum is the cheapest
    best = order[np.argmax(utility[:, order], axis=1)]
    return best


DEFAULT_SHRINK = 0.5  # weight kept on the router's deviation from a model's training accuracy


def pareto_chain(expected_costs: np.ndarray, accuracy: np.ndarray) -> list[int]:
    """Models in order of cost, keeping only those more accurate than every cheaper one: a cascade's stages."""
    order = np.argsort(expected_costs, kind="stable")
    chain, best = [], -np.inf
    for j in order:
        if accuracy[j] > best + 1e-12:
            chain.append(int(j))
            best = accuracy[j]
    return chain


def decision_rule(train_success: np.ndarray, costs: np.ndarray, shrink: float = DEFAULT_SHRINK) -> dict:
    """The bundle's decision rule from its training rows: each model's training accuracy (NaN: never run, 0),
    the cost-accuracy chain and the shrink weight (see the module docstring)."""
    with np.errstate(all="ignore"):
        prior = np.nan_to_num(np.nanmean(np.asarray(train_success, np.float64), axis=0), nan=0.0)
    return {"shrink": float(shrink), "prior": [float(v) for v in prior],
            "chain": pareto_chain(np.asarray(costs, np.float64), prior)}


def apply_rule(proba: np.ndarray, rule: dict | None, costs: np.ndarray) -> np.ndarray:
    """Predicted success as the decision uses it: shrunk towards each model's prior, models off the chain capped
    at the best cheaper chain model (see the module docstring); ``rule`` None leaves ``proba`` as it is."""
    proba = np.asarray(proba, np.float64)
    if not rule:
        return proba
    prior, costs = np.asarray(rule["prior"], np.float64), np.asarray(costs, np.float64)
    out = prior[None, :] + float(rule["shrink"]) * (proba - prior[None, :])
    chain = [int(j) for j in rule["chain"]]
    for j in range(proba.shape[1]):
        if j in chain:
            continue
        cheaper = [k for k in chain if costs[k] <= costs[j]]
        if cheaper:
            out[:, j] = np.minimum(out[:, j], out[:, cheaper].max(axis=1) - 1e-12)  # ties: the chain
    return out


def lambda_grid(proba: np.ndarray, costs: np.ndarray, n: int = 200) -> np.ndarray:
    """Lambdas spanning 'always the most accurate' (0) to 'always the cheapest'."""
    spread = float(np.ptp(costs)) or 1.0
    return np.concatenate([[0.0], np.geomspace(1e-4 / spread, 1e3 / spread, n - 1)])


def _share_lambda(proba: np.ndarray, costs: np.ndarray, target: float, h: int) -> float:
    """Exact quantile calibration for the dearest model ``h``: each task goes to ``h`` while lambda is below its
    switch point min_j (p_h - p_j) / (c_h - c_j) over the cheaper models j (ties go to the cheaper model), so the
    smallest lambda with share <= target is a quantile of those switch points."""
    n = len(proba)
    with np.errstate(divide="ignore", invalid="ignore"):
        gaps = proba[:, [h]] - proba
        dc = costs[h] - costs
        ratio = np.where(dc[None, :] > 0, gaps / np.where(dc > 0, dc, 1.0)[None, :],
                         np.where(gaps > 0, np.inf, -np.inf))
    ratio[:, h] = np.inf
    switch = np.sort(ratio.min(axis=1))[::-1]
    k = int(np.floor(target * n + 1e-9))
    lam = switch[k] if k < n else 0.0
    if not np.isfinite(lam):
        return 0.0 if lam < 0 else float(lambda_grid(proba, costs)[-1])
    # a hair above the switch point, so float rounding in `choose` cannot keep that task on the heavy model
    return float(max(lam + 1e-9 * abs(lam) + 1e-12, 0.0))


def check_targets(target_cost: float | None, target_share: float | None) -> None:
    """A target share is a fraction of tasks, in [0, 1]; a target cost is a finite price > 0."""
    if target_share is not None and not (np.isfinite(target_share) and 0.0 <= target_share <= 1.0):
        raise InputError(f"target share must be in [0, 1], found {target_share!r}")
    if target_cost is not None and not (np.isfinite(target_cost) and target_cost > 0):
        raise InputError(f"target cost must be finite and > 0, found {target_cost!r}")


def calibrate(proba: np.ndarray, costs: np.ndarray, target_cost: float | None = None,
              target_share: float | None = None, model_index: int | None = None) -> float:
    """The lambda whose choices on this (validation) set cost at most ``target_cost`` per task, or send at most
    ``target_share`` of tasks to model ``model_index`` (e.g. the heavy model); the smallest such lambda,
    i.e. the most accurate operating point within the target. For the share of the dearest model the lambda is
    an exact quantile; otherwise the lambda grid brackets it and bisection refines it, so the realised share or
    cost on validation sits at the target rather than a grid step below it."""
    costs = np.asarray(costs, dtype=np.float64).reshape(-1)
    proba = np.asarray(proba, dtype=np.float64)
    check_targets(target_cost, target_share)
    if target_share is not None and model_index is not None and costs[model_index] >= costs.max() and len(proba):
        return _share_lambda(proba, costs, target_share, model_index)

    def within(lam: float) -> bool:
        picks = choose(proba, costs, lam)
        if target_cost is not None and float(costs[picks].mean()) <= target_cost + 1e-12:
            return True
        return target_share is not None and float(np.mean(picks == model_index)) <= target_share + 1e-12

    grid = lambda_grid(proba, costs)
    first = next((i for i, lam in enumerate(grid) if within(lam)), None)
    if first is None:
        return float(grid[-1])
    if first == 0:
        return float(grid[0])
    lo, hi = float(grid[first - 1]), float(grid[first])
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if within(mid) else (mid, hi)
    return hi


def pick_within_target(values: np.ndarray, acc: np.ndarray, cost: np.ndarray, target_cost: float | None) -> float:
    """Among candidate parameter values with validation (accuracy, cost), the most accurate within the target
    (ties: the cheaper); without a target, the most accurate overall."""
    ok = np.ones(len(values), bool) if target_cost is None else cost <= target_cost + 1e-12
    if not ok.any():
        ok = cost <= cost.min() + 1e-12  # none fits: the cheapest, reported as unreachable by the caller
    idx = np.flatnonzero(ok)
    best = idx[np.lexsort((cost[idx], -acc[idx]))[0]]
    return float(values[best])


def unreachable(target_cost, target_share, realised_cost: float, realised_share: float, heavy: str, rows: int) -> str | None:
    """Why a calibration target could not be met on validation data (None when it was, within one task)."""
    slack = 1.0 / max(rows, 1) + 1e-9
    if target_share is not None and abs(realised_share - target_share) > slack + 0.02:
        why = ("even at lambda 0 the router sends no more tasks there" if realised_share < target_share
               else "no lambda sends fewer")
        return (f"target share {target_share:.3f} of {heavy} cannot be reached on validation data: realised "
                f"{realised_share:.3f} ({why})")
    if target_cost is not None and realised_cost > target_cost * (1 + 1e-6) + 1e-12:
        return (f"target cost {target_cost:.4g} per task cannot be reached on validation data: the cheapest operating "
                f"point costs {realised_cost:.4g}")
    return None
