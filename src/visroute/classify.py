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


def iter_classify(
    head: ZeroShotClassifier,
    paths: Sequence[str | Path],
    top_k: int = 5,
    batch_size: int = 64,
    num_workers: int | None = None,
    draft_size: int | None = None,
    progress: bool = False,
) -> Iterator[tuple[list[ImagePrediction], list[SkippedFile]]]:
    """Classify already-expanded image paths batch by batch with a fitted head."""
    for batch in iter_encoded_batches(head.model, paths, batch_size, num_workers, draft_size, progress):
        preds = []
        if batch.paths:
            idx, scores = head.predict_topk(batch.embeddings, top_k)
            for path, row_i, row_s in zip(batch.paths, idx, scores):
                preds.append(ImagePrediction(path, [str(head.classes_[j]) for j in row_i], [float(s) for s in row_s]))
        yield preds, batch.skipped


def classify_images(head: ZeroShotClassifier, inputs: Sequence[str | Path], top_k: int = 5, **kw) -> ClassifyRun:
    """Expand files/folders and classify them all; unreadable files are collected in ``skipped``."""
    paths, missing = find_images(inputs)
    run = ClassifyRun(skipped=list(missing))
    for preds, skipped in iter_classify(head, paths, top_k, **kw):
        run.predictions += preds
        run.skipped += skipped
    return run
