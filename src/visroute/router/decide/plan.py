"""Strategies a trained bundle can carry: ``router`` (one call), ``cascade`` (cheap first, escalate while unsure),
``ensemble`` (two calls when the router cannot tell the top two apart) and ``hierarchy`` (a family of models
first, then the model within it: one call; ``visroute.router.decide.hierarchy``). One plan per task says which models
to call in which order and when to stop; evaluation, ``visroute route``, ``Router.route``, ``/v1/route`` and the
proxy all follow it, and cost counts every call made.

**Confidence.** A cascade stops at the first stage whose confidence reaches the threshold. Where a stage's answer
carries the model's own signal (a contrastive head's top probability, the record ``score``), that is the
confidence; otherwise it is the router's predicted success of that stage's model, which is known before the
call. A cascade may instead stop when answers agree: the models' answers to the task (``"agreement"``), or one
model's answers under each of its measured prompt variants (``"variants"``, ``visroute.router.decide.variants``:
that stage calls every variant and pays for each). The threshold (cascade) or margin (ensemble) is calibrated on
validation data: for ``target_cost`` the most escalation whose validation cost per task stays within it,
otherwise the best validation accuracy.
"""

from __future__ import annotations

import numpy as np

from visroute.errors import VisrouteError
from visroute.router.decide.rules import choose, pick_within_target, unreachable
from visroute.router.decide.strategies import (agreement_confidence, agreement_share, agreement_subchains, cascade,
                                               ensemble, has_answers, pareto_chain)
from visroute.router.decide.variants import variant_stage_arrays

STRATEGIES = ("router", "cascade", "ensemble", "hierarchy")
CASCADE_CONFIDENCES = ("router", "score", "agreement", "variants")  # what a cascade stage's confidence is
DEFAULT_MARGIN = 0.05  # an ensemble curve's margin where none was calibrated


def fit_strategy(kind: str, proba: np.ndarray, success: np.ndarray, cost: np.ndarray, expected_costs: np.ndarray,
                 train_success: np.ndarray, lam: float, target_cost: float | None = None,
                 score: np.ndarray | None = None, answers: np.ndarray | None = None, consensus=None) -> dict:
    """The strategy's parameters, calibrated on validation rows (``proba``: the router's predictions there;
    ``answers``: the models' answer keys, where the records carry them, for a cascade that stops on agreement;
    ``consensus``: the rows' prompt-variant votes, ``variants.table_consensus``)."""
    if kind not in STRATEGIES:
        raise VisrouteError(f"unknown strategy '{kind}' ({', '.join(STRATEGIES)})")
    if kind == "router":
        return {"kind": "router"}
    if kind == "hierarchy":
        raise VisrouteError("a hierarchy is fitted with its family router (RouterBundle / train_bundle)")
    conf = confidence(proba, score)
    if kind == "cascade":
        chain = pareto_chain(expected_costs, np.nanmean(train_success, axis=0))
        points = cascade_points(chain, proba, success, cost, score, answers, consensus)
        i = int(pick_within_target(np.arange(len(points)), np.array([r["success"].mean() for *_, r in points]),
                      np.array([r["cost"].mean() for *_, r in points]), target_cost))
        sub, mode, t, _ = points[i]
        return {"kind": "cascade", "chain": [int(j) for j in sub], "threshold": t, "confidence": mode}
    margins = np.unique(np.r_[0.0, np.quantile(np.abs(proba - proba.max(1, keepdims=True)), np.linspace(0, 1, 40))])
    res = [ensemble(proba, success, cost, expected_costs, lam, m, conf) for m in margins]
    m = pick_within_target(margins, np.array([r["success"].mean() for r in res]), np.array([r["cost"].mean() for r in res]), target_cost)
    return {"kind": "ensemble", "margin": m, "lambda": lam}


def cascade_points(chain: list[int], proba, success, cost, score=None, answers=None, consensus=None) -> list[tuple]:
    """Every (stages, confidence kind, threshold, outcomes) a cascade may be calibrated to: the whole chain on
    the models' own scores or the router's predicted success; where the rows carry answers, the agreement
    sub-chains (``strategies.agreement_subchains``) stopping when answers agree; where an earlier stage was
    measured under several prompt variants, the whole chain stopping when its variants agree (``variants``)."""
    base = "score" if score is not None and np.isfinite(score).any() else "router"
    configs = [(list(chain), base)]
    if has_answers(answers, chain):
        configs += [(sub, "agreement") for sub in agreement_subchains(list(chain))]
    if consensus is not None and consensus.stages(list(chain)):
        configs.append((list(chain), "variants"))
    out = []
    for sub, mode in configs:
        conf, s, c, k = cascade_arrays({"chain": sub, "confidence": mode}, proba, success, cost, score, answers,
                                       consensus)
        out += [(sub, mode, float(t), cascade(s, c, conf, sub, t, k)) for t in thresholds(conf, sub)]
    return out


