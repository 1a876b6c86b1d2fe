"""Stream image files through a contrastive model's image tower, batch by batch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from visroute.data.images import SkippedFile, iter_preprocessed_batches
from visroute.models.contrastive import ContrastiveModel


@dataclass
class EncodedBatch:
    """Embeddings of the files of one batch that decoded, plus the files that did not."""

    paths: list[str]
    embeddings: torch.Tensor
    skipped: list[SkippedFile] = field(default_factory=list)


def iter_encoded_batches(
    model: ContrastiveModel,
    paths: Sequence[str | Path],
    batch_size: int = 64,
    num_workers: int | None = None,
    draft_size: int | None = None,
    progress: bool = False,
) -> Iterator[EncodedBatch]:
    """Decode in worker processes, encode in the main one; yields batches in input order.

    ``draft_size`` (fast decode, off by default here so library results are the model's exact preprocessing):
    reduced-size JPEG decoding and torch's antialiased resize for images larger than the model's input.
    """
    paths = [str(p) for p in paths]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(paths), unit="img", desc="encoding", dynamic_ncols=True)
    try:
        for indices, batch, skipped in iter_preprocessed_batches(
            paths, model.preprocess, model.collate, batch_size, num_workers, draft_size,
            device=getattr(model, "device", None), dtype=getattr(model, "dtype", None),
        ):
            emb = model.encode_images(batch) if batch is not None else torch.empty(0, 0)
            if bar is not None:
                bar.update(len(indices) + len(skipped))
            yield EncodedBatch([paths[i] for i in indices], emb, skipped)
    finally:
        if bar is not None:
            bar.close()


def encode_image_files(model: ContrastiveModel, paths: Sequence[str | Path], **kw) -> EncodedBatch:
    """All embeddings at once (fine for small sets; large sets should stream or use the cache)."""
    done, embs, skipped = [], [], []
    for b in iter_encoded_batches(model, paths, **kw):
        done += b.paths
        skipped += b.skipped
        if b.paths:
            embs.append(b.embeddings)
    return EncodedBatch(done, torch.cat(embs) if embs else torch.empty(0, 0), skipped)
