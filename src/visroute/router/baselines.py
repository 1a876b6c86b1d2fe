"""A trained router judged against baselines on one split of a routing table: always-one-model, random, oracle
(from ``evaluate_router``) and a kNN router on task-text embeddings trained on the same table, so a learned
router has to beat the simplest learned alternative, not only the fixed policies."""

from __future__ import annotations

from pathlib import Path

from visroute.errors import VisrouteError
from visroute.router.bundle import RouterBundle
from visroute.router.evaluate import evaluate_router
from visroute.router.table import RoutingTable


def knn_baseline(table: RoutingTable, bundle: RouterBundle, part: str = "test") -> dict:
    """A kNN router on MiniLM text embeddings, fitted on ``table``'s train split and scored on ``part`` with the
    bundle's model costs and lambda: its operating point, best accuracy and cost to match the best single model."""
    from visroute.router.embed import TextEmbedder
    from visroute.router.routers import KNNRouter

    train, test = table.part("train"), table.part(part)
    if len(train) == 0:
        raise VisrouteError("the routing table has no training rows for the kNN baseline")
    emb = TextEmbedder()
    knn = KNNRouter().fit(emb.embed(train.text), train.success, train.weight)
    res = evaluate_router(knn.predict_proba(emb.embed(test.text)), test.success, test.cost, table.models, bundle.costs,
                          test.weight, bundle.lam)
    return {k: res[k] for k in ("operating_point", "router_best_accuracy", "cost_to_match_best_single")}


def evaluate_with_baselines(table: RoutingTable, bundle: RouterBundle, part: str = "test") -> dict:
    """The router's report on ``part`` (see ``evaluate_router``) with the kNN baseline under ``knn_baseline``."""
    if bundle.models != table.models:
        raise VisrouteError(f"router models {bundle.models} differ from the table's {table.models}")
    test = table.part(part)
    if len(test) == 0:
        raise VisrouteError(f"the table has no '{part}' rows")
    proba = bundle.predict_proba(test.text, bundle.table_images(test))
    report = evaluate_router(proba, test.success, test.cost, table.models, bundle.costs, test.weight, bundle.lam)
    report["knn_baseline"] = knn_baseline(table, bundle, part)
    report["router"] = {"kind": bundle.kind, "features": bundle.features, "part": part, "rows": len(test)}
    return report


def evaluate_router_dir(table_dir: Path, router_dir: Path, out: Path, part: str = "test") -> dict:
    """Load a table and a trained router, evaluate on ``part``, write ``out``/report.json and ``out``/curve.png."""
    from visroute.eval.results import write_json
    from visroute.router.evaluate import plot_report

    table, bundle = RoutingTable.load(table_dir), RouterBundle.load(router_dir)
    report = evaluate_with_baselines(table, bundle, part)
    report["router"]["dir"] = str(router_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report)
    plot_report(report, out / "curve.png", title=f"visroute {bundle.kind} router on {part} ({len(table.part(part))} tasks)")
    return report
