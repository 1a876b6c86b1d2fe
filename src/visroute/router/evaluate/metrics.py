"""RouteLLM's routing metrics (PGR, APGR, CPT), computed on curves any policy can produce.

Definitions (arXiv 2406.18665, §4; the same numbers its ``routellm/evals/evaluate.py`` prints):

- **PGR** (performance gap recovered) of a policy at an operating point with accuracy ``A``:
  ``(A - A_cheap) / (A_best - A_cheap)``, with ``A_cheap`` / ``A_best`` the accuracy of always calling the
  cheap / strong model on the same split. 0 = no better than the cheap model, 1 = as good as the strong one.
- **Strong-call share** ``x``: the (weighted) share of tasks sent to the strong model.
- **APGR**: the area under PGR(x) for x in [0, 1].
  *Discrete* (RouteLLM's): the router's scores are cut at the 11 quantiles 0, 10, ..., 100 % (every task
  whose score is >= the cut goes to the strong model; none for the top cut), the accuracy at each realised
  share is integrated with the trapezoid rule and normalised by the same integral of the two constant lines.
  *Dense*: every distinct score is a cut, so the curve passes through every achievable share; tied scores
  are sent together and the curve is linear between cuts (the expectation of a random tie-break).
  A router that ranks tasks at random has APGR 0.5 in expectation (the diagonal); the oracle's curve is
  concave and lies above it.
- **CPT(p)** (call-performance threshold): the smallest strong-call share at which the dense curve
  recovers the fraction ``p`` of the gap (linear interpolation inside a segment); ``None`` when it never does.

**More than two models.** There is no single "strong model" to count calls to, so the axis becomes the
*normalised cost* ``x = (C - C_cheapest) / (C_best - C_cheapest)``, with "cheapest" the single model with the
lowest mean cost and "best" the single model with the highest accuracy on the split (ties: the cheaper),
and PGR is measured against the same two. A policy's curve is its sweep of operating points (e.g. the
lambda sweep of ``choose``) ordered by cost; it is clipped at x = 1 and held flat past its most expensive
point when that stays below 1. With two models whose per-call prices are fixed, the normalised cost equals
the strong-call share, so both definitions agree. Policies that pay for more than one call per task
(cascades, ensembles) are placed on the cost axis by what they spend.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHARES = tuple(round(0.1 * i, 1) for i in range(1, 10))


@dataclass
class Curve:
    """An accuracy/cost curve over an axis ``x`` in [0, 1] (strong-call share or normalised cost), sorted by x."""

    x: np.ndarray
    accuracy: np.ndarray
    cost: np.ndarray

    def at(self, x: float) -> tuple[float, float]:
        """(accuracy, cost) at ``x`` by linear interpolation (the curve is held flat past its ends)."""
        return float(np.interp(x, self.x, self.accuracy)), float(np.interp(x, self.x, self.cost))

    def clipped(self) -> "Curve":
        """The part over [0, 1], with points added at the ends (flat extension where the curve stops short)."""
        grid = np.unique(np.clip(np.r_[0.0, self.x, 1.0], 0.0, 1.0))
        return Curve(grid, np.interp(grid, self.x, self.accuracy), np.interp(grid, self.x, self.cost))


def _weights(n: int, weight) -> np.ndarray:
    w = np.ones(n) if weight is None else np.asarray(weight, np.float64)
    return w / w.sum() if w.sum() > 0 else np.full(n, 1.0 / max(n, 1))


def threshold_curve(score: np.ndarray, q_cheap: np.ndarray, q_strong: np.ndarray, c_cheap: np.ndarray,
                    c_strong: np.ndarray, weight=None) -> Curve:
    """The dense curve of a two-model policy that sends the tasks with the highest ``score`` to the strong model.

    One point per distinct score (ties move together), from "all cheap" (x=0) to "all strong" (x=1).
    """
    score = np.asarray(score, np.float64)
    w = _weights(len(score), weight)
    order = np.argsort(-score, kind="stable")
    s = score[order]
    gain_acc = (np.nan_to_num(q_strong) - np.nan_to_num(q_cheap))[order] * w[order]
    gain_cost = (np.nan_to_num(c_strong) - np.nan_to_num(c_cheap))[order] * w[order]
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1] if len(s) else np.array([], int)
    base_acc, base_cost = float((np.nan_to_num(q_cheap) * w).sum()), float((np.nan_to_num(c_cheap) * w).sum())
    x = np.r_[0.0, np.cumsum(w[order])[ends]] if len(s) else np.array([0.0, 1.0])
    acc = base_acc + np.r_[0.0, np.cumsum(gain_acc)[ends]] if len(s) else np.array([base_acc] * 2)
    cost = base_cost + np.r_[0.0, np.cumsum(gain_cost)[ends]] if len(s) else np.array([base_cost] * 2)
    return Curve(x, acc, cost)


def quantile_points(score: np.ndarray, q_cheap: np.ndarray, q_strong: np.ndarray, weight=None,
                    bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """RouteLLM's discrete evaluation: (strong share, accuracy) at the ``bins + 1`` quantile cuts of ``score``."""
    score = np.asarray(score, np.float64)
    w = _weights(len(score), weight)
    cuts = np.quantile(score, np.linspace(0, 1, bins + 1))
    xs, accs = [], []
    for i, t in enumerate(cuts):
        strong = score > t if i == len(cuts) - 1 else score >= t
        xs.append(float(w[strong].sum()))
        accs.append(float((np.where(strong, np.nan_to_num(q_strong), np.nan_to_num(q_cheap)) * w).sum()))
    order = np.argsort(xs, kind="stable")
    return np.asarray(xs)[order], np.asarray(accs)[order]


