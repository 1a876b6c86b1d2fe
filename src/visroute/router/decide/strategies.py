"""Routing beyond one call per task: cascades (try cheap first, escalate when unsure) and ensembles (ask two
models when the router cannot tell them apart). Both are scored on the same cost axis as every router, and
their cost counts every call they make, task by task.

**Confidence.** A cascade decides after seeing the cheap model's output, so its confidence may be any per-model
signal available once that model has run: the record ``score`` column (the CLIP probability margin of a
contrastive head, the answer probability of a VLM) or agreement over prompt variants, aligned to the table by
``record_confidence``; without one, the router's predicted success is used (then a cascade can only match the
router it wraps while paying for the extra calls, which the reports show).

**Ensemble outcome.** Two answers that agree are both right or both wrong; when they differ, the more confident
one is returned. On records that say only whether each answer was right, that is the outcome of the more
confident model, which is how it is scored here.
"""

from __future__ import annotations

import itertools

import numpy as np

from visroute.router.decide.rules import choose, pareto_chain  # noqa: F401 - pareto_chain: the stages' order


def cascade(success: np.ndarray, cost: np.ndarray, confidence: np.ndarray, chain: list[int],
            threshold: float, calls: np.ndarray | None = None) -> dict:
    """Call ``chain`` in order and stop at the first model whose confidence is >= ``threshold`` (the last stage
    always answers). Per task: the answering model, its success, the summed cost of every call made and how many
    calls that was (``calls``: per task and model, the calls one stage makes; None: one each)."""
    n = len(success)
    answered = np.full(n, -1, np.int64)
    spent, made = np.zeros(n), np.zeros(n)
    for pos, j in enumerate(chain):
        active = answered < 0
        spent[active] += np.nan_to_num(cost[active, j])
        made[active] += 1 if calls is None else calls[active, j]
        stop = active & ((pos == len(chain) - 1) | (np.nan_to_num(confidence[:, j], nan=-np.inf) >= threshold))
        answered[stop] = j
    rows = np.arange(n)
    return {"model": answered, "success": np.nan_to_num(success[rows, answered]), "cost": spent, "calls": made}


def agreement_confidence(answers: np.ndarray, chain: list[int], base: np.ndarray) -> np.ndarray:
    """Per task and model, a cascade stage's confidence from the answers themselves: after the first stage, the
    share of the earlier stages' answers equal to this stage's (where this stage and an earlier one answered);
    ``base`` elsewhere (the first stage, and tasks without answers)."""
    conf = np.array(base, np.float64, copy=True)
    A = np.asarray(answers, dtype=object)
    for pos in range(1, len(chain)):
        j, prev = chain[pos], A[:, chain[:pos]]
        have = prev != ""
        ok = (A[:, j] != "") & have.any(axis=1)
        agree = ((prev == A[:, [j]]) & have).sum(axis=1)
        conf[ok, j] = agree[ok] / have[ok].sum(axis=1)
    return conf


def agreement_share(key, earlier: list) -> float | None:
    """One stage's agreement confidence at route time, as ``agreement_confidence`` computes it over a table: the
    share of the ``earlier`` answers equal to ``key``; None without an answer or an earlier one."""
    return sum(k == key for k in earlier) / len(earlier) if key is not None and earlier else None


AGREEMENT_POSITIONS = (0, -4, -3, -2, -1)  # the chain's cheapest stage and its four most accurate


def agreement_subchains(chain: list[int]) -> list[list[int]]:
    """The sub-chains an agreement cascade may run: every three of ``AGREEMENT_POSITIONS`` on the chain, in cost
    order. Three, because only a middle stage can stop on agreement (the first has no earlier answer, the last
    always answers); longer chains of weak models would stop on weak models agreeing on a wrong answer."""
    out = []
    for pos in itertools.combinations(AGREEMENT_POSITIONS, 3):
        sub = sorted({chain[p] for p in pos if -len(chain) <= p < len(chain)}, key=chain.index)
        if len(sub) == 3 and sub not in out:
            out.append(sub)
    return out


def has_answers(answers, chain: list[int]) -> bool:
    """Whether the records carry answers for at least two stages of ``chain`` (an agreement is possible)."""
    return answers is not None and len(chain) > 1 and int((np.asarray(answers, dtype=object)[:, chain] != "").any(0).sum()) >= 2


def _thresholds(confidence: np.ndarray, chain: list[int], n: int = 200) -> np.ndarray:
    vals = confidence[:, chain[:-1]].ravel()
    vals = vals[np.isfinite(vals)]
    qs = np.unique(np.quantile(vals, np.linspace(0, 1, n))) if len(vals) else np.array([])
    return np.r_[-np.inf, qs, np.inf]


