"""Command-line interface: ``visroute classify``, ``visroute models``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from visroute.errors import VisrouteError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Image classification with vision-language models.")

EXIT_OK, EXIT_SOME_SKIPPED, EXIT_USAGE = 0, 1, 2


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass


def _fail(message: str) -> "typer.Exit":
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(EXIT_USAGE)


@app.command()
def classify(
    paths: Annotated[list[Path], typer.Argument(help="Image files and/or folders (searched recursively).")],
    labels: Annotated[Optional[str], typer.Option("--labels", "-l", help="Comma-separated class names.")] = None,
    labels_file: Annotated[Optional[str], typer.Option(help="Class names: .txt (one per line), JSON list, or FILE.json:KEY.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model spec (see `visroute models`).")] = None,
    templates: Annotated[Optional[str], typer.Option(help="Prompt templates with {c}: .txt, JSON list, or FILE.json:KEY.")] = None,
    top_k: Annotated[int, typer.Option(min=1, help="How many classes to report per image.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, fp32, fp16 or bf16.")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Decoding processes (default: one per core).")] = None,
    fast_decode: Annotated[bool, typer.Option(help="Opt-in reduced-size JPEG decoding: faster, pixels differ slightly.")] = False,
    progress: Annotated[Optional[bool], typer.Option(help="Progress bar (default: on for more than 8 images).")] = None,
) -> None:
    """Zero-shot classify images against class names. Exit code 0: all classified; 1: some files skipped; 2: error."""
    from visroute.classify import iter_classify
    from visroute.data.images import find_images
    from visroute.data.text import load_templates, parse_labels
    from visroute.heads.zeroshot import ZeroShotClassifier
    from visroute.models import DEFAULT_MODEL, load_model

    _quiet_libraries()
    try:
        classnames, repeated = parse_labels(labels, labels_file)
        if repeated:
            typer.secho(f"warning: repeated label(s) merged: {', '.join(repeated)}", err=True, fg=typer.colors.YELLOW)
        template_list = load_templates(templates)
        image_paths, skipped = find_images(paths)
        if not image_paths and not skipped:
            raise VisrouteError("no image files found under the given paths")
        clip = load_model(model or DEFAULT_MODEL, device=device, dtype=dtype)
        head = ZeroShotClassifier(clip, template_list).fit(classnames)
    except VisrouteError as e:
        raise _fail(str(e))

    if clip.is_random and not as_json:
        typer.secho(f"note: {clip.spec} has random weights (smoke test); predictions are at chance level.",
                    err=True, fg=typer.colors.YELLOW)
    show_bar = progress if progress is not None else len(image_paths) > 8
    draft = _draft_size(clip) if fast_decode else None
    predictions = []
    for preds, bad in iter_classify(head, image_paths, top_k, batch_size, workers, draft, show_bar):
        predictions += preds
        skipped += bad
        if not as_json:
            for p in preds:
                ranked = ", ".join(f"{lab} ({s:.3f})" for lab, s in zip(p.labels, p.scores))
                typer.echo(f"{p.path}\t{ranked}")
    if as_json:
        doc = {
            **clip.describe(),
            "labels": classnames,
            "templates": template_list,
            "top_k": top_k,
            "predictions": [{"path": p.path, "labels": p.labels, "scores": p.scores} for p in predictions],
            "skipped": [{"path": s.path, "reason": s.reason} for s in skipped],
            "n_classified": len(predictions),
            "n_skipped": len(skipped),
        }
        typer.echo(json.dumps(doc, indent=2))
    for s in skipped:
        typer.secho(f"skipped: {s.path}: {s.reason}", err=True, fg=typer.colors.YELLOW)
    typer.echo(f"classified {len(predictions)} image(s), skipped {len(skipped)}", err=True)
    raise typer.Exit(EXIT_SOME_SKIPPED if skipped else EXIT_OK)


def _draft_size(model) -> int | None:
    """Smallest side the model's preprocessing needs, for reduced-size JPEG decoding."""
    proc = getattr(model, "image_processor", None)
    size = getattr(proc, "size", None) or {}
    side = size.get("shortest_edge") or size.get("height") if isinstance(size, dict) else None
    return int(side) if side else 224


@app.command()
def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the known model specs and which of them are available locally (no download)."""
    from visroute.models.registry import list_models

    rows = list_models()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        typer.echo(f"{r['name']:<{width}}  {'cached' if r['cached'] else '      '}  {r['spec']}")
    typer.echo("\nAlso accepted: hf:<hub id or dir>, openclip:<arch>/<tag or checkpoint>, "
               "openclip:local-dir:<dir>, a local model directory.")


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    sys.exit(main())