def points_curve(x: np.ndarray, accuracy: np.ndarray, cost: np.ndarray) -> Curve:
    """A curve through operating points (e.g. a lambda sweep): sorted by x, points at the same x averaged."""
    x, accuracy, cost = (np.asarray(a, np.float64) for a in (x, accuracy, cost))
    ux, inv = np.unique(x, return_inverse=True)
    cnt = np.bincount(inv)
    return Curve(ux, np.bincount(inv, accuracy) / cnt, np.bincount(inv, cost) / cnt)


def _area(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def apgr_dense(curve: Curve, a_cheap: float, a_best: float) -> float | None:
    """Area under PGR over x in [0, 1] of the piecewise-linear curve."""
    gap = a_best - a_cheap
    if not gap > 0:
        return None
    c = curve.clipped()
    return _area(c.x, (c.accuracy - a_cheap) / gap)


def apgr_discrete(x: np.ndarray, accuracy: np.ndarray, a_cheap: float, a_best: float) -> float | None:
    """RouteLLM's APGR: trapezoid area of the accuracy points over their shares, normalised by the areas of the
    cheap and strong constant lines over the same span."""
    gap = a_best - a_cheap
    span = float(x[-1] - x[0]) if len(x) > 1 else 0.0
    if not gap > 0 or span <= 0:
        return None
    return (_area(np.asarray(x), np.asarray(accuracy)) - a_cheap * span) / (gap * span)


def cpt(curve: Curve, fraction: float, a_cheap: float, a_best: float) -> float | None:
    """Smallest x at which the curve recovers ``fraction`` of the gap (None: never, or no gap)."""
    gap = a_best - a_cheap
    if not gap > 0:
        return None
    c = curve.clipped()
    target = a_cheap + fraction * gap
    above = np.flatnonzero(c.accuracy >= target - 1e-12)
    if not len(above):
        return None
    i = int(above[0])
    if i == 0:
        return float(c.x[0])
    x0, x1, y0, y1 = c.x[i - 1], c.x[i], c.accuracy[i - 1], c.accuracy[i]
    return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0)) if y1 != y0 else float(x1)


def summarise(curve: Curve, a_cheap: float, a_best: float, discrete: tuple[np.ndarray, np.ndarray] | None = None,
              share: float = 0.5) -> dict:
    """APGR (dense and, where given, discrete), CPT(50%), CPT(80%), PGR at 10..90 % and accuracy/cost at ``share``."""
    gap = a_best - a_cheap
    acc, cost = curve.clipped().at(share)
    return {
        "apgr": apgr_dense(curve, a_cheap, a_best),
        "apgr_discrete": apgr_discrete(*discrete, a_cheap, a_best) if discrete is not None else None,
        "cpt50": cpt(curve, 0.5, a_cheap, a_best),
        "cpt80": cpt(curve, 0.8, a_cheap, a_best),
        "pgr_at": {f"{s:.1f}": ((curve.clipped().at(s)[0] - a_cheap) / gap if gap > 0 else None) for s in SHARES},
        f"accuracy_at_{int(share * 100)}": acc,
        f"cost_at_{int(share * 100)}": cost,
    }


def two_model_metrics(score: np.ndarray, success: np.ndarray, cost: np.ndarray, cheap: int, strong: int,
                      weight=None) -> dict:
    """Metrics of a score-ranking policy between models ``cheap`` and ``strong`` (columns of success/cost)."""
    qc, qs, cc, cs = success[:, cheap], success[:, strong], cost[:, cheap], cost[:, strong]
    curve = threshold_curve(score, qc, qs, cc, cs, weight)
    w = _weights(len(score), weight)
    a_cheap, a_best = float((np.nan_to_num(qc) * w).sum()), float((np.nan_to_num(qs) * w).sum())
    out = summarise(curve, a_cheap, a_best, quantile_points(score, qc, qs, weight))
    out["axis"] = "strong_share"
    return out


def normalised_cost(cost: np.ndarray, c_cheap: float, c_best: float) -> np.ndarray:
    """Cost mapped to [0, 1] between the cheapest and the best single model (values may fall outside)."""
    span = c_best - c_cheap
    return (np.asarray(cost, np.float64) - c_cheap) / span if span > 0 else np.zeros_like(np.asarray(cost, np.float64))


def sweep_metrics(accuracy: np.ndarray, cost: np.ndarray, a_cheap: float, c_cheap: float, a_best: float,
                  c_best: float) -> dict:
    """Metrics of any policy given as operating points (accuracy, mean cost), on the normalised-cost axis.

    The discrete APGR here samples the curve at x = 0, 0.1, ..., 1 (the >2-model counterpart of the
    quantile cuts)."""
    x = normalised_cost(cost, c_cheap, c_best)
    curve = points_curve(np.r_[0.0, x], np.r_[a_cheap, accuracy], np.r_[c_cheap, cost])
    grid = np.linspace(0, 1, 11)
    disc = (grid, np.array([curve.clipped().at(g)[0] for g in grid]))
    out = summarise(curve, a_cheap, a_best, disc)
    out["axis"] = "normalised_cost"
    return out