def cascade_sweep(success, cost, confidence, chain, weight=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(accuracy, mean cost, share escalated past the first stage) over the threshold sweep."""
    w = np.ones(len(success)) if weight is None else np.asarray(weight, np.float64)
    w = w / w.sum()
    accs, costs, esc = [], [], []
    for t in _thresholds(confidence, chain):
        out = cascade(success, cost, confidence, chain, t)
        accs.append(float((out["success"] * w).sum()))
        costs.append(float((out["cost"] * w).sum()))
        esc.append(float(w[out["model"] != chain[0]].sum()))
    return np.asarray(accs), np.asarray(costs), np.asarray(esc)


def calibrate_cascade(success, cost, confidence, chain, target_cost: float, weight=None) -> float:
    """The highest threshold (most escalation) whose mean cost on this (validation) set is <= ``target_cost``."""
    w = np.ones(len(success)) if weight is None else np.asarray(weight, np.float64)
    ts = _thresholds(confidence, chain)
    ok = [t for t in ts if float((cascade(success, cost, confidence, chain, t)["cost"] * w).sum() / w.sum())
          <= target_cost + 1e-12]
    return float(max(ok)) if ok else float(-np.inf)


def ensemble(proba: np.ndarray, success: np.ndarray, cost: np.ndarray, expected_costs: np.ndarray, lam: float,
             margin: float, confidence: np.ndarray | None = None) -> dict:
    """The router's choice at ``lam``; when the best other model's predicted success is within ``margin`` of it,
    both are called and the more confident answer is kept (ties: the router's choice). Cost: both calls."""
    n = len(proba)
    rows = np.arange(n)
    conf = proba if confidence is None else confidence
    first = choose(proba, expected_costs, lam)
    others = np.array(proba, np.float64)
    others[rows, first] = -np.inf
    second = np.argmax(others, axis=1)
    both = np.abs(proba[rows, first] - proba[rows, second]) <= margin
    c1, c2 = np.nan_to_num(conf[rows, first], nan=-np.inf), np.nan_to_num(conf[rows, second], nan=-np.inf)
    kept = np.where(both & (c2 > c1), second, first)
    spent = np.nan_to_num(cost[rows, first]) + np.where(both, np.nan_to_num(cost[rows, second]), 0.0)
    return {"model": kept, "success": np.nan_to_num(success[rows, kept]), "cost": spent, "both": both}


def calibrate_margin(proba, success, cost, expected_costs, lam, target_cost: float, weight=None,
                     confidence=None) -> float:
    """The widest margin whose ensemble cost on this (validation) set is <= ``target_cost`` (0: never ask two)."""
    w = np.ones(len(proba)) if weight is None else np.asarray(weight, np.float64)
    rows = np.arange(len(proba))
    first = choose(proba, expected_costs, lam)
    others = np.array(proba, np.float64)
    others[rows, first] = -np.inf
    gaps = np.unique(np.abs(proba[rows, first] - others.max(axis=1)))
    best = 0.0
    lo, hi = 0, len(gaps) - 1
    while lo <= hi:  # cost grows with the margin: binary search for the widest margin within the target
        mid = (lo + hi) // 2
        out = ensemble(proba, success, cost, expected_costs, lam, float(gaps[mid]), confidence)
        if float((out["cost"] * w).sum() / w.sum()) <= target_cost + 1e-12:
            best, lo = float(gaps[mid]), mid + 1
        else:
            hi = mid - 1
    return best


def record_confidence(records, table) -> np.ndarray:
    """The records' ``score`` column aligned to the table's rows and models (NaN where none): the confidence a
    cascade may use once a model has run. Rows are matched on (dataset, prompt variant, task id); "*" records
    apply to every prompt variant."""
    cols = {c: records.column(c).to_numpy(zero_copy_only=False) for c in
            ("dataset", "prompt_variant", "task_id", "model", "score")}
    index = {(d, p, t): i for i, (d, p, t) in enumerate(zip(table.dataset, table.prompt, table.task_id))}
    star: dict[tuple[str, str], list[int]] = {}
    for i, (d, t) in enumerate(zip(table.dataset, table.task_id)):
        star.setdefault((str(d), str(t)), []).append(i)
    out = np.full((len(table), len(table.models)), np.nan)
    col = {m: j for j, m in enumerate(table.models)}
    for d, p, t, m, s in zip(*(cols[c] for c in ("dataset", "prompt_variant", "task_id", "model", "score"))):
        if m not in col or s is None:
            continue
        rows = star.get((str(d), str(t)), []) if p == "*" else [index.get((str(d), str(p), str(t)))]
        for r in rows:
            if r is not None:
                out[r, col[m]] = float(s)
    return out
