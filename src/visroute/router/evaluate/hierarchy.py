"""Hierarchical routing (first the model family, then the model within it) and adding a model to a trained
matrix-factorisation router from a few hundred labelled tasks, each measured against its flat / fully retrained
counterpart on the same curves.

Families come from the pipeline specs the records were measured with: contrastive image-text heads (CLIP
zero-shot, descriptions, clip-options) form the "contrastive" family, VLM and VLM+LLM heads the "generative"
one. Stage one predicts, per family, whether any of its models succeeds and picks a family with the usual
accuracy-minus-lambda-cost rule (a family's cost: the mean of its models'); stage two is a router trained on
that family's models only.
"""

from __future__ import annotations

import numpy as np

from visroute.errors import VisrouteError
from visroute.router.decide.rules import choose, lambda_grid
from visroute.router.evaluate.metrics import sweep_metrics
from visroute.router.evaluate.policies import reference, sweep


def model_families(table) -> dict[str, str]:
    """Model -> "contrastive" | "generative" from the table's pipeline specs ("unknown" where none is recorded)."""
    from visroute.router.decide.hierarchy import pipeline_families

    return dict(zip(table.models, pipeline_families(table.models, table.meta.get("pipelines") or {})))


class HierarchicalRouter:
    """Family router, then one router per family (routers made by ``make_router(kind, **kw)``)."""

    def __init__(self, families: list[str], kind: str = "mlp", **kw):
        self.families, self.kind, self.kw = list(families), kind, kw

    def _make(self):
        from visroute.router.learn.kinds import make_router

        return make_router(self.kind, **self.kw)

    def fit(self, X, Y, sample_weight=None) -> "HierarchicalRouter":
        Y = np.asarray(Y, np.float32)
        self.names_ = sorted(set(self.families))
        if len(self.families) != Y.shape[1]:
            raise VisrouteError(f"{len(self.families)} families given for {Y.shape[1]} models")
        self.members_ = {f: [j for j, g in enumerate(self.families) if g == f] for f in self.names_}
        with np.errstate(all="ignore"):
            Yf = np.stack([np.nanmax(Y[:, self.members_[f]], axis=1) for f in self.names_], axis=1)
        self.family_router_ = self._make().fit(X, Yf, sample_weight=sample_weight)
        self.within_ = {f: self._make().fit(X, Y[:, idx], sample_weight=sample_weight) if len(idx) > 1 else None
                        for f, idx in self.members_.items()}
        return self

    def pick(self, X, costs: np.ndarray, lam: float, family_proba=None, within_proba=None) -> np.ndarray:
        """One model index per task: the family by predicted success - lam * mean family cost, then the model."""
        costs = np.asarray(costs, np.float64)
        pf = self.family_router_.predict_proba(X) if family_proba is None else family_proba
        fam_cost = np.array([costs[self.members_[f]].mean() for f in self.names_])
        fam = choose(pf, fam_cost, lam)
        out = np.empty(len(pf), np.int64)
        for k, f in enumerate(self.names_):
            rows = fam == k
            idx = self.members_[f]
            if len(idx) == 1:
                out[rows] = idx[0]
            elif rows.any():
                pw = (self.within_[f].predict_proba(X[rows]) if within_proba is None else within_proba[f][rows])
                out[rows] = np.asarray(idx)[choose(pw, costs[idx], lam)]
        return out

    def sweep(self, X, success, cost, costs, weight=None, n: int = 100) -> tuple[np.ndarray, np.ndarray]:
        w = np.ones(len(X)) if weight is None else np.asarray(weight, np.float64)
        w = w / w.sum()
        pf = self.family_router_.predict_proba(X)
        pw = {f: r.predict_proba(X) for f, r in self.within_.items() if r is not None}
        rows = np.arange(len(X))
        accs, spent = [], []
        for lam in lambda_grid(pf, np.asarray(costs), n):
            picks = self.pick(X, costs, lam, pf, pw)
            accs.append(float((np.nan_to_num(success[rows, picks]) * w).sum()))
            spent.append(float((np.nan_to_num(cost[rows, picks]) * w).sum()))
        return np.asarray(accs), np.asarray(spent)


