"""``visroute classify``: zero-shot classification of image files and folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from visroute.cli._common import EXIT_OK, EXIT_SOME_SKIPPED, BatchSize, Device, Dtype, Workers, quiet_libraries, warn


def classify(
    paths: Annotated[list[Path], typer.Argument(help="Image files and/or folders (searched recursively).")],
    labels: Annotated[Optional[str], typer.Option("--labels", "-l", help="Comma-separated class names.")] = None,
    labels_file: Annotated[Optional[str], typer.Option(help="Class names: .txt (one per line), JSON list, or FILE.json:KEY.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model spec (see `visroute models`).")] = None,
    templates: Annotated[Optional[str], typer.Option(help="Prompt templates with {c}: .txt, JSON list, or FILE.json:KEY.")] = None,
    top_k: Annotated[int, typer.Option(min=1, help="How many classes to report per image.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")] = False,
    device: Device = "auto",
    dtype: Dtype = "auto",
    batch_size: BatchSize = 64,
    workers: Workers = None,
    fast_decode: Annotated[bool, typer.Option(help="Opt-in reduced-size JPEG decoding: faster, pixels differ slightly.")] = False,
    progress: Annotated[Optional[bool], typer.Option(help="Progress bar (default: on for more than 8 images).")] = None,
) -> None:
    """Zero-shot classify images against class names. Exit code 0: all classified; 1: some files skipped; 2: error."""
    from visroute.batch_classify import ClassifyRun, prepare_classify

    quiet_libraries()
    job = prepare_classify(paths, labels, labels_file, templates, model, device, dtype)
    if job.repeated_labels:
        warn(f"warning: repeated label(s) merged: {', '.join(job.repeated_labels)}")
    if job.head.model.is_random and not as_json:
        warn(f"note: {job.head.model.spec} has random weights (smoke test); predictions are at chance level.")
    run = ClassifyRun(skipped=list(job.skipped))
    for preds, bad in job.batches(top_k, batch_size, workers, fast_decode, progress):
        run.predictions += preds
        run.skipped += bad
        if not as_json:
            for p in preds:
                typer.echo(f"{p.path}\t" + ", ".join(f"{lab} ({s:.3f})" for lab, s in zip(p.labels, p.scores)))
    if as_json:
        typer.echo(json.dumps(job.document(top_k, run), indent=2))
    for s in run.skipped:
        warn(f"skipped: {s.path}: {s.reason}")
    typer.echo(f"classified {len(run.predictions)} image(s), skipped {len(run.skipped)}", err=True)
    raise typer.Exit(EXIT_SOME_SKIPPED if run.skipped else EXIT_OK)
