"""``visroute models`` and ``visroute cache ls|clear``: what is on this machine."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from visroute.cli._common import Json

app = typer.Typer(help="Inspect and free the feature cache.", no_args_is_help=True, rich_markup_mode=None)


def models(as_json: Json = False) -> None:
    """List the known model specs and which of them are available locally (no download)."""
    from visroute.models.registry import list_models

    rows = list_models()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        typer.echo(f"{r['name']:<{width}}  {r['kind']:<11}  {'cached' if r['cached'] else '      '}  {r['spec']}")
    typer.echo("\ncached: on this machine (random-tiny models are built locally). Also accepted: hf:<hub id or dir>,\n"
               "openclip:<arch>/<tag or checkpoint>, openclip:local-dir:<dir>, a local model directory;\n"
               "generators: openai-compatible:<base_url>#<model>, openai:<model>, hf:<dir>.")


@app.command("ls")
def cache_ls(as_json: Json = False) -> None:
    """List cached feature sets."""
    from visroute.features.cache import FeatureCache

    cache = FeatureCache()
    entries = cache.entries()
    if as_json:
        typer.echo(json.dumps(entries, indent=2))
        return
    typer.echo(f"feature cache: {cache.root}")
    for e in entries:
        if e["damaged"]:
            state = f"damaged ({', '.join(e['damaged'][:3])}: the next run recomputes it)"
        else:
            state = "complete" if e["complete"] else f"partial {e['shards_done']}/{e['n_shards']} shards"
        typer.echo(f"{e['key']}  {e['bytes'] / 1e6:8.1f} MB  {e['n_items']} images  {state}  {e['model']}  {e['dataset']}")
    typer.echo(f"{len(entries)} entries, {sum(e['bytes'] for e in entries) / 1e6:.1f} MB")


@app.command("clear")
def cache_clear(key: Annotated[Optional[str], typer.Argument(help="Entry key (or prefix); all if omitted.")] = None) -> None:
    """Delete cached feature sets."""
    from visroute.features.cache import FeatureCache

    n = FeatureCache().clear(key)
    typer.echo(f"removed {n} entr{'y' if n == 1 else 'ies'}")