def hierarchical_vs_flat(Xtr, Ytr, Xte, success, cost, costs, families: list[str], kind: str = "mlp",
                         wtr=None, wte=None, **kw) -> dict:
    """Metrics of a flat router and a hierarchical one of the same kind, on the normalised-cost axis."""
    from visroute.router.learn.kinds import make_router

    costs = np.asarray(costs, np.float64)
    ref = reference(success, cost, costs, wte)
    flat = make_router(kind, **kw).fit(Xtr, Ytr, sample_weight=wtr)
    w = np.ones(len(Xte)) if wte is None else wte
    fa, fc = sweep(flat.predict_proba(Xte), success, cost, costs, w)
    hier = HierarchicalRouter(families, kind, **kw).fit(Xtr, Ytr, sample_weight=wtr)
    ha, hc = hier.sweep(Xte, success, cost, costs, w)
    args = (ref.a_cheap, ref.c_cheap, ref.a_best, ref.c_best)
    return {"families": dict(zip(range(len(families)), families)), "flat": sweep_metrics(fa, fc, *args),
            "hierarchical": sweep_metrics(ha, hc, *args)}


def add_model_vs_retrain(Xtr, Ytr, Xte, Yte, new: int, n_tasks: int = 300, seed: int = 0, test_cost=None,
                         expected_costs=None, **kw) -> dict:
    """Model ``new`` joins an MF router trained without it, from ``n_tasks`` labelled training tasks
    (``add_model``), against an MF router retrained on everything. Reports, on test, the new model's success
    prediction quality (AUC, Brier), the largest change of the other models' predictions (0: untouched) and,
    given ``test_cost`` and ``expected_costs``, both routers' RouteLLM metrics."""
    from sklearn.metrics import brier_score_loss, roc_auc_score

    from visroute.router.learn.routers import MatrixFactorizationRouter

    m = Ytr.shape[1]
    keep = [j for j in range(m) if j != new]
    rng = np.random.default_rng(seed)
    labelled = np.flatnonzero(~np.isnan(Ytr[:, new]))
    few = rng.choice(labelled, size=min(n_tasks, len(labelled)), replace=False)
    base = MatrixFactorizationRouter(**kw).fit(Xtr, Ytr[:, keep])
    before = base.predict_proba(Xte)
    base.add_model(Xtr[few], Ytr[few, new])
    added = base.predict_proba(Xte)
    full = MatrixFactorizationRouter(**kw).fit(Xtr, Ytr).predict_proba(Xte)
    y = Yte[:, new]
    seen = ~np.isnan(y)
    yb = y[seen] >= 0.5

    def score(p):
        return {"auc": float(roc_auc_score(yb, p[seen])) if 0 < yb.mean() < 1 else None,
                "brier": float(brier_score_loss(yb, np.clip(p[seen], 0, 1)))}

    out = {"n_tasks": int(len(few)), "added": score(added[:, -1]), "retrained": score(full[:, new]),
           "others_unchanged_max_abs_diff": float(np.abs(added[:, :-1] - before).max()) if len(before) else 0.0}
    if test_cost is not None and expected_costs is not None:
        from visroute.router.evaluate.policies import policy_curve

        in_order = np.empty_like(added)
        in_order[:, keep], in_order[:, new] = added[:, :-1], added[:, -1]
        ref = reference(Yte, test_cost, np.asarray(expected_costs, np.float64))
        w = np.ones(len(Yte))
        out["added"]["routing"] = policy_curve(in_order, Yte, test_cost, expected_costs, w, ref)[0]
        out["retrained"]["routing"] = policy_curve(full, Yte, test_cost, expected_costs, w, ref)[0]
    return out
