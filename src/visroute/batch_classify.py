"""images -> features -> zero-shot head -> top-k predictions (what ``visroute classify`` runs)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from visroute.data.images import SkippedFile, find_images
from visroute.features.encode import EncodedBatch, iter_encoded_batches
from visroute.heads.zeroshot import ZeroShotClassifier


@dataclass
class ImagePrediction:
    path: str
    labels: list[str]
    scores: list[float]


@dataclass
class ClassifyRun:
    predictions: list[ImagePrediction] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)


def iter_classify(
    head: ZeroShotClassifier,
    paths: Sequence[str | Path],
    top_k: int = 5,
    batch_size: int = 64,
    num_workers: int | None = None,
    draft_size: int | None = None,
    progress: bool = False,
    engine=None,
) -> Iterator[tuple[list[ImagePrediction], list[SkippedFile]]]:
    """Classify already-expanded image paths batch by batch with a fitted head; ``engine`` (``visroute.engine``,
    e.g. Ray): where the images are encoded, batches still in input order."""
    batches = iter_encoded_batches(head.model, paths, batch_size, num_workers, draft_size, progress) if engine is None \
        else engine_batches(engine, head.model, [str(p) for p in paths], batch_size, draft_size)
    for batch in batches:
        preds = []
        if batch.paths:
            idx, scores = head.predict_topk(batch.embeddings, top_k)
            for path, row_i, row_s in zip(batch.paths, idx, scores):
                preds.append(ImagePrediction(path, [str(head.classes_[j]) for j in row_i], [float(s) for s in row_s]))
        yield preds, batch.skipped


def engine_batches(engine, model, paths: list[str], batch_size: int, draft_size: int | None) -> Iterator[EncodedBatch]:
    for idx, emb, skipped in engine.map_images(model, paths, batch_size, draft_size):
        yield EncodedBatch([paths[i] for i in idx], emb, skipped)


def classify_images(head: ZeroShotClassifier, inputs: Sequence[str | Path], top_k: int = 5, **kw) -> ClassifyRun:
    """Expand files/folders and classify them all; unreadable files are collected in ``skipped``. Large JPEGs are
    decoded at reduced size and resized fast (``visroute.data.pixels``) unless ``draft_size=None`` is passed."""
    paths, missing = find_images(inputs)
    kw.setdefault("draft_size", draft_size(head.model))  # fast decode, as `visroute classify` (draft_size=None: exact)
    run = ClassifyRun(skipped=list(missing))
    for preds, skipped in iter_classify(head, paths, top_k, **kw):
        run.predictions += preds
        run.skipped += skipped
    return run


def draft_size(model) -> int:
    """Smallest side the model's preprocessing needs, for reduced-size JPEG decoding (``--fast-decode``).

    transformers 5 stores ``size`` as a SizeDict (attributes), 4.x as a dict; both are read.
    """
    size = getattr(getattr(model, "image_processor", None), "size", None)
    get = (lambda k: size.get(k)) if isinstance(size, dict) else (lambda k: getattr(size, k, None))  # noqa: E731
    side = (get("shortest_edge") or get("height")) if size is not None else None
    return int(side) if side else 224


@dataclass
class ClassifyJob:
    """A fitted head and the image files it will classify (``visroute classify``), set up by ``prepare_classify``."""

    head: ZeroShotClassifier
    classnames: list[str]
    templates: list[str]
    paths: list[Path]
    skipped: list[SkippedFile]
    repeated_labels: list[str]

    def batches(self, top_k: int = 5, batch_size: int = 64, num_workers: int | None = None, fast_decode: bool = True,
                progress: bool | None = None, engine=None) -> Iterator[tuple[list[ImagePrediction], list[SkippedFile]]]:
        """Predictions batch by batch; the progress bar defaults to on for more than 8 images."""
        show = progress if progress is not None else len(self.paths) > 8
        draft = draft_size(self.head.model) if fast_decode else None
        return iter_classify(self.head, self.paths, top_k, batch_size, num_workers, draft, show, engine)

    def document(self, top_k: int, run: ClassifyRun) -> dict:
        """The JSON document ``visroute classify --json`` prints."""
        return {
            **self.head.model.describe(),
            "labels": self.classnames,
            "templates": self.templates,
            "top_k": top_k,
            "predictions": [{"path": p.path, "labels": p.labels, "scores": p.scores} for p in run.predictions],
            "skipped": [{"path": s.path, "reason": s.reason} for s in run.skipped],
            "n_classified": len(run.predictions),
            "n_skipped": len(run.skipped),
        }


def prepare_classify(inputs: Sequence[str | Path], labels: str | None = None, labels_file: str | None = None,
                     templates: str | None = None, model: str | None = None, device: str = "auto",
                     dtype: str = "auto") -> ClassifyJob:
    """Parse labels and templates, expand the inputs, load the model and fit the head; any problem is one
    ``VisrouteError`` raised before a single image is decoded."""
    from visroute.data.text import load_templates, parse_labels
    from visroute.errors import VisrouteError
    from visroute.models import DEFAULT_MODEL

    classnames, repeated = parse_labels(labels, labels_file)
    template_list = load_templates(templates)
    paths, skipped = find_images(inputs)
    if not paths and not skipped:
        raise VisrouteError("no image files found under the given paths")
    from visroute.pipeline import PipelineSpec, build_pipeline

    spec = PipelineSpec(head="zeroshot", model=model or DEFAULT_MODEL, templates=tuple(template_list), device=device,
                        dtype=dtype)
    head = build_pipeline(spec).classifier(classnames)
    return ClassifyJob(head, classnames, template_list, list(paths), list(skipped), list(repeated))
