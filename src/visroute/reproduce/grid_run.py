"""Running a ``grid`` recipe (the seed paper): a benchmark grid written from the recipe, then the figures it aims
at: accuracy per task type, the abstract's findings, the size of the routing data, and a trained router's
accuracy and cost against every baseline (with the accuracy-cost plot)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from visroute.errors import VisrouteError
from visroute.reproduce.resolve import data_path


def grid_datasets(recipe, ctx) -> list[dict]:
    """``{"spec", "name", "task_type"}`` per dataset, with tiny stand-ins and task files written to the run folder."""
    from visroute.reproduce.data import filtered_manifest, task_file

    out = []
    for name, d in recipe.datasets.items():
        e = d[ctx.scale]
        if e.get("tasks"):
            spec = task_file(data_path(e["tasks"], ctx.data_root), ctx.out / "data" / f"{name}.jsonl", ctx.data_root,
                             from_package=e["tasks"].startswith("package:"))
        elif e.get("from"):
            spec = filtered_manifest(data_path(e["from"], ctx.data_root), ctx.out / "data" / f"{name}.csv",
                                     e.get("image", "path"), e.get("label", "label"), e.get("class_index") or [])
        else:
            spec = data_path(e["spec"], ctx.data_root)
        out.append({"spec": spec, "name": name, "task_type": d.get("task_type") or name})
    return out


def _substitute(value, models: dict):
    if isinstance(value, str):
        for alias, spec in models.items():
            value = value.replace("{models." + alias + "}", spec)
    return value


def write_grid(recipe, ctx, datasets: list[dict]) -> Path:
    """The grid YAML this run measures (kept in the run folder: ``visroute grid run`` re-runs it as it is)."""
    import yaml

    s = ctx.settings
    pipes = [{k: _substitute(v, ctx.models) for k, v in p.items()} for p in recipe.extra["pipelines"]]
    prefilter = next((p["model"] for p in pipes if p.get("head") == "zeroshot"), None)
    grid = {"output": str(ctx.out / "grid"), "limit": s.get("limit"), "max_tokens": int(s.get("max_tokens", 32)),
            "device": "cpu" if ctx.scale == "tiny" else "auto",
            "datasets": [{"spec": d["spec"], "name": d["name"]} for d in datasets], "models": pipes,
            "prompts": list(recipe.extra.get("prompts") or ["mcq"])}
    if s.get("prices"):
        prices = ctx.out / "prices.json"
        prices.write_text(json.dumps(s["prices"], indent=1), encoding="utf-8")
        grid["prices"] = str(prices)
    if s.get("options_top_k") and prefilter:
        grid.update(options_top_k=int(s["options_top_k"]), prefilter=prefilter)
    path = ctx.out / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False), encoding="utf-8")
    return path


def per_dataset(records) -> dict[tuple[str, str], dict]:
    """(pipeline, dataset) -> mean accuracy, mean cost and number of records."""
    model = np.asarray(records.column("model").to_pylist(), dtype=object)
    ds = np.asarray(records.column("dataset").to_pylist(), dtype=object)
    correct = np.asarray(records.column("correct").to_pylist(), dtype=np.float64)
    cost = np.nan_to_num(np.asarray(records.column("cost").to_pylist(), dtype=np.float64)) \
        if "cost" in records.column_names else np.zeros(len(model))
    out = {}
    for key in sorted(set(zip(model, ds))):
        sel = (model == key[0]) & (ds == key[1])
        out[key] = {"accuracy": float(correct[sel].mean()), "cost": float(cost[sel].mean()), "n": int(sel.sum())}
    return out


def type_accuracy(stats: dict, datasets: list[dict], pipeline: str, task_type: str) -> float:
    """Mean over the task type's datasets of the pipeline's accuracy (each dataset counts once)."""
    vals = [stats[(pipeline, d["name"])]["accuracy"] for d in datasets
            if d["task_type"] == task_type and (pipeline, d["name"]) in stats]
    if not vals:
        raise VisrouteError(f"no records of '{pipeline}' on any {task_type} dataset")
    return float(np.mean(vals))


def run_router(recipe, ctx, records_path: Path) -> dict:
    """Routing table, router (calibrated on validation), its report against the baselines, and the plot."""
    from visroute.eval.results import write_json
    from visroute.router.evaluate.baselines import evaluate_with_baselines
    from visroute.router.decide.bundle import train_bundle
    from visroute.router.evaluate.curves import plot_report
    from visroute.router.data.table import build_table, read_records

    cfg = recipe.extra.get("router") or {}
    d = ctx.out / "router"
    table = build_table(read_records(records_path), split_by=cfg.get("split_by", "sample"),
                        seed=int(cfg.get("seed", 0)))
    table.save(d / "table")
    bundle = train_bundle(table, kind=cfg.get("kind", "knn"), target_share=ctx.settings.get("target_share"))
    bundle.save(d / "bundle")
    report = evaluate_with_baselines(table, bundle, "test")
    write_json(d / "report.json", report)
    plot_report(report, ctx.out / "accuracy_cost.png",
                title=f"{recipe.name} ({ctx.scale}): {bundle.kind} router on {len(table.part('test'))} test tasks")
    return report


def _router_cells(i: int, f: dict, report: dict) -> list[dict]:
    op, singles, best = report["operating_point"], report["single_models"], report["best_single"]
    if f["measure"] == "router_vs_best":
        v = op["accuracy"] - singles[best]["accuracy"]
        return [{"figure": i, "column": "accuracy difference", "value": v,
                 "detail": f"{'holds' if v >= 0 else 'does not hold'} here: router {op['accuracy']:.3f} vs best single "
                           f"'{best}' {singles[best]['accuracy']:.3f}"}]
    if f["measure"] == "router_cost_ratio":
        c = singles[best]["cost"]
        ratio = op["cost"] / c if c > 0 else None
        verdict = "no cost to compare" if ratio is None else "holds" if ratio < 1 else "does not hold"
        return [{"figure": i, "column": "cost ratio", "value": ratio,
                 "detail": f"{verdict} here: router {op['cost']:.3g} vs best single '{best}' {c:.3g} per task"}]
    policies = {f"always {m}": s for m, s in singles.items()}
    policies.update({"random": report["random"], "oracle": report["oracle"], "router (calibrated)": op})
    policies.update({f"{k} at the router's share": v for k, v in op.get("at_equal_share", {}).items() if k != "random"})
    cells = []
    for name, p in policies.items():
        for col, key in (("accuracy", "accuracy"), ("mean cost per task", "cost")):
            cells.append({"figure": i, "row": name, "column": col, "value": p.get(key)})
    return cells


def run_grid_recipe(recipe, ctx) -> list[dict]:
    """Run the grid (and the router when the recipe has one); one cell per figure value."""

    from visroute.router.data.grid import GridSpec, run_grid
    from visroute.router.data.table import read_records

    datasets = grid_datasets(recipe, ctx)
    grid = GridSpec.load(write_grid(recipe, ctx, datasets))
    records_path = run_grid(grid, progress=ctx.progress, log=ctx.log, engine=ctx.engine)
    records = read_records(records_path)
    stats = per_dataset(records)
    ctx.extra["per_dataset"] = [{"pipeline": p, "dataset": n, **v} for (p, n), v in stats.items()]
    report = None
    if recipe.extra.get("router"):
        try:
            report = run_router(recipe, ctx, records_path)
            ctx.extra["router_report"] = str(ctx.out / "router" / "report.json")
        except VisrouteError as e:
            ctx.extra["router_error"] = str(e)
    types = list(dict.fromkeys(d["task_type"] for d in datasets))
    cells: list[dict] = []
    for i, f in enumerate(recipe.figures):
        try:
            cells += _figure_cells(i, f, stats, datasets, types, records, report, ctx)
        except VisrouteError as e:
            cells.append({"figure": i, "column": "-", "error": str(e)})
    return cells


def _figure_cells(i, f, stats, datasets, types, records, report, ctx) -> list[dict]:
    m = f["measure"]
    if m == "accuracy":
        return [{"figure": i, "column": t, "value": type_accuracy(stats, datasets, f["pipeline"], t)} for t in types]
    if m == "claim":
        parts, holds = [], True
        for t in f["task_types"]:
            b, w = (type_accuracy(stats, datasets, f[k], t) for k in ("better", "worse"))
            holds &= b > w
            parts.append(f"{t}: {f['better']} {b:.3f} vs {f['worse']} {w:.3f}")
        return [{"figure": i, "column": "finding", "text": ("holds" if holds else "does not hold"),
                 "detail": "; ".join(parts)}]
    if m == "count":
        n = {"records": records.num_rows, "models": len({p for p, _ in stats}),
             "datasets": len({d for _, d in stats})}[f["of"]]
        return [{"figure": i, "column": f["of"], "value": float(n)}]
    if report is None:
        raise VisrouteError(f"router stage failed: {ctx.extra.get('router_error', 'no router section')}")
    return _router_cells(i, f, report)
