"""``visroute describe`` (class descriptions from an LLM) and ``visroute explain`` (which descriptions decided)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from visroute.cli._common import (EXIT_OK, EXIT_SOME_SKIPPED, Device, EndpointConcurrency, EngineName, RayAddress,
                                  make_engine, options_from, quiet_libraries, warn)

Opt = typer.Option


@dataclass
class DescribeArgs:
    """Every ``visroute describe`` flag."""

    classes: Annotated[str, Opt(help="Class names: .txt, JSON list, FILE.json:KEY or CSV column.")]
    llm: Annotated[str, Opt(help="openai-compatible:<base_url>#<model> or hf:<local causal LM dir>.")]
    output: Annotated[Path, Opt("--out", help="Where to write the description set (visroute JSON).")]
    style: Annotated[str, Opt(help="dclip (descriptor lists), cupl (sentences) or contrastive.")] = "dclip"
    neighbours: Annotated[int, Opt(min=1, help="Confusable classes per class (contrastive style).")] = 3
    confusion: Annotated[Optional[Path], Opt(help="Result JSON of a zero-shot eval: neighbours from its confusion matrix.")] = None
    model: Annotated[Optional[str], Opt("--model", "-m", help="Contrastive model whose text embeddings give neighbours.")] = None
    timeout: Annotated[float, Opt(help="Seconds per HTTP request.")] = 60.0
    retries: Annotated[int, Opt(min=0, help="Retries per request (exponential backoff).")] = 4
    concurrency: Annotated[int, Opt(min=1, help="Parallel HTTP requests (per worker with --engine ray).")] = 4
    max_tokens: Annotated[int, Opt(min=1)] = 256
    progress: Annotated[bool, Opt()] = True
    engine: EngineName = None
    ray_address: RayAddress = None
    endpoint_concurrency: EndpointConcurrency = None


@options_from(DescribeArgs)
def describe(a: DescribeArgs) -> None:
    """Write class descriptions with an LLM. Responses are cached (SQLite): a re-run resumes for free."""
    from visroute.descriptions.generate import describe_classes

    quiet_libraries()
    engine = make_engine(a.engine, a.ray_address, endpoint_concurrency=a.endpoint_concurrency, concurrency=a.concurrency)
    try:
        dset, report = describe_classes(a.classes, a.llm, a.output, a.style, a.neighbours, a.confusion, a.model, a.timeout,
                                        a.retries, a.concurrency, a.max_tokens, a.progress, engine=engine)
    finally:
        engine.shutdown()
    for f in report.failed:
        typer.secho(f"failed: {f['class']}: {f['error']}", err=True, fg=typer.colors.RED)
    for u in report.unparsable:
        warn(f"unparsable answer for {u['class']}: {u['answer'][:80]!r}")
    typer.echo(f"wrote {a.output}: {sum(map(len, dset.descriptions))} descriptions for {len(dset.classnames)} classes; "
               f"{report.requests} requests ({report.cached} cached), {len(report.failed)} failed, "
               f"{len(report.unparsable)} unparsable, {len(report.empty_classes)} classes without descriptions", err=True)
    raise typer.Exit(EXIT_SOME_SKIPPED if report.failed or report.empty_classes else EXIT_OK)


def explain(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    descriptions: Annotated[str, typer.Option(help="Description file (any supported format).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Contrastive model spec.")] = "random-tiny",
    classes: Annotated[Optional[str], typer.Option(help="Class names (default: the description file's keys).")] = None,
    selection_dataset: Annotated[Optional[str], typer.Option(help="Labelled split: explain the disclip selection.")] = None,
    top_k: Annotated[int, typer.Option(min=1)] = 3,
    html_out: Annotated[Path, typer.Option("--html", help="HTML page to write.")] = Path("explain.html"),
    as_json: Annotated[bool, typer.Option("--json", help="Also print the explanation as JSON.")] = False,
    device: Device = "auto",
) -> None:
    """Why each image got its class: top-k classes and the descriptions that decided, with contributions."""
    from visroute.descriptions.explain import explain_images

    quiet_libraries()
    items, skipped = explain_images(images, descriptions, model, classes, selection_dataset, top_k, html_out, device)
    if as_json:
        typer.echo(json.dumps(items, indent=2))
    else:
        for it in items:
            best = it["classes"][0]
            typer.echo(f"{it['path']}\t{best['class']}\t" + "; ".join(d["text"] for d in best["descriptions"][:3]))
    for s in skipped:
        warn(f"skipped: {s.path}: {s.reason}")
    typer.echo(f"wrote {html_out}", err=True)
    raise typer.Exit(EXIT_SOME_SKIPPED if skipped else EXIT_OK)
