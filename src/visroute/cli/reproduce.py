"""``visroute reproduce list|RECIPE``: one command per published table (recipes: ``visroute/reproduce/recipes``).

Exit codes: 0 every figure measured; 1 some cells failed (listed in the table); 2 usage or input error;
3 prerequisites missing (weights, datasets, files: printed as one list; ``--dry-run`` checks only that).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from visroute.cli._common import EXIT_OK, EXIT_SOME_SKIPPED, Json, error, quiet_libraries, verbosity

EXIT_MISSING = 3  # the same value as visroute.reproduce.EXIT_MISSING (kept here so --help loads no library)

Scale = Annotated[str, typer.Option(help="tiny: random-weight models on ../shared/data, minutes on a CPU; "
                                         "full: the paper's models and datasets (a GPU box with the hub).")]
Engine = Annotated[str, typer.Option(help="local (this process) or ray (visroute.engine, when installed).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Only check that every model, dataset and file is here; "
                                                         "list what is missing and how to get it (exit 3).")]
Out = Annotated[Optional[Path], typer.Option(help="Run folder (default: runs/reproduce/RECIPE-SCALE-TIME).")]
Progress = Annotated[bool, typer.Option(help="Progress bars (i/N, ETA); off when stderr is not a terminal.")]
DataRoot = Annotated[Optional[Path], typer.Option(help="Shared data folder (default: $VISROUTE_SHARED_DATA, else "
                                                       "../shared/data).")]


def reproduce(recipe: Annotated[str, typer.Argument(help="A recipe name, or 'list' to describe them.")],
              scale: Scale = "tiny", engine: Engine = "local", dry_run: DryRun = False, out: Out = None,
              data_root: DataRoot = None, as_json: Json = False, progress: Progress = True) -> None:
    """Reproduce a paper's table: run RECIPE, write the result JSONs and measured-vs-published table."""
    from visroute.reproduce import MissingPrerequisites, run_recipe

    if recipe == "list":
        return _list(as_json)
    if dry_run:
        return _dry_run(recipe, scale, data_root, as_json)
    quiet_libraries()
    log = (lambda m: None) if verbosity() < 0 else (lambda m: typer.echo(m, err=True))
    try:
        result = run_recipe(recipe, scale, engine, out, data_root, log=log, progress=progress and state["verbosity"] >= 0)
    except MissingPrerequisites as e:
        error(str(e))
        raise typer.Exit(EXIT_MISSING) from None
    if as_json:
        typer.echo(json.dumps({"out": str(result.out), "n_failed": result.n_failed, "rows": result.rows}, indent=1))
    else:
        typer.echo(_summary(result))
    raise typer.Exit(EXIT_SOME_SKIPPED if result.n_failed else EXIT_OK)


def _summary(result) -> str:
    """A few lines: rows by status, failures by reason, where the full table is (the table is in its file)."""
    from collections import Counter

    status = Counter(r["status"] for r in result.rows)
    lines = [f"{len(result.rows)} rows: " + ", ".join(f"{n} {s}" for s, n in status.most_common())]
    failed = Counter((r.get("note") or "-")[:100] for r in result.rows if r["status"] == "failed")
    lines += [f"  failed ({n}): {why}" for why, n in failed.most_common(5)]
    lines.append(f"full table: {result.table}   (and comparison.json, run.json in {result.out})")
    return "\n".join(lines)


def _list(as_json: bool) -> None:
    from visroute.reproduce import list_recipes

    rows = [{"name": r.name, "arxiv": r.arxiv, "paper": r.paper["title"], "title": r.title} for r in list_recipes()]
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        typer.echo(f"{r['name']:<24} arXiv:{r['arxiv']:<11} {r['title']}\n{'':<24} paper: {r['paper']}")


def _dry_run(recipe: str, scale: str, data_root: Path | None, as_json: bool) -> None:
    from visroute.reproduce import dry_run, format_missing

    reqs = dry_run(recipe, scale, data_root)
    missing = [r for r in reqs if not r.ok]
    if as_json:
        typer.echo(json.dumps([r.__dict__ for r in reqs], indent=1))
    elif missing:
        typer.echo(f"{recipe} at scale {scale}: {len(reqs)} prerequisites checked.\n{format_missing(missing)}")
    else:
        typer.echo(f"{recipe} at scale {scale}: all {len(reqs)} prerequisites are on this machine.")
    raise typer.Exit(EXIT_MISSING if missing else EXIT_OK)