def cascade_arrays(strategy: dict, proba, success, cost, score=None, answers=None, consensus=None):
    """(confidence, success, cost, calls) per task and model that a cascade is scored on: agreement of the answers
    where the strategy stops on it and the rows carry answers; the prompt-variant vote (its share, kept answer and
    every variant's call) at the earlier stages that have one; else the models' own scores or the router's
    predicted success, with each row's own call (calls None: one per stage)."""
    conf = confidence(proba, score)
    mode = strategy.get("confidence")
    if mode == "agreement" and answers is not None:
        return agreement_confidence(answers, strategy["chain"], conf), success, cost, None
    if mode == "variants" and consensus is not None:
        return variant_stage_arrays(list(strategy["chain"]), conf, success, cost, consensus)
    return conf, success, cost, None


def confidence(proba: np.ndarray, score: np.ndarray | None) -> np.ndarray:
    """Per task and model: the model's own score where the records have one, else the router's predicted success."""
    if score is None:
        return np.asarray(proba, np.float64)
    return np.where(np.isfinite(score), score, proba)


def thresholds(conf: np.ndarray, chain: list[int], n: int = 60) -> np.ndarray:
    vals = conf[:, chain[:-1]].ravel() if len(chain) > 1 else np.zeros(0)
    vals = vals[np.isfinite(vals)]
    return np.r_[-np.inf, np.unique(np.quantile(vals, np.linspace(0, 1, n))) if len(vals) else [], np.inf]


def outcomes(strategy: dict, proba: np.ndarray, success: np.ndarray, cost: np.ndarray, expected_costs: np.ndarray,
             lam: float, score: np.ndarray | None = None, family_proba: np.ndarray | None = None,
             answers: np.ndarray | None = None, consensus=None) -> dict:
    """Per task: answering model, success and the cost of every call, at the strategy's calibrated point
    (``family_proba``: a hierarchy's stage-one predictions)."""
    kind = strategy.get("kind", "router")
    if kind == "cascade":
        conf, s, c, k = cascade_arrays(strategy, proba, success, cost, score, answers, consensus)
        return cascade(s, c, conf, strategy["chain"], strategy["threshold"], k)
    if kind == "ensemble":
        return ensemble(proba, success, cost, expected_costs, strategy.get("lambda", lam), strategy["margin"],
                        confidence(proba, score))
    if kind == "hierarchy":  # one call per task, like the router: only the pick differs
        from visroute.router.decide.hierarchy import hierarchy_picks

        picks = hierarchy_picks(family_proba, proba, expected_costs, strategy["families"], lam)
    else:
        picks = choose(proba, expected_costs, lam)
    rows = np.arange(len(proba))
    return {"model": picks, "success": np.nan_to_num(success[rows, picks]), "cost": np.nan_to_num(cost[rows, picks])}


def sweep(strategy: dict, proba, success, cost, expected_costs, score=None, family_proba=None,
          answers=None, consensus=None) -> tuple[np.ndarray, np.ndarray]:
    """(points, tasks) success and cost over the strategy's sweep: a cascade's threshold, an ensemble's or a
    hierarchy's lambda."""
    kind = strategy.get("kind")
    conf = confidence(proba, score)
    if kind == "hierarchy":
        from visroute.router.decide.rules import lambda_grid

        res = [outcomes(strategy, proba, success, cost, expected_costs, lam, family_proba=family_proba)
               for lam in lambda_grid(proba, expected_costs, 100)]
    elif kind == "cascade":
        conf, s, c, k = cascade_arrays(strategy, proba, success, cost, score, answers, consensus)
        res = [cascade(s, c, conf, strategy["chain"], t, k) for t in thresholds(conf, strategy["chain"])]
    elif kind == "ensemble":  # the lambda sweep (cheap to dear) at the calibrated margin
        from visroute.router.decide.rules import lambda_grid

        m = float(strategy.get("margin", DEFAULT_MARGIN))
        res = [ensemble(proba, success, cost, expected_costs, lam, m, conf)
               for lam in lambda_grid(proba, expected_costs, 100)]
    else:
        raise VisrouteError(f"no sweep for strategy {kind!r}")
    return np.stack([r["success"] for r in res]), np.stack([r["cost"] for r in res])


