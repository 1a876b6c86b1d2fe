"""IN-SAMPLE upper bounds of the answer-agreement strategies on a (tasks, models) table: how far above the
single-model hull the best of every agreement cascade (and every 2-of-3 vote) gets when the configurations are
picked knowing the outcomes. An optimistic ceiling, never a result: if even it falls short of a goal, no choice
of these strategies' configurations reaches the goal on these tasks.

Each configuration is run with the product's own cascade (``strategies.cascade`` on ``agreement_confidence``):
the first stage never stops, a later stage stops when its answer agrees with all (threshold 1) or at least half
(threshold 0.5, a strict majority of the answers so far) of the earlier answers, the last stage always answers,
and every call made is paid. The hull is ``aiq.upper_hull`` over every configuration's (mean normalised cost,
accuracy) point together with the single models', costs normalised as RouterBench's AIQ does (the cheapest and
the dearest single model's mean cost per task).
"""

from __future__ import annotations

import itertools

import numpy as np

from visroute.router.decide.strategies import agreement_confidence, cascade
from visroute.router.evaluate.aiq import hull_area, hull_cost_to, hull_value, upper_hull

VARIANTS = {"all agree": 1.0, "majority": 0.5}


def stage_lists(costs) -> list[tuple[int, ...]]:
    """Every cascade considered: 2 or 3 models in cost order, and 2 or 3 models in cost order followed by any
    other model as the final stage (cheap models agreeing, else e.g. the dearest one); each once."""
    order = [int(j) for j in np.argsort(np.asarray(costs, np.float64), kind="stable")]
    out: dict[tuple[int, ...], None] = {}
    for k in (2, 3):
        for group in itertools.combinations(order, k):
            out[group] = None
            for f in order:
                if f not in group:
                    out[group + (f,)] = None
    return list(out)


def agreement_outcome(S, C, A, stages, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per task (success, cost of every call) of the agreement cascade over ``stages`` at ``threshold``."""
    conf = agreement_confidence(A, list(stages), np.zeros(np.shape(S)))
    out = cascade(S, C, conf, list(stages), threshold)
    return out["success"], out["cost"]


def vote_outcome(S, C, A, trio, accuracy) -> tuple[np.ndarray, np.ndarray]:
    """All three of ``trio`` called: the answer at least two give wins (the response of the more accurate of
    those, by ``accuracy``), else the most accurate model's response. Cost: the three calls."""
    trio = sorted(trio, key=lambda j: -accuracy[j])
    n = len(S)
    pick = np.full(n, trio[0])
    done = np.zeros(n, bool)
    for j in trio:  # most accurate first: the first one with a partner is the response returned
        a = A[:, j]
        partner = np.any([(A[:, i] == a) for i in trio if i != j], axis=0) & (a != "")
        take = partner & ~done
        pick[take], done = j, done | take
    rows = np.arange(n)
    return np.nan_to_num(S[rows, pick]), np.nan_to_num(C[:, list(trio)]).sum(1)


def configurations(S, C, A, votes: bool = True) -> tuple[list[tuple[str, tuple[int, ...]]], np.ndarray, np.ndarray]:
    """Every configuration as (family, models) and its per-task (success, cost), shape (configurations, tasks):
    each stage list of ``stage_lists`` under both ``VARIANTS``, and every trio's 2-of-3 vote."""
    costs, acc = C.mean(0), S.mean(0)
    labels, Ss, Cs = [], [], []
    for stages in stage_lists(costs):
        for name, t in VARIANTS.items():
            s, c = agreement_outcome(S, C, A, stages, t)
            labels.append((name, stages))
            Ss.append(s), Cs.append(c)
    if votes:
        for trio in itertools.combinations(range(S.shape[1]), 3):
            s, c = vote_outcome(S, C, A, trio, acc)
            labels.append(("vote 2 of 3", trio))
            Ss.append(s), Cs.append(c)
    return labels, np.array(Ss, np.float64).reshape(-1, len(S)), np.array(Cs, np.float64).reshape(-1, len(S))


def frontier(acc_p, cost_p, S, C) -> dict:
    """Policies' points (mean accuracy ``acc_p``, mean cost ``cost_p``) against the single models of (S, C):
    the AIQ gain of their hull together with the single models over the single-model hull, the cost to reach
    the best single model's accuracy (share of its cost; None: never), the largest accuracy gap above the
    single-model hull and where (normalised cost), and which points are hull vertices above that hull."""
    acc, mc = S.mean(0), C.mean(0)
    lo, span = mc.min(), mc.max() - mc.min()
    xs, xp = (mc - lo) / span, (np.asarray(cost_p, np.float64) - lo) / span
    x, a = np.r_[xs, xp], np.r_[acc, np.asarray(acc_p, np.float64)]
    zero = hull_area(xs, acc)
    hx, hy = upper_hull(np.maximum(x, 0), a)
    sx, sy = upper_hull(np.maximum(xs, 0), acc)
    b = int(max(range(len(acc)), key=lambda j: (acc[j], -mc[j])))
    xr = hull_cost_to(hx, hy, acc[b])
    gaps = [(hull_value(hx, hy, v) - (hull_value(sx, sy, v) or 0.0), v) for v in np.r_[hx, sx] if 0 <= v <= 1
            and hull_value(hx, hy, v) is not None]
    gap, at = max(gaps) if gaps else (0.0, 0.0)
    on = [int(i) - len(acc) for i in range(len(acc), len(x))  # policy points on the hull above the single models'
          if np.any(np.isclose(max(x[i], 0.0), hx, rtol=0, atol=1e-12) & np.isclose(a[i], hy, rtol=0, atol=1e-12))
          and a[i] > (hull_value(sx, sy, max(x[i], 0.0)) or -np.inf) + 1e-12]
    return {"zero": zero, "gain": hull_area(x, a) - zero, "gap": float(gap), "gap_at": float(at),
            "cost_to_best": None if xr is None else float((lo + xr * span) / mc[b]), "vertices": on,
            "hull": (hx, hy)}


def held_out(Ss, Cs, S, C, seeds: int = 5) -> np.ndarray:
    """How much of the in-sample ceiling survives choosing: per seed and direction, the configurations on the
    hull of one random half of the tasks, scored on the other half. Rows (gain of those chosen configurations,
    in-sample gain of every configuration) on the scoring half, one per seed and direction."""
    rows = []
    for seed in range(seeds):
        half = np.random.default_rng(seed).permutation(len(S)) < len(S) // 2
        for fit, score in ((half, ~half), (~half, half)):
            chosen = frontier(Ss[:, fit].mean(1), Cs[:, fit].mean(1), S[fit], C[fit])["vertices"]
            Sb, Cb = Ss[:, score], Cs[:, score]
            rows.append((frontier(Sb[chosen].mean(1), Cb[chosen].mean(1), S[score], C[score])["gain"],
                         frontier(Sb.mean(1), Cb.mean(1), S[score], C[score])["gain"]))
    return np.array(rows)
