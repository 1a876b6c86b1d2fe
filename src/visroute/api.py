"""The one-call Python API: ``classify``, ``evaluate`` and ``Router`` — thin wrappers over the same
pipeline factory the CLI, the service and the Ray workers use."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from visroute.errors import VisrouteError
from visroute.pipeline.build import Runtime, build_pipeline
from visroute.pipeline.spec import PipelineSpec


def classify(images: Any, labels: Sequence[str], model: str = "hf:openai/clip-vit-base-patch32",
             templates: Sequence[str] | str | None = None, top_k: int = 5, device: str = "auto") -> list[dict]:
    """Zero-shot classify image files / folders (or PIL images) against ``labels``.

    Returns one ``{"image", "labels", "scores"}`` per image, best first; unreadable files raise one
    VisrouteError naming them (the CLI skips and counts them instead).
    """
    from visroute.batch_classify import classify_images

    items = [images] if isinstance(images, (str, Path)) or hasattr(images, "convert") else list(images)
    spec = PipelineSpec(head="zeroshot", model=model, templates=templates if not isinstance(templates, list)
                        else tuple(templates), device=device)
    head = build_pipeline(spec).classifier(list(labels))
    k = min(top_k, len(head.classes_))
    pil = [im for im in items if hasattr(im, "convert")]
    if pil:
        if len(pil) != len(items):
            raise VisrouteError("give either image paths or PIL images, not both")
        model_ = head.model
        emb = model_.encode_images(model_.collate([model_.preprocess(im.convert("RGB")) for im in pil]))
        idx, scores = head.predict_topk(emb, k)
        return [{"image": i, "labels": [str(head.classes_[j]) for j in r], "scores": [float(s) for s in p]}
                for i, (r, p) in enumerate(zip(idx, scores))]
    run = classify_images(head, items, k, num_workers=0)
    if run.skipped:
        raise VisrouteError(f"{len(run.skipped)} image(s) could not be read, e.g. {run.skipped[0].path}: "
                            f"{run.skipped[0].reason}")
    return [{"image": p.path, "labels": p.labels, "scores": p.scores} for p in run.predictions]


def evaluate(model: str | PipelineSpec, dataset: str, head: str = "zeroshot", output: str | Path = "results",
             progress: bool = False, **spec: Any) -> dict:
    """Evaluate a model (or a full pipeline spec) on a dataset; returns the result document, whose
    ``metrics`` hold acc1 / acc5 / mean per-class recall. ``spec`` keys are PipelineSpec fields
    (``templates``, ``descriptions``, ``params``, ``device``, ...)."""
    from visroute.eval.run import RunOptions
    from visroute.eval.run import evaluate as run_eval

    ps = model if isinstance(model, PipelineSpec) else PipelineSpec.from_dict({"head": head, "model": model, **spec})
    if ps.entry.kind != "classify":
        raise VisrouteError(f"evaluate() takes contrastive heads; for '{ps.head}' use visroute.eval.task_eval")
    doc = run_eval(ps, dataset, RunOptions(output=Path(output), progress=progress, workers=0))
    doc.pop("_file", None)
    return doc


class Router:
    """A trained router bundle: ``Router.load(dir).route(image, task, options)`` picks a model and answers
    with the exact pipeline that was measured for it."""

    def __init__(self, bundle, runtime: Runtime | None = None):
        self.bundle = bundle
        self.runtime = runtime or Runtime()

    @classmethod
    def load(cls, path: str | Path) -> "Router":
        from visroute.router.decide.bundle import RouterBundle

        return cls(RouterBundle.load(path))

    @property
    def models(self) -> list[str]:
        return list(self.bundle.models)

    def route(self, image: str | Path | None, task: str, options: Sequence[str], run: bool = True,
              lam: float | None = None) -> dict:
        """Choose (and, with ``run``, call) a model; ``image`` None routes a text-only task."""
        from visroute.router.decide.run import route_task

        return route_task(self.bundle, image, task, list(options), lam=lam, run=run, runtime=self.runtime)
