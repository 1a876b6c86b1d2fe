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
    best_acc = singles[best_name]["accuracy"]
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
    """Accuracy-cost plot of a router report, saved as PNG (``report_figure`` builds it)."""
    from visroute.io import save_figure

    return save_figure(report_figure(report, title), path)


def report_figure(report: dict, title: str = "visroute router: accuracy vs cost"):
    """Readable by construction: the legend sits outside the axes; the cost axis is logarithmic when costs span
    more than a factor of 20 and says its unit; markers that land on one spot are fanned out a few points
    around it (and say so), so none hides another; a one-point router sweep is drawn as a large marker; the
    single models' hull (the best accuracy any one model reaches at each cost) is a dashed step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.transforms import offset_copy

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
    cx, cy = [p["cost"] for p in curve], [p["accuracy"] for p in curve]
    ax.plot(cx, cy, "-o", ms=4 if len(curve) > 1 else 9, lw=1.5, color="tab:red", alpha=0.8, zorder=3,
            label="router (lambda sweep)" + (", one point" if len(curve) == 1 else ""))
    singles = sorted(report["single_models"].items(), key=lambda kv: kv[1]["cost"])
    hull, best = [], -1.0
    for _, s in singles:
        if s["accuracy"] > best:
            hull.append((s["cost"], s["accuracy"]))
            best = s["accuracy"]
    if len(hull) > 1 and not aiq:   # with AIQ hulls in the report, the zero-router hull above is this line
        ax.step(*zip(*hull), where="post", ls="--", lw=1, color="grey", zorder=2, label="single models' hull")
    points = [(f"always {name}", s["cost"], s["accuracy"], "s", None) for name, s in singles]
    points += [("random (uniform pick)", report["random"]["cost"], report["random"]["accuracy"], "x", "grey"),
               ("oracle", report["oracle"]["cost"], report["oracle"]["accuracy"], "*", "gold")]
    if "operating_point" in report:
        op = report["operating_point"]
        points.append(("router (calibrated)", op["cost"], op["accuracy"], "D", "red"))
        markers = {"random": ("x", "black"), "knn": ("v", "tab:blue"), "dataset_prior": ("^", "tab:green")}
        points += [(f"{name} at the router's share", pt["cost"], pt["accuracy"], *markers[name])
                   for name, pt in op.get("at_equal_share", {}).items() if name in markers]
    costs = np.array([p[1] for p in points] + cx, dtype=float)
    positive = costs[np.isfinite(costs) & (costs > 0)]
    log_x = positive.size == costs[np.isfinite(costs)].size and positive.size > 0 and positive.max() > 20 * positive.min()
    if log_x:
        ax.set_xscale("log")
    # fan out markers that coincide (same spot to 1% of the axis span): a ring of a few points' radius
    xs = np.log10(costs[: len(points)]) if log_x else costs[: len(points)]
    ys = np.array([p[2] for p in points], dtype=float)
    span_x = max(np.nanmax(xs) - np.nanmin(xs), 1e-12) if len(xs) else 1.0
    span_y = max(np.nanmax(ys) - np.nanmin(ys), 1e-12) if len(ys) else 1.0
    groups: list[list[int]] = []
    for i in range(len(points)):
        for g in groups:
            j = g[0]
            if abs(xs[i] - xs[j]) <= 0.01 * span_x and abs(ys[i] - ys[j]) <= 0.01 * max(span_y, 0.05):
                g.append(i)
                break
        else:
            groups.append([i])
    shared = 0
    for g in groups:
        for k, i in enumerate(g):
            label, x, y, marker, color = points[i]
            dx, dy = ((7 * np.cos(2 * np.pi * k / len(g)), 7 * np.sin(2 * np.pi * k / len(g))) if len(g) > 1
                      else (0.0, 0.0))
            ax.scatter([x], [y], marker=marker, s=120 if marker == "*" else 50, c=color, zorder=4,
                       edgecolors="k" if marker not in ("x",) else None, linewidths=0.5,
                       transform=offset_copy(ax.transData, fig=fig, x=dx, y=dy, units="points"), label=label)
        shared += len(g) > 1
    if shared:
        ax.annotate(f"markers fanned out around the spot where {shared} group(s) of points coincide", (0.0, -0.18),
                    xycoords="axes fraction", fontsize=7, color="0.35", annotation_clip=False)
    # offset transforms keep the scatter out of autoscaling: take every point into the data limits by hand
    ax.update_datalim([(p[1], p[2]) for p in points if np.isfinite(p[1]) and np.isfinite(p[2])])
    ax.margins(x=0.08, y=0.1)
    ax.autoscale_view()
    ax.set_xlabel("mean cost per task ($ per task" + (", log scale)" if log_x else ")"))
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig
