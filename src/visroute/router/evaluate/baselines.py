"""A trained router judged against the baselines it must beat, on one split of a routing table, all on the same
curves (RouteLLM's metrics, ``visroute.router.evaluate.metrics``) and all read at the router's own strong-call share:

- always cheapest / always the best single model, random at equal share, the oracle (``evaluate_router``);
- a kNN router on task-text embeddings trained on the same table (the simplest learned alternative);
- a dataset prior: each task routed by its dataset's (topic's) mean success in training, no text model;
- optionally an LLM asked to choose (``visroute.router.learn.llm_router``), its own call cost included.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from visroute.errors import VisrouteError
from visroute.router.evaluate.aiq import aiq_report, sweep_outcomes
from visroute.router.decide.bundle import RouterBundle
from visroute.router.decide.rules import choose, lambda_grid
from visroute.router.evaluate.curves import realised, evaluate_router
from visroute.router.evaluate.policies import at_share, dataset_prior, policy_curve, reference
from visroute.router.data.table import RoutingTable


def knn_proba(table: RoutingTable, part: str = "test", embedder=None, rule=None) -> np.ndarray:
    """Predictions of a kNN router on MiniLM text embeddings fitted on ``table``'s train split, for ``part``
    (texts as the router sees them: ``rule`` strips each dataset's shared affixes)."""
    from visroute.router.data.embed import TextEmbedder
    from visroute.router.learn.routers import KNNRouter

    train, test = table.part("train"), table.part(part)
    if len(train) == 0:
        raise VisrouteError("the routing table has no training rows for the kNN baseline")
    emb = embedder or TextEmbedder()
    f = rule.apply_all if rule is not None else list
    knn = KNNRouter().fit(emb.embed(f(train.text)), train.success, train.weight)
    return knn.predict_proba(emb.embed(f(test.text)))


def prior_proba(table: RoutingTable, part: str = "test") -> np.ndarray:
    train, test = table.part("train"), table.part(part)
    return dataset_prior(train.dataset, train.success, test.dataset, train.weight)


def add_baseline(report: dict, name: str, proba: np.ndarray, test: RoutingTable, costs: np.ndarray) -> None:
    """Score one more probability-predicting baseline into ``report``: its whole curve, and its accuracy at the
    router's operating point share."""
    ref = reference(test.success, test.cost, costs, test.weight)
    report["routing_metrics"][name], curve = policy_curve(proba, test.success, test.cost, costs, test.weight, ref)
    op = report.get("operating_point")
    if op is not None:
        op["at_equal_share"][name] = at_share(curve, op["x"], ref)


def llm_router_report(table: RoutingTable, test: RoutingTable, bundle: RouterBundle, router, proba: dict) -> dict:
    """The LLM router's accuracy and cost (its own calls included) on ``test``, beside every other policy read at
    the same share."""
    out = router.route(test.text, test.dataset)
    picks = out["picks"]
    acc, c = realised(test.success, test.cost, picks, test.weight)
    w = test.weight / test.weight.sum()
    extra = float((np.nan_to_num(out["router_cost"]) * w).sum())
    ref = reference(test.success, test.cost, bundle.costs, test.weight)
    x = ref.x_of(picks, c, test.weight)
    gap = ref.a_best - ref.a_cheap
    others = {}
    for name, p in proba.items():
        others[name] = at_share(policy_curve(p, test.success, test.cost, bundle.costs, test.weight, ref)[1], x, ref)
    return {"spec": router.generator.spec, "accuracy": acc, "cost_models": c, "cost_router_calls": extra,
            "cost": c + extra, "x": x, "pgr": (acc - ref.a_cheap) / gap if gap > 0 else None,
            "share": {m: float(np.mean(picks == j)) for j, m in enumerate(table.models)},
            "unparsed": out["unparsed"], "cached": out["cached"], "failed": out["failed"], "at_equal_share": others}


def evaluate_with_baselines(table: RoutingTable, bundle: RouterBundle, part: str = "test", llm_router=None,
                            n_boot: int = 200) -> dict:
    """The router's report on ``part`` (see ``evaluate_router``) with kNN and dataset-prior baselines, the
    calibration target beside the realised share, and the LLM router when one is given."""
    if bundle.models != table.models:
        raise VisrouteError(f"router models {bundle.models} differ from the table's {table.models}")
    test = table.part(part)
    if len(test) == 0:
        raise VisrouteError(f"the table has no '{part}' rows")
    images = bundle.table_images(test)
    proba = bundle.predict_proba(test.text, images)
    report = evaluate_router(proba, test.success, test.cost, table.models, bundle.costs, test.weight, bundle.lam)
    from visroute.router.decide.rules import apply_rule

    # the kNN baseline decides as a kNN bundle would: under the same decision rule
    baselines = {"knn": apply_rule(knn_proba(table, part, bundle._embedder(), bundle.text_rule), bundle.decision,
                                   bundle.costs),
                 "dataset_prior": prior_proba(table, part)}
    for name, p in baselines.items():
        add_baseline(report, name, p, test, bundle.costs)
    op = report["operating_point"]
    report["knn_baseline"] = {"operating_point": op["at_equal_share"]["knn"], **report["routing_metrics"]["knn"]}
    cal = bundle.meta.get("calibration") or {}
    if cal.get("target_share") is not None:
        cal = {**cal, "realised_share": op["share"].get(cal.get("heavy"))}
    elif cal.get("target_cost") is not None:
        cal = {**cal, "realised_cost": op["cost"]}
    report["calibration"] = cal or None
    if llm_router is not None:
        report["llm_router"] = llm_router_report(table, test, bundle, llm_router, {"router": proba, **baselines})
    report["router"] = {"kind": bundle.kind, "features": bundle.features, "part": part, "rows": len(test)}
    policies = {name: sweep_outcomes(sweep_picks(p, bundle.costs), test.success, test.cost)
                for name, p in {"router": proba, **baselines}.items()}
    fam = bundle.family_proba(test.text, images)  # a hierarchy's stage one (else None)
    from visroute.router.decide.variants import part_consensus

    votes = part_consensus(table, part)  # a "variants" cascade's prompt-variant votes (None without variants)
    policies.update(strategy_policies(table, bundle, proba, test, fam, votes))
    if bundle.strategy.get("kind", "router") != "router":
        from visroute.router.decide.plan import outcomes

        out = outcomes(bundle.strategy, proba, test.success, test.cost, bundle.costs, bundle.lam, test.score, fam,
                       test.answer, votes)
        w = test.weight / test.weight.sum()
        report["strategy"] = {**bundle.strategy, "accuracy": float((out["success"] * w).sum()),
                              "cost": float((out["cost"] * w).sum()),
                              "calls_per_task": _calls(bundle.strategy, out, test.weight),
                              "calibration": bundle.meta.get("strategy_calibration")}
    report["aiq"] = aiq_report(policies, test.success, test.cost, test.weight, n_boot=n_boot)
    return report


def strategy_policies(table: RoutingTable, bundle: RouterBundle, proba: np.ndarray, test: RoutingTable,
                      family_proba: np.ndarray | None = None, consensus=None) -> dict:
    """The router's predictions run as a cascade (along the training chain) and as an ensemble, and a hierarchy
    bundle's two stages, each swept over its own parameter: (points, tasks) success and the cost of every call,
    for the same AIQ curves."""
    from visroute.router.decide.plan import sweep
    from visroute.router.decide.strategies import pareto_chain

    train = table.part("train")
    chain = pareto_chain(bundle.costs, np.nanmean(train.success, axis=0))
    from visroute.router.decide.plan import cascade_points

    # every threshold of the whole chain (and, where the rows carry answers, of the agreement sub-chains; where a
    # stage has prompt variants, of their votes); a one-model chain (the cheapest is also the best) is that model
    pts = cascade_points(chain, proba, test.success, test.cost, test.score, test.answer, consensus)
    out = {"cascade": (np.stack([r["success"] for *_, r in pts]), np.stack([r["cost"] for *_, r in pts]))}
    ens = bundle.strategy if bundle.strategy.get("kind") == "ensemble" else {"kind": "ensemble"}
    out["ensemble"] = sweep(ens, proba, test.success, test.cost, bundle.costs, test.score)
    if family_proba is not None:
        out["hierarchy"] = sweep(bundle.strategy, proba, test.success, test.cost, bundle.costs,
                                 family_proba=family_proba)
    return out


def _calls(strategy: dict, out: dict, weight: np.ndarray) -> float:
    """Model calls per task (weighted mean) at the strategy's calibrated point: an ensemble's one or two; a
    cascade's as it counted them (each prompt variant a call); one otherwise."""
    w = weight / weight.sum()
    if strategy["kind"] == "ensemble":
        return float(((1 + out["both"]) * w).sum())
    return float((out["calls"] * w).sum()) if "calls" in out else 1.0


def sweep_picks(proba: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """Model picks (lambdas x tasks) of ``choose`` over the lambda sweep: a router's operating points."""
    return np.stack([choose(proba, costs, lam) for lam in lambda_grid(proba, costs)])


def evaluate_router_dir(table_dir: Path, router_dir: Path, out: Path, part: str = "test", llm_spec: str | None = None,
                        llm_prices: Path | None = None) -> dict:
    """Load a table and a trained router, evaluate on ``part``, write ``out``/report.json and ``out``/curve.png."""
    from visroute.eval.results import write_json
    from visroute.router.evaluate.curves import plot_report

    table, bundle = RoutingTable.load(table_dir), RouterBundle.load(router_dir)
    llm = None
    if llm_spec:
        from visroute.router.learn.llm_router import LLMRouter, model_cards

        llm = LLMRouter.from_spec(llm_spec, model_cards(table), llm_prices)
    report = evaluate_with_baselines(table, bundle, part, llm)
    report["router"]["dir"] = str(router_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report)
    plot_report(report, out / "curve.png", title=f"visroute {bundle.kind} router on {part} ({len(table.part(part))} tasks)")
    return report
