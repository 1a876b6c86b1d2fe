"""images -> features -> zero-shot head -> top-k predictions (what ``visroute classify`` runs)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from visroute.data.images import SkippedFile, find_images
from visroute.features.encode import iter_encoded_batches
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
    stats: dict = field(default_factory=dict)  # ``gpu`` decode: ``decoded_on_cpu`` (``visroute.features.encode``)


def iter_classify(
    head: ZeroShotClassifier,
    paths: Sequence[str | Path],
    top_k: int = 5,
    batch_size: int = 64,
    num_workers: int | None = None,
    decode: str = "exact",
    progress: bool = False,
    engine=None,
    stats: dict | None = None,
) -> Iterator[tuple[list[ImagePrediction], list[SkippedFile]]]:
    """Classify already-expanded image paths batch by batch with a fitted head; ``engine`` (``visroute.engine``,
    default local): where the images are encoded, batches still in input order; ``decode``: exact | fast | gpu
    (``stats`` receives the ``gpu`` mode's ``decoded_on_cpu``)."""
    for batch in iter_encoded_batches(head.model, paths, batch_size, num_workers, decode, progress, engine, stats):
        preds = []
        if batch.paths:
            idx, scores = head.predict_topk(batch.embeddings, top_k)
            for path, row_i, row_s in zip(batch.paths, idx, scores):
                preds.append(ImagePrediction(path, [str(head.classes_[j]) for j in row_i], [float(s) for s in row_s]))
        yield preds, batch.skipped


def classify_images(head: ZeroShotClassifier, inputs: Sequence[str | Path], top_k: int = 5, **kw) -> ClassifyRun:
    """Expand files/folders and classify them all; unreadable files are collected in ``skipped``. ``decode``
    (keyword) defaults to ``exact``: the model's own preprocessing."""
    paths, missing = find_images(inputs)
    run = ClassifyRun(skipped=list(missing))
    for preds, skipped in iter_classify(head, paths, top_k, stats=run.stats, **kw):
        run.predictions += preds
        run.skipped += skipped
    return run


@dataclass
class ClassifyJob:
    """A fitted head and the image files it will classify (``visroute classify``), set up by ``prepare_classify``."""

    head: ZeroShotClassifier
    classnames: list[str]
    templates: list[str]
    paths: list[Path]
    skipped: list[SkippedFile]
    repeated_labels: list[str]
    decode: str = "exact"

    def batches(self, top_k: int = 5, batch_size: int = 64, num_workers: int | None = None,
                progress: bool | None = None, engine=None, stats: dict | None = None
                ) -> Iterator[tuple[list[ImagePrediction], list[SkippedFile]]]:
        """Predictions batch by batch, decoded in the job's ``decode`` mode; the progress bar defaults to on for
        more than 8 images; ``stats`` (``ClassifyRun.stats``) receives the ``gpu`` mode's CPU-decode count."""
        show = progress if progress is not None else len(self.paths) > 8
        return iter_classify(self.head, self.paths, top_k, batch_size, num_workers, self.decode, show, engine, stats)

    def document(self, top_k: int, run: ClassifyRun) -> dict:
        """The JSON document ``visroute classify --json`` prints."""
        return {
            **self.head.model.describe(),
            "decode": self.decode,
            # gpu mode: the images nvJPEG did not decode (the CPU did); null in exact / fast (all on the CPU)
            "decoded_on_cpu": int(run.stats.get("decoded_on_cpu", 0)) if self.decode == "gpu" else None,
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
                     dtype: str = "auto", decode: str = "exact") -> ClassifyJob:
    """Parse labels and templates, expand the inputs, load the model and fit the head; any problem is one
    ``VisrouteError`` raised before a single image is decoded."""
    from visroute.data.text import load_templates, parse_labels
    from visroute.errors import VisrouteError
    from visroute.models import DEFAULT_MODEL

    from visroute.data.batches import check_decode

    if check_decode(decode) == "gpu":
        from visroute.data.gpu_decode import require_gpu

        require_gpu()  # one line, before any model loads
    classnames, repeated = parse_labels(labels, labels_file)
    template_list = load_templates(templates)
    paths, skipped = find_images(inputs)
    if not paths and not skipped:
        raise VisrouteError("no image files found under the given paths")
    from visroute.pipeline import PipelineSpec, build_pipeline

    spec = PipelineSpec(head="zeroshot", model=model or DEFAULT_MODEL, templates=tuple(template_list), device=device,
                        dtype=dtype, decode=decode)
    head = build_pipeline(spec).classifier(classnames)
    return ClassifyJob(head, classnames, template_list, list(paths), list(skipped), list(repeated), decode)
