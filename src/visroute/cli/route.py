"""``visroute route build|train|eval|import`` and ``visroute route IMAGE --task ... --options ...``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from visroute.cli._common import RouterDir, TableDir, quiet_libraries, warn
from visroute.router.learn.kinds import ROUTER_KINDS


class RouteGroup(TyperGroup):
    """`visroute route IMAGE ...` runs the `ask` command; `visroute route build|train|eval` are subcommands."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            return "ask", self.commands["ask"], args
        return super().resolve_command(ctx, args)


app = typer.Typer(cls=RouteGroup, no_args_is_help=True, rich_markup_mode=None,
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
    dedup: Annotated[bool, typer.Option(help="Drop val/test rows that nearly repeat a training row.")] = False,
    dup_threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Cosine similarity of a near-duplicate.")] = 0.95,
    quality: Annotated[bool, typer.Option(help="Data-quality report (leakage, label noise, balance).")] = True,
    strip_shared: Annotated[bool, typer.Option(help="Embed task texts without the prefix/suffix a dataset's texts all share.")] = True,
) -> None:
    """Aggregate records into a routing table with train/val/test splits, and report on its quality
    (out/quality.json): near-duplicate texts across splits, label noise across prompt variants, balance, and each
    dataset's shared prefix/suffix and text beyond the embedder's window (the router embeds what differs)."""
    from visroute.router.data.quality import checked_table
    from visroute.router.data.table import build_table, read_records
    from visroute.router.data.texts import detect_rule

    quiet_libraries()

    table = build_table(read_records(records), granularity, split, holdout.split(",") if holdout else None,
                        val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    if table.meta.get("n_failed_dropped"):
        warn(f"dropped {table.meta['n_failed_dropped']} record(s) of failed calls (errors are not samples)")
    rule = detect_rule(table.text, table.dataset) if strip_shared else None
    if rule is not None:
        table.meta["text_rule"] = rule.to_dict()
    report = None
    if quality or dedup:
        table, report = checked_table(table, dedup, dup_threshold, rule=rule)
    table.save(out)
    _echo_table(table, out, report, dedup)


def _echo_table(table, out: Path, report: dict | None, dedup: bool) -> None:
    """The built table's summary, and its quality report (also written to out/quality.json)."""
    from visroute.io import atomic_write_json
    from visroute.router.data.quality import format_report
    from visroute.router.data.texts import format_text_report

    counts = {k: int((table.split == k).sum()) for k in ("train", "val", "test")}
    typer.echo(f"wrote {out}: {len(table)} rows x {len(table.models)} models ({', '.join(table.models)}); splits {counts}")
    if report is not None:
        atomic_write_json(out / "quality.json", report, indent=1)
        for line in format_report(report) + ([f"removed {report['dedup_removed']} near-duplicate row(s)"] if dedup else []):
            typer.echo(line)
        for line in format_text_report(report.get("texts") or {}):
            typer.echo(line, err=line.startswith("warning"))


@app.command("import")
def route_import(
    source: Annotated[str, typer.Argument(help="Data source: routellm or routerbench.")],
    paths: Annotated[list[Path], typer.Argument(help="routellm: a checkout of RouteLLM; routerbench: CSV/Parquet file(s).")],
    out: Annotated[Path, typer.Option(help="Records Parquet file to write.")] = Path("records.parquet"),
    price: Annotated[Optional[list[str]], typer.Option(help="routellm: MODEL=USD per million tokens (repeatable).")] = None,
    keep_contaminated: Annotated[bool, typer.Option(help="routellm: keep prompts it marks as contaminated.")] = False,
) -> None:
    """Turn public routing data into visroute records. `routellm` reads RouteLLM's GSM8K responses and MT-Bench
    judgements (its development sets; its MMLU test set is never read). `routerbench` reads RouterBench's
    CSV/Parquet layout (a column per model with its outcome, MODEL|total_cost, prompt, eval_name, sample_id) with
    the real cost of every call; pickles are refused (loading one runs code)."""
    from visroute.errors import VisrouteError

    if source == "routerbench":
        from visroute.router.data.routerbench import import_routerbench

        s = import_routerbench(paths, out)
        typer.echo(f"{s['tasks']} tasks x {len(s['models'])} models from {len(s['files'])} file(s) "
                   f"({', '.join(s['datasets'])}): {s['records']} records; skipped {s['skipped_cells']} missing or "
                   f"out-of-range outcomes; {s['duplicate_prompts']} repeated sample ids added only cells their first "
                   "prompt lacked")
        typer.echo(f"wrote {out}")
        return
    if source != "routellm":
        raise VisrouteError(f"unknown routing data source '{source}' (known: routellm, routerbench)")
    if len(paths) != 1:
        raise VisrouteError("routellm takes one folder: a checkout of github.com/lm-sys/RouteLLM")
    from visroute.router.data.routellm import import_routellm, parse_prices

    summary = import_routellm(paths[0], out, prices=parse_prices(price or []), keep_contaminated=keep_contaminated)
    for bench in ("gsm8k", "mt-bench"):
        b = summary[bench]
        typer.echo(f"{bench}: {b['tasks']} tasks, {b['records']} records ({b['dropped_contaminated']} contaminated dropped)")
    typer.echo(f"wrote {out}")


@app.command("train")
def route_train(
    table_dir: TableDir,
    router: Annotated[str, typer.Option(help=f"Router kind: {', '.join(ROUTER_KINDS)}.")] = "knn",
    out: Annotated[Path, typer.Option(help="Directory for the trained router.")] = Path("router"),
    features: Annotated[str, typer.Option(help="text or text+image.")] = "text",
    image_model: Annotated[Optional[str], typer.Option(help="Contrastive model for image features (text+image).")] = None,
    target_cost: Annotated[Optional[float], typer.Option(help="Calibrate lambda to this mean cost per task.")] = None,
    target_share: Annotated[Optional[float], typer.Option(help="Calibrate lambda to this share of --heavy calls.")] = None,
    heavy: Annotated[Optional[str], typer.Option(help="Model whose share --target-share bounds (default: dearest).")] = None,
    checkpoint: Annotated[Optional[str], typer.Option(help="slm router: local transformers checkpoint (default: MiniLM).")] = None,
    strategy: Annotated[str, typer.Option(help="router (one call), cascade (cheap first, escalate while unsure), "
                                          "ensemble (two calls when the top two are close) or hierarchy (a family of "
                                          "models first, then the model within it).")] = "router",
) -> None:
    """Train a router on the table's train split; lambda is calibrated on its validation split. The bundle carries
    the exact pipeline spec each model's records were measured with, so `route` calls the same pipelines."""
    from visroute.router.decide.bundle import train_bundle
    from visroute.router.data.table import RoutingTable

    quiet_libraries()
    given = {"checkpoint": checkpoint}  # kind-specific options; each kind names those it takes
    kw = {k: given[k] for k in ROUTER_KINDS[router].options if given.get(k) is not None}
    bundle = train_bundle(RoutingTable.load(table_dir), router, features, image_model, target_cost, target_share, heavy, kw,
                          strategy)
    bundle.save(out)
    _echo_training(bundle, router, out)


CONFIDENCE = {"score": "models own scores", "agreement": "agreement of the models answers",
              "variants": "agreement of each earlier model's prompt variants", "router": "router predicted success"}


def _echo_training(bundle, router: str, out: Path) -> None:
    """What training chose: lambda, the calibration it reached on validation, and the strategy's settings."""
    typer.echo(f"wrote {out}: {router} router over {', '.join(bundle.models)}; lambda={bundle.lam:.4g}")
    cal = bundle.meta.get("calibration") or {}
    if cal:
        typer.echo(f"on validation: share of {cal['heavy']} {cal['realised_share']:.3f}, cost per task "
                   f"{cal['realised_cost']:.4g}")
    if cal.get("unreachable"):
        typer.echo(f"warning: {cal['unreachable']}", err=True)
    st, sc = bundle.strategy, bundle.meta.get("strategy_calibration") or {}
    if st["kind"] != "router":
        if st["kind"] == "hierarchy":
            fams = {f: [m for m, g in zip(bundle.models, st["families"]) if g == f] for f in dict.fromkeys(st["families"])}
            detail = "families " + "; ".join(f"{f}: {', '.join(ms)}" for f, ms in fams.items())
        else:
            detail = (f"chain {' -> '.join(bundle.models[j] for j in st['chain'])}, threshold {st['threshold']:.3g} on "
                      f"the {CONFIDENCE.get(st.get('confidence'), 'router predicted success')}"
                      if st["kind"] == "cascade" else f"margin {st['margin']:.3g}")
        typer.echo(f"strategy {st['kind']}: {detail}; on validation accuracy {sc['realised_accuracy']:.3f}, cost per "
                   f"task {sc['realised_cost']:.4g} (every call counted)")
        if sc.get("unreachable"):
            typer.echo(f"warning: {sc['unreachable']}", err=True)


@app.command("eval")
def route_eval(
    table_dir: TableDir,
    router_dir: RouterDir = Path("router"),
    out: Annotated[Path, typer.Option(help="Directory for report.json and curve.png.")] = Path("route-report"),
    part: Annotated[str, typer.Option(help="Split to evaluate on.")] = "test",
    llm_router: Annotated[Optional[str], typer.Option(help="Also ask this chat model to route (model spec).")] = None,
    llm_prices: Annotated[Optional[Path], typer.Option(help="Price table for the LLM router's own calls.")] = None,
) -> None:
    """Router vs always-one-model, random, oracle, kNN and dataset prior (and an LLM router), on RouteLLM's
    metrics (APGR, CPT) and at the router's own strong-call share; accuracy-cost curve."""
    from visroute.router.evaluate.baselines import evaluate_router_dir

    quiet_libraries()
    report = evaluate_router_dir(table_dir, router_dir, out, part, llm_router, llm_prices)
    kind, op = report["router"]["kind"], report["operating_point"]
    typer.echo(f"{'policy':<28} {'accuracy':>9} {'cost/task':>12}")
    for name, s in report["single_models"].items():
        typer.echo(f"{'always ' + name:<28} {s['accuracy']:>9.4f} {s['cost']:>12.3g}")
    typer.echo(f"{'oracle':<28} {report['oracle']['accuracy']:>9.4f} {report['oracle']['cost']:>12.3g}")
    typer.echo(f"{'router (' + kind + ')':<28} {op['accuracy']:>9.4f} {op['cost']:>12.3g}")
    if report.get("strategy"):
        st = report["strategy"]
        calls = f", {st['calls_per_task']:.2f} calls per task" if st.get("calls_per_task") is not None else ""
        typer.echo(f"{st['kind'] + ' (calibrated)':<28} {st['accuracy']:>9.4f} {st['cost']:>12.3g}  "
                   f"(every call counted{calls})")
    kb = report["knn_baseline"]["operating_point"]
    typer.echo(f"{'knn baseline':<28} {kb['accuracy']:>9.4f} {kb['cost']:>12.3g}  (at the router's share)")
    for line in _metric_lines(report):
        typer.echo(line)
    typer.echo(f"wrote {out / 'report.json'} and {out / 'curve.png'}", err=True)


def _metric_lines(report: dict) -> list[str]:
    """RouteLLM's metrics per policy, and each policy's accuracy at the router's operating point."""
    ref, op = report["reference"], report["operating_point"]
    axis = "strong-call share" if ref["axis"] == "strong_share" else "normalised cost"
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = aiq_lines(report.get("aiq"))
    if ref["cheap"] == ref["best"] or not ref["accuracy_best"] > ref["accuracy_cheap"]:
        lines.append(f"APGR and CPT are undefined here: the most accurate single model ({ref['best']}) is also the "
                     "cheapest, so there is no accuracy gap between cheap and best for a router to recover; "
                     "AIQ above compares every policy on the whole cost range instead")
    lines += [f"PGR between {ref['cheap']} and {ref['best']}; axis: {axis}; router at {op['x']:.3f}",
             f"{'policy':<16} {'APGR':>6} {'APGR-10':>8} {'CPT50':>6} {'CPT80':>6} {'acc@router':>11}"]
    for name, m in report["routing_metrics"].items():
        eq = op["at_equal_share"].get(name, {"accuracy": op["accuracy"]} if name == "router" else {})
        lines.append(f"{name:<16} {fmt(m['apgr']):>6} {fmt(m['apgr_discrete']):>8} {fmt(m['cpt50']):>6} "
                     f"{fmt(m['cpt80']):>6} {fmt(eq.get('accuracy')):>11}")
    cal = report.get("calibration") or {}
    if cal.get("target_share") is not None:
        lines.append(f"calibrated share of {cal['heavy']}: target {cal['target_share']:.3f}, "
                     f"realised {fmt(cal.get('realised_share'))}")
    if "llm_router" in report:
        llm = report["llm_router"]
        lines.append(f"LLM router {llm['spec']}: accuracy {llm['accuracy']:.4f}, cost {llm['cost']:.3g} "
                     f"(its own calls {llm['cost_router_calls']:.3g}) at {llm['x']:.3f}; unparsed {llm['unparsed']}"
                     + (f"; {llm['failed']} call(s) FAILED (routed to the cheapest model)" if llm.get("failed") else ""))
    return lines


def aiq_lines(aiq: dict | None) -> list[str]:
    """RouterBench's AIQ per policy with bootstrap intervals, beside the zero router (single-model hull)."""
    if not aiq:
        return []
    ci = lambda v: "" if not v else f" [{v[0]:.3f}, {v[1]:.3f}]"  # noqa: E731
    num = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"{'policy':<16} {'AIQ [95% CI]':>22} {'gain vs hull':>24} {'acc@best cost':>14} {'cost to best acc':>17}"]
    for name, r in aiq.items():
        if not isinstance(r, dict) or "aiq" not in r:
            continue
        gain = "" if name == "zero_router" else f"{r['gain']:+.3f}{ci(r.get('gain_ci'))}"
        cost = "never" if r["cost_to_best_accuracy"] is None else f"{r['cost_to_best_accuracy']:.0%} of best"
        lines.append(f"{name:<16} {r['aiq']:>7.3f}{ci(r.get('aiq_ci')):>15} {gain:>24} "
                     f"{num(r['accuracy_at_best_cost']):>14} {cost:>17}")
    lines.append(f"(AIQ: area under the accuracy/normalised-cost hull; zero_router = the single models' hull; "
                 f"{aiq.get('n_boot', 0)} bootstrap resamples of {aiq.get('tasks', 0)} tasks)")
    return lines


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
    from visroute.router.decide.bundle import RouterBundle
    from visroute.router.decide.run import route_task

    quiet_libraries()
    if lam is not None:
        from visroute.router.decide.bundle import check_lambda

        lam = check_lambda(lam, "--lambda")
    opts = [o.strip() for o in options.split(",") if o.strip()]
    if not task.strip() or len(opts) == 1 or (len(opts) < 2 and not dry_run):
        raise VisrouteError("give --task and at least two comma-separated --options (--dry-run only chooses: "
                            "options may be left out)")
    result = route_task(RouterBundle.load(router_dir), image, task, opts, lam, run=not dry_run, variant=prompt_variant)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"chosen model: {result['chosen']}  (lambda={result['lambda']:.4g})")
    if result.get("strategy", "router") != "router":
        typer.echo(f"{result['strategy']}: calls {' -> '.join(result['plan'])}")
    for name, p in result["predicted_accuracy"].items():
        typer.echo(f"  {name:<20} predicted accuracy {p:.3f}   expected cost {result['expected_cost'][name]:.3g}")
    if "answer" in result:
        typer.echo(f"answer: {result['answer']}  (raw: {result['raw_answer']!r}, parsed by {result['parse_rule']})")
    if result.get("strategy", "router") != "router":  # what each call cost and how sure it was
        for c in result.get("calls") or []:
            vote = f" ({len(c['variants'])} prompt variants, kept {c['kept']})" if c.get("variants") else ""
            typer.echo(f"  called {c['model']}: cost {c['cost']:.3g}, confidence {c['confidence']:.3f}{vote}")
