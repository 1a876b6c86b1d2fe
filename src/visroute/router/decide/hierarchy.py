"""Hierarchical routing as a decision: first a family of models, then the model within it.

**Families.** Where the records carry pipeline specs, contrastive image-text heads (CLIP zero-shot,
descriptions, clip-options) form the "contrastive" family and VLM / VLM+LLM heads the "generative" one. Where
they do not tell models apart (public LLM tables such as RouterBench record no pipeline), models are split into
two cost tiers at the widest gap between their log costs ("cheap" / "dear"), so the first stage still decides
the question that costs most to get wrong: pay for a dear model or not.

**Decision.** Stage one predicts, per family, whether any of its models succeeds (a router of the bundle's kind
trained on that target) and picks a family by predicted success - lambda x the family's mean cost; stage two
picks within the family with the bundle's own router by the same rule over the family's models. One model is
called per task, so its cost is that call's.
"""

from __future__ import annotations

import numpy as np

from visroute.router.decide.rules import choose


def pipeline_families(models: list[str], pipelines: dict) -> list[str]:
    """Per model "contrastive" | "generative" from its recorded pipeline specs ("unknown" where none is)."""
    from visroute.pipeline.heads import HEADS

    out = []
    for m in models:
        specs = (pipelines or {}).get(m) or {}
        heads = {str(s.get("head", "zeroshot")) for s in specs.values() if isinstance(s, dict)}
        if not heads:
            out.append("unknown")
        elif all(h in HEADS and HEADS[h].family == "contrastive" for h in heads):
            out.append("contrastive")
        else:
            out.append("generative")
    return out


def cost_tiers(costs: np.ndarray) -> list[str]:
    """Two tiers split at the widest gap between sorted log costs ("cheap" below it, "dear" above); one tier
    ("all") when every model costs the same."""
    c = np.log(np.maximum(np.asarray(costs, np.float64), 1e-12))
    order = np.argsort(c, kind="stable")
    gaps = np.diff(c[order])
    if not len(gaps) or gaps.max() <= 1e-9:
        return ["all"] * len(c)
    cut = c[order][int(np.argmax(gaps))]
    return ["cheap" if v <= cut else "dear" for v in c]


def model_families(models: list[str], pipelines: dict, costs: np.ndarray) -> list[str]:
    """Families from the pipeline specs when they name at least two and no model is unknown; else cost tiers."""
    fam = pipeline_families(models, pipelines)
    if "unknown" not in fam and len(set(fam)) >= 2:
        return fam
    return cost_tiers(costs)


def family_names(families: list[str]) -> list[str]:
    """The stage-one columns, in a fixed order (sorted names)."""
    return sorted(set(families))


def family_targets(success: np.ndarray, families: list[str]) -> np.ndarray:
    """(tasks, families): whether any model of the family succeeded (NaN where none of them was run)."""
    success = np.asarray(success, np.float64)
    cols = []
    for f in family_names(families):
        idx = [j for j, g in enumerate(families) if g == f]
        sub = success[:, idx]
        seen = ~np.isnan(sub).all(axis=1)
        col = np.full(len(success), np.nan)
        col[seen] = np.nanmax(sub[seen], axis=1)
        cols.append(col)
    return np.stack(cols, axis=1)


def hierarchy_picks(family_proba: np.ndarray, proba: np.ndarray, costs: np.ndarray, families: list[str],
                    lam: float) -> np.ndarray:
    """One model index per task: the family by predicted success - lam x its mean cost, then the model within
    it by the router's predicted success - lam x cost."""
    costs = np.asarray(costs, np.float64)
    names = family_names(families)
    members = [np.array([j for j, g in enumerate(families) if g == f]) for f in names]
    fam = choose(np.asarray(family_proba, np.float64), np.array([costs[m].mean() for m in members]), lam)
    out = np.empty(len(proba), np.int64)
    for k, idx in enumerate(members):
        rows = fam == k
        if rows.any():
            out[rows] = idx[choose(np.asarray(proba, np.float64)[rows][:, idx], costs[idx], lam)]
    return out
