"""Routing one task end to end: choose with the router, then run the chosen model's measured pipeline.

The query becomes a ``Task`` whose router text comes from the same ``task_text`` as the training records, and
the chosen model is rebuilt from the exact pipeline spec its records carry, through ``build_pipeline``.
"""

from __future__ import annotations

from pathlib import Path

from visroute.errors import VisrouteError
from visroute.router.decide.bundle import RouterBundle
from visroute.tasks.model import Task


def make_query(question: str, options: list[str], image: str | Path | None = None, context: str = "") -> Task:
    """A user's task: text-only when ``image`` is None."""
    if not question or not question.strip():
        raise VisrouteError("the task needs a question or instruction")
    if len(options) < 2:
        raise VisrouteError("give at least two options")
    if image is not None:
        p = Path(image)
        if not p.is_file():
            raise VisrouteError(f"image {image} does not exist or is not a regular file")
        image = str(p.resolve())
    return Task("query", image, question.strip(), list(options), None, context, "query", "vqa" if image else "text")


def route_task(bundle: RouterBundle, image: str | Path | None, question: str, options: list[str],
               lam: float | None = None, run: bool = True, variant: str | None = None, runtime=None) -> dict:
    """Choose a model for one task and (``run``) answer it with that model's measured pipeline."""
    task = make_query(question, options, image)
    images = None
    if bundle.features == "text+image":
        from visroute.router.data.images import encode_paths

        images = encode_paths(bundle.image_model, [task.image or ""])
    picks, proba = bundle.decide([task.text], images, lam)
    chosen = bundle.models[int(picks[0])]
    out = {"chosen": chosen, "lambda": bundle.lam if lam is None else lam, "task_text": task.text,
           "predicted_accuracy": {m: float(p) for m, p in zip(bundle.models, proba[0])},
           "expected_cost": {m: float(c) for m, c in zip(bundle.models, bundle.costs)}}
    if not run:
        return out
    from visroute.pipeline.build import build_pipeline

    spec = bundle.pipeline_spec(chosen, variant)
    pred = build_pipeline(spec, runtime).predict([task])[0]
    if pred.error:
        raise VisrouteError(f"{chosen} failed to answer: {pred.error}")
    out.update(pipeline=spec.to_dict(), answer=options[pred.predicted] if pred.predicted is not None else None,
               raw_answer=pred.raw_answer, parse_rule=pred.parse_rule, latency_s=pred.latency_s, cost=pred.call_cost,
               cached=pred.cached)
    return out
