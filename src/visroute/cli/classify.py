"""``visroute classify``: zero-shot classification of image files and folders."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from visroute.cli._common import (EXIT_OK, EXIT_SOME_SKIPPED, Actors, BatchSize, Decode, Device, Dtype, EngineName, NumGpus,
                                  RayAddress, Workers, make_engine, options_from, quiet_libraries, warn)

Opt = typer.Option
FRESH_PROCESS = False  # set by the console entry point: this process runs one command, then exits


@dataclass
class ClassifyArgs:
    """Every ``visroute classify`` flag."""

    paths: Annotated[list[Path], typer.Argument(help="Image files and/or folders (searched recursively).")]
    labels: Annotated[Optional[str], Opt("--labels", "-l", help="Comma-separated class names.")] = None
    labels_file: Annotated[Optional[str], Opt(help="Class names: .txt (one per line), JSON list, or FILE.json:KEY.")] = None
    model: Annotated[Optional[str], Opt("--model", "-m", help="Model spec (see `visroute models`).")] = None
    templates: Annotated[Optional[str], Opt(help="Prompt templates with {c}: .txt, JSON list, or FILE.json:KEY.")] = None
    top_k: Annotated[int, Opt(min=1, help="How many classes to report per image.")] = 5
    as_json: Annotated[bool, Opt("--json", help="Print one JSON document instead of text.")] = False
    device: Device = "auto"
    dtype: Dtype = "auto"
    batch_size: BatchSize = 64
    workers: Workers = None
    decode: Decode = "exact"
    progress: Annotated[Optional[bool], Opt(help="Progress bar (default: on for more than 8 images).")] = None
    engine: EngineName = None
    ray_address: RayAddress = None
    actors: Actors = None
    num_gpus: NumGpus = None


@options_from(ClassifyArgs)
def classify(args: ClassifyArgs) -> None:
    """Zero-shot classify images against class names. Exit code 0: all classified; 1: some files skipped; 2: error."""
    from visroute.batch_classify import ClassifyRun, prepare_classify

    quiet_libraries()
    if FRESH_PROCESS:  # start-up time: transformers need not import torchvision for the PIL image processors
        from visroute.models.hf import hide_torchvision_from_transformers

        hide_torchvision_from_transformers()
    engine = make_engine(args.engine, args.ray_address, args.actors, args.num_gpus)  # before any model loads
    try:
        job = prepare_classify(args.paths, args.labels, args.labels_file, args.templates, args.model, args.device,
                               args.dtype, args.decode)
        if job.repeated_labels:
            warn(f"warning: repeated label(s) merged: {'; '.join(job.repeated_labels)} (entries counted from 1). "
                 "Each is scored once, under its first entry; to tell them apart, give each entry a distinct name "
                 "in the labels file.")
        if job.head.model.is_random and not args.as_json:
            warn(f"note: {job.head.model.spec} has random weights (smoke test); predictions are at chance level.")
        run = ClassifyRun(skipped=list(job.skipped))
        for preds, bad in job.batches(args.top_k, args.batch_size, args.workers, args.progress, engine,
                                      run.stats):
            run.predictions += preds
            run.skipped += bad
            if not args.as_json:
                for p in preds:
                    typer.echo(f"{p.path}\t" + ", ".join(f"{lab} ({s:.3f})" for lab, s in zip(p.labels, p.scores)))
    finally:
        engine.shutdown()
    if args.as_json:
        typer.echo(json.dumps(job.document(args.top_k, run), indent=2))
    for s in run.skipped:
        warn(f"skipped: {s.path}: {s.reason}")
    typer.echo(f"classified {len(run.predictions)} image(s), skipped {len(run.skipped)}", err=True)
    raise typer.Exit(EXIT_SOME_SKIPPED if run.skipped else EXIT_OK)
