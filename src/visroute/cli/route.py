"""``visroute route build|train|eval`` and ``visroute route IMAGE --task ... --options ...``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from visroute.cli._common import RouterDir, TableDir, quiet_libraries


class RouteGroup(TyperGroup):
    """`visroute route IMAGE ...` runs the `ask` command; `visroute route build|train|eval` are subcommands."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            return "ask", self.commands["ask"], args
        return super().resolve_command(ctx, args)


app = typer.Typer(cls=RouteGroup, no_args_is_help=True,
                  help="Routing: build a table from records, train a router, evaluate it, route a task.")


@app.command("build")
def route_build(
    records: Annotated[list[Path], typer.Argument(help="Records Parquet file(s) (from `visroute grid run`).")],
    out: Annotated[Path, typer.Option(help="Directory for the routing table.")] = Path("routing-table"),
    granularity: Annotated[str, typer.Option(help="sample or dataset-prompt.")] = "sample",
    split: Annotated[str, typer.Option(help="dataset (held-out datasets) or sample.")] = "sample",
    holdout: Annotated[Optional[str], typer.Option(help="Comma-separated test datasets (split=dataset).")] = None,
    val_fraction: Annotated[float, typer.Option(min=0.0, max=0.9, help="Share of (non-test) rows for validation.")] = 0.15,
    test_fraction: Annotated[float, typer.Option(min=0.0, max=0.9, help="Share of rows (or datasets) for test.")] = 0.2,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Aggregate records into a routing table with train/val/test splits."""
    from visroute.router.table import build_table, read_records

    table = build_table(read_records(records), granularity, split, holdout.split(",") if holdout else None,
                        val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    table.save(out)
    counts = {k: int((table.split == k).sum()) for k in ("train", "val", "test")}
    typer.echo(f"wrote {out}: {len(table)} rows x {len(table.models)} models ({', '.join(table.models)}); splits {counts}")


@app.command("train")
def route_train(
    table_dir: TableDir,
    router: Annotated[str, typer.Option(help="knn, logistic, mlp, mf or slm.")] = "knn",
    out: Annotated[Path, typer.Option(help="Directory for the trained router.")] = Path("router"),
    features: Annotated[str, typer.Option(help="text or text+image.")] = "text",
    image_model: Annotated[Optional[str], typer.Option(help="Contrastive model for image features (text+image).")] = None,
    target_cost: Annotated[Optional[float], typer.Option(help="Calibrate lambda to this mean cost per task.")] = None,
    target_share: Annotated[Optional[float], typer.Option(help="Calibrate lambda to this share of --heavy calls.")] = None,
    heavy: Annotated[Optional[str], typer.Option(help="Model whose share --target-share bounds (default: dearest).")] = None,
    checkpoint: Annotated[Optional[str], typer.Option(help="slm router: local transformers checkpoint (default: MiniLM).")] = None,
) -> None:
    """Train a router on the table's train split; lambda is calibrated on its validation split. The bundle carries
    the exact pipeline spec each model's records were measured with, so `route` calls the same pipelines."""
    from visroute.router.bundle import train_bundle
    from visroute.router.table import RoutingTable

    quiet_libraries()
    kw = {"checkpoint": checkpoint} if router == "slm" and checkpoint else {}
    bundle = train_bundle(RoutingTable.load(table_dir), router, features, image_model, target_cost, target_share, heavy, kw)
    bundle.save(out)
    typer.echo(f"wrote {out}: {router} router over {', '.join(bundle.models)}; lambda={bundle.lam:.4g}")


@app.command("eval")
def route_eval(
    table_dir: TableDir,
    router_dir: RouterDir = Path("router"),
    out: Annotated[Path, typer.Option(help="Directory for report.json and curve.png.")] = Path("route-report"),
    part: Annotated[str, typer.Option(help="Split to evaluate on.")] = "test",
) -> None:
    """Router vs always-one-model, random, cheapest and oracle; accuracy-cost curve; kNN baseline alongside."""
    from visroute.router.baselines import evaluate_router_dir

    quiet_libraries()
    report = evaluate_router_dir(table_dir, router_dir, out, part)
    kind, op = report["router"]["kind"], report["operating_point"]
    typer.echo(f"{'policy':<28} {'accuracy':>9} {'cost/task':>12}")
    for name, s in report["single_models"].items():
        typer.echo(f"{'always ' + name:<28} {s['accuracy']:>9.4f} {s['cost']:>12.3g}")
    for name in ("random", "oracle"):
        typer.echo(f"{name:<28} {report[name]['accuracy']:>9.4f} {report[name]['cost']:>12.3g}")
    typer.echo(f"{'router (' + kind + ')':<28} {op['accuracy']:>9.4f} {op['cost']:>12.3g}")
    kb = report["knn_baseline"]["operating_point"]
    typer.echo(f"{'knn baseline':<28} {kb['accuracy']:>9.4f} {kb['cost']:>12.3g}")
    pgr = op.get("performance_gap_recovered")
    frac = report.get("cost_to_match_best_single_fraction_of_most_expensive")
    typer.echo(f"performance gap recovered: {pgr if pgr is None else round(pgr, 3)}; cost to match the best single model: "
               f"{'never' if frac is None else f'{frac:.2f} x the most expensive model'}")
    typer.echo(f"wrote {out / 'report.json'} and {out / 'curve.png'}", err=True)


@app.command("ask")
def route_ask(
    image: Annotated[Optional[Path], typer.Argument(help="Image file (omit for a text-only task).")] = None,
    task: Annotated[str, typer.Option(help="Instruction or question.")] = "",
    options: Annotated[str, typer.Option(help="Comma-separated response options.")] = "",
    router_dir: RouterDir = Path("router"),
    prompt_variant: Annotated[Optional[str], typer.Option(help="Measured prompt variant to call (default: best).")] = None,
    lam: Annotated[Optional[float], typer.Option("--lambda", help="Override the calibrated lambda.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Only choose; do not call the model.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Pick a model for one task with the router and run it (also: `visroute route IMAGE --task ... --options ...`)."""
    from visroute.errors import VisrouteError
    from visroute.router.bundle import RouterBundle
    from visroute.router.run import route_task

    quiet_libraries()
    opts = [o.strip() for o in options.split(",") if o.strip()]
    if not task.strip() or len(opts) < 2:
        raise VisrouteError("give --task and at least two comma-separated --options")
    result = route_task(RouterBundle.load(router_dir), image, task, opts, lam, run=not dry_run, variant=prompt_variant)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"chosen model: {result['chosen']}  (lambda={result['lambda']:.4g})")
    for name, p in result["predicted_accuracy"].items():
        typer.echo(f"  {name:<20} predicted accuracy {p:.3f}   expected cost {result['expected_cost'][name]:.3g}")
    if "answer" in result:
        typer.echo(f"answer: {result['answer']}  (raw: {result['raw_answer']!r}, parsed by {result['parse_rule']})")
