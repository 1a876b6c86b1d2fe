"""Router evaluation against always-one-model, random, cheapest and the oracle: the accuracy-cost curve and
RouteLLM's metrics (PGR, APGR, CPT; see ``visroute.router.evaluate.metrics``), with every baseline also read at the
router's own strong-call share (or normalised cost), so a comparison is never between different budgets."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from visroute.router.decide.rules import choose, lambda_grid
from visroute.router.evaluate.policies import at_share, policy_curve, random_policy, reference


def realised(success: np.ndarray, cost: np.ndarray, picks: np.ndarray, weight: np.ndarray) -> tuple[float, float]:
    rows = np.arange(len(picks))
    s = np.nan_to_num(success[rows, picks], nan=0.0)
    c = np.nan_to_num(cost[rows, picks], nan=0.0)
    w = weight / weight.sum()
    return float((s * w).sum()), float((c * w).sum())


def evaluate_router(proba: np.ndarray, success: np.ndarray, cost: np.ndarray, models: list[str],
                    expected_costs: np.ndarray, weight: np.ndarray | None = None, lam: float | None = None,
                    seed: int = 0) -> dict:
    """Accuracy/cost of the router (over a lambda sweep and at ``lam``) and of the baselines on one split.

    ``success``/``cost`` are the realised outcomes (n, m); rows where a model did not run count as failures
    at zero cost only for that model (such rows should be rare: build tables from complete grids).
    """
    n, m = success.shape
    weight = np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64)
    singles = {}
    for j, name in enumerate(models):
        acc, c = realised(success, cost, np.full(n, j), weight)
        singles[name] = {"accuracy": acc, "cost": c}
    best_name = max(singles, key=lambda k: (singles[k]["accuracy"], -singles[k]["cost"]))
    cheap_name = min(singles, key=lambda k: (singles[k]["cost"], -singles[k]["accuracy"]))
    dear_name = max(singles, key=lambda k: singles[k]["cost"])
    rng = np.random.default_rng(seed)
    rand_acc, rand_cost = realised(success, cost, rng.integers(0, m, n), weight)
    # oracle: the cheapest model that gets the task right, else the cheapest model
    order = np.argsort(expected_costs, kind="stable")
    ok = np.nan_to_num(success[:, order], nan=0.0) >= 0.5
    first_ok = np.where(ok.any(1), order[np.argmax(ok, axis=1)], order[0])
    oracle_acc, oracle_cost = realised(success, cost, first_ok, weight)

    curve = []
    for lam_i in lambda_grid(proba, expected_costs):
        picks = choose(proba, expected_costs, lam_i)
        acc, c = realised(success, cost, picks, weight)
        curve.append({"lambda": float(lam_i), "accuracy": acc, "cost": c,
                      "share": {models[j]: float(np.mean(picks == j)) for j in range(m)}})
    pareto = _pareto(curve)
    best_acc, cheap_acc = singles[best_name]["accuracy"], singles[cheap_name]["accuracy"]
    best_cost = singles[best_name]["cost"]
    matching = [p for p in pareto if p["accuracy"] >= best_acc - 1e-12]
    match_cost = min((p["cost"] for p in matching), default=None)
    report = {
        "models": models,
        "single_models": singles,
        "best_single": best_name,
        "cheapest": cheap_name,
        "most_expensive": dear_name,
        "random": {"accuracy": rand_acc, "cost": rand_cost},
        "oracle": {"accuracy": oracle_acc, "cost": oracle_cost},
        "curve": curve,
        "pareto": pareto,
        "router_best_accuracy": max(p["accuracy"] for p in curve),
        "cost_to_match_best_single": match_cost,
        "cost_to_match_best_single_fraction_of_best": (match_cost / best_cost) if match_cost is not None and best_cost > 0 else None,
        "cost_to_match_best_single_fraction_of_most_expensive": (match_cost / singles[dear_name]["cost"])
        if match_cost is not None and singles[dear_name]["cost"] > 0 else None,
    }
    ref = reference(success, cost, np.asarray(expected_costs, np.float64), weight)
    curves = {}
    report["reference"] = ref.as_dict(models)
    report["routing_metrics"] = {}
    for name, p in (("router", proba), ("oracle", np.nan_to_num(success))):
        report["routing_metrics"][name], curves[name] = policy_curve(p, success, cost, expected_costs, weight, ref)
    report["routing_metrics"]["random"], curves["random"] = random_policy(ref)
    if lam is not None:
        picks = choose(proba, expected_costs, lam)
        acc, c = realised(success, cost, picks, weight)
        gap = ref.a_best - ref.a_cheap
        x = ref.x_of(picks, c, weight)
        report["operating_point"] = {
            "lambda": lam, "accuracy": acc, "cost": c, "x": x,
            "share": {models[j]: float(np.mean(picks == j)) for j in range(m)},
            "performance_gap_recovered": (acc - ref.a_cheap) / gap if gap > 0 else None,
            "oracle_gap_recovered": (acc - best_acc) / (oracle_acc - best_acc) if oracle_acc > best_acc else None,
            "at_equal_share": {k: at_share(curves[k], x, ref) for k in ("random", "oracle")},
        }
    return report


def _pareto(curve: list[dict]) -> list[dict]:
    pts = sorted(curve, key=lambda p: (p["cost"], -p["accuracy"]))
    out, best = [], -1.0
    for p in pts:
        if p["accuracy"] > best + 1e-12:
            out.append(p)
            best = p["accuracy"]
    return out


def plot_report(report: dict, path: str | Path, title: str = "visroute router: accuracy vs cost") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    aiq = report.get("aiq") or {}
    hulls = {"router": ("-", "tab:red", "router hull"), "zero_router": ("--", "grey", "single-model hull (zero router)"),
             "knn": (":", "tab:blue", "kNN hull"), "oracle": ("-.", "goldenrod", "oracle hull")}
    for name, (ls, col, label) in hulls.items():
        h = (aiq.get(name) or {}).get("hull")
        if h and h["cost"]:
            xs, ys = list(h["cost"]), list(h["accuracy"])
            ax.plot(xs + [max(s["cost"] for s in report["single_models"].values())], ys + [ys[-1]], ls, c=col, lw=1.5,
                    label=f"{label} (AIQ {aiq[name]['aiq']:.3f})")
    curve = report["pareto"]
    ax.plot([p["cost"] for p in curve], [p["accuracy"] for p in curve], "o", ms=2.5, c="tab:red", alpha=0.5,
            label="router (lambda sweep)")
    for name, s in report["single_models"].items():
        ax.scatter([s["cost"]], [s["accuracy"]], marker="s", s=40, label=f"always {name}")
    ax.scatter([report["random"]["cost"]], [report["random"]["accuracy"]], marker="x", s=50, c="grey", label="random (uniform pick)")
    if "operating_point" in report:
        op = report["operating_point"]
        ax.scatter([op["cost"]], [op["accuracy"]], marker="D", s=70, c="red", label="router (calibrated)")
        markers = {"random": ("x", "black"), "knn": ("v", "tab:blue"), "dataset_prior": ("^", "tab:green")}
        for name, pt in op.get("at_equal_share", {}).items():
            if name in markers:
                ax.scatter([pt["cost"]], [pt["accuracy"]], marker=markers[name][0], s=55, c=markers[name][1],
                           label=f"{name} at the router's share")
    costs = [s["cost"] for s in report["single_models"].values()]
    if min(costs) > 0 and max(costs) / min(costs) > 3:
        ax.set_xscale("log")  # per-call prices span orders of magnitude
    ax.set_xlabel("mean cost per task" + (" (log scale)" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