def plan(strategy: dict, proba_row: np.ndarray, expected_costs: np.ndarray, lam: float,
         family_row: np.ndarray | None = None) -> dict:
    """What to call for one task: ``calls`` in order, and how to stop or pick (see ``run_plan``);
    ``family_row``: a hierarchy's stage-one predictions for the task."""
    kind = strategy.get("kind", "router")
    p = np.asarray(proba_row, np.float64)[None, :]
    if kind == "hierarchy":
        from visroute.router.decide.hierarchy import hierarchy_picks

        pick = hierarchy_picks(np.asarray(family_row, np.float64)[None, :], p, expected_costs, strategy["families"], lam)
        return {"kind": "hierarchy", "calls": [int(pick[0])]}
    if kind == "cascade":
        return {"kind": "cascade", "calls": list(strategy["chain"]), "threshold": strategy["threshold"],
                "confidence": strategy.get("confidence", "router")}
    first = int(choose(p, expected_costs, strategy.get("lambda", lam) if kind == "ensemble" else lam)[0])
    if kind == "ensemble":
        others = p[0].copy()
        others[first] = -np.inf
        second = int(np.argmax(others))
        both = abs(p[0, first] - p[0, second]) <= strategy["margin"]
        return {"kind": "ensemble", "calls": [first, second] if both else [first]}
    return {"kind": "router", "calls": [first]}


def run_plan(p: dict, proba_row: np.ndarray, call) -> dict:
    """Execute a plan: ``call(j)`` answers with model ``j`` and returns (prediction, own confidence or None).
    Returns the answering model index, its prediction and every call made (model, prediction, confidence)."""
    calls = []
    for pos, j in enumerate(p["calls"]):
        pred, own = call(j)
        conf = float(own) if own is not None and np.isfinite(own) else float(proba_row[j])
        if p.get("confidence") == "agreement" and pos:  # the share of earlier answers this one agrees with
            prev = [k for k in (answer_of(c["prediction"]) for c in calls) if k is not None]
            if (share := agreement_share(answer_of(pred), prev)) is not None:
                conf = share
        calls.append({"model": j, "prediction": pred, "confidence": conf})
        if p["kind"] == "cascade" and conf >= p["threshold"]:
            break
    answer = max(calls, key=lambda c: c["confidence"]) if p["kind"] == "ensemble" else calls[-1]
    return {"model": answer["model"], "prediction": answer["prediction"], "calls": calls}


def answer_of(pred):
    """What a call answered, comparable across models: the chosen option's index, else its raw answer's key."""
    if getattr(pred, "predicted", None) is not None:
        return pred.predicted
    from visroute.router.data.routerbench import answer_key

    raw = getattr(pred, "raw_answer", None)
    return answer_key(raw) if raw else None


def answer_without_signal(decision) -> str:
    """The model whose answer a plan keeps when no call reports its own confidence (an OpenAI-compatible chat
    answer): the router's predicted success decides, so the other calls need not be made."""
    p, proba = decision.plan, decision.predicted_accuracy
    if p.get("kind") == "cascade":
        return next((m for m in p["calls"][:-1] if proba[m] >= p["threshold"]), p["calls"][-1])
    if p.get("kind") == "ensemble":
        return max(p["calls"], key=lambda m: proba[m])  # ties: the first (the router's own choice)
    return decision.chosen


def fit_hierarchy(bundle, table, Xtr, kind: str, router_kw: dict | None, target_cost: float | None) -> None:
    """Stage one of a hierarchy (``visroute.router.decide.hierarchy``): a router of the same kind predicting
    whether any model of each family succeeds; with ``target_cost``, lambda becomes the most accurate one whose
    validation cost per task stays within it."""
    from visroute.router.decide.hierarchy import family_targets, model_families
    from visroute.router.decide.rules import lambda_grid
    from visroute.router.learn.kinds import ROUTER_KINDS

    train, val = table.part("train"), table.part("val")
    families = model_families(bundle.models, bundle.pipelines, bundle.costs)
    entry = ROUTER_KINDS[kind]
    bundle.family_router = entry.make(**(router_kw or {}))
    entry.fit(bundle.family_router, Xtr, family_targets(train.success, families), train.weight)
    bundle.strategy = {"kind": "hierarchy", "families": families}
    cal = val if len(val) else train
    imgs = bundle.table_images(cal)
    proba, fam = bundle.predict_proba(cal.text, imgs), bundle.family_proba(cal.text, imgs)
    if target_cost is not None and len(cal):
        lams = lambda_grid(proba, bundle.costs, 100)
        res = [outcomes(bundle.strategy, proba, cal.success, cal.cost, bundle.costs, lam, family_proba=fam) for lam in lams]
        bundle.lam = pick_within_target(lams, np.array([r["success"].mean() for r in res]), np.array([r["cost"].mean() for r in res]),
                           target_cost)
    out = outcomes(bundle.strategy, proba, cal.success, cal.cost, bundle.costs, bundle.lam, family_proba=fam)
    bundle.meta["strategy_calibration"] = calibration_record(out, len(cal), target_cost)


def calibration_record(out: dict, rows: int, target_cost: float | None) -> dict:
    """What a strategy reached on its calibration rows (``out``: ``outcomes`` there), saved in the bundle."""
    realised = float(out["cost"].mean()) if rows else 0.0
    return {"rows": rows, "target_cost": target_cost, "realised_cost": realised,
            "realised_accuracy": float(out["success"].mean()) if rows else None,
            "unreachable": unreachable(target_cost, None, realised, 0.0, "", rows)}
