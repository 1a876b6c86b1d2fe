"""The one image encoder: every caller's images become features here (through an engine's ``map_images``).

``encode_batches`` is the loop (decode in workers by ``visroute.data.batches``, encode in this process);
``LocalEncoder`` runs it as is (it is the local engine's image part), a Ray actor runs it on its chunk, the feature
cache stores what it yields. ``encode_inputs`` encodes already prepared inputs (the service's micro-batches, the
Python API's PIL images).

``visroute.engine`` sits above this layer: an engine is handed down (``engine=``), never looked up from here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from visroute.data.batches import DEFAULT_DECODE, iter_preprocessed_batches
from visroute.data.images import SkippedFile


@dataclass
class EncodedBatch:
    """Embeddings of the files of one batch that decoded, plus the files that did not."""

    paths: list[str]
    embeddings: torch.Tensor
    skipped: list[SkippedFile] = field(default_factory=list)


def encode_inputs(model: Any, items: list) -> torch.Tensor:
    """L2-normalised embeddings of prepared per-image inputs (``ImageInputs`` outputs), in one forward pass."""
    with torch.inference_mode():
        return model.encode_images(model.collate(items))


def encode_batches(model: Any, source: Any, indices: Sequence[int] | None = None, batch_size: int = 64,
                   num_workers: int | None = None, decode: str = DEFAULT_DECODE,
                   stats: dict | None = None) -> Iterator[tuple[list[int], torch.Tensor | None, list[SkippedFile]]]:
    """(decoded item indices, their embeddings or None, skipped items) per batch of ``source``, in input order."""
    for idx, batch, skipped in iter_preprocessed_batches(source, model.preprocess, model.collate, batch_size,
                                                         num_workers, decode, indices,
                                                         device=getattr(model, "device", None),
                                                         dtype=getattr(model, "dtype", None), stats=stats):
        yield idx, (model.encode_images(batch) if batch is not None else None), skipped


class LocalEncoder:
    """``map_images`` in this process: what encodes images when no engine is handed down, and the image part of
    ``visroute.engine``'s local engine (which is this class plus calls and grid cells)."""

    def map_images(self, model: Any, source: Any, batch_size: int = 64, decode: str = DEFAULT_DECODE,
                   num_workers: int | None = None, indices: Sequence[int] | None = None
                   ) -> Iterator[tuple[list[int], torch.Tensor | None, list[SkippedFile]]]:
        """(decoded item indices, embeddings or None, skipped) per batch, in input order."""
        return encode_batches(model, source, indices, batch_size, num_workers, decode)


def iter_encoded_batches(
    model: Any,
    paths: Sequence[str | Path],
    batch_size: int = 64,
    num_workers: int | None = None,
    decode: str = DEFAULT_DECODE,
    progress: bool = False,
    engine: Any = None,
) -> Iterator[EncodedBatch]:
    """Image files -> EncodedBatch per batch, in input order, on ``engine`` (default: this process, ``LocalEncoder``).

    ``decode``: ``exact`` (the model's own preprocessing, bit for bit), ``fast`` or ``gpu``
    (``visroute.data.batches``).
    """
    engine = engine if engine is not None else LocalEncoder()
    paths = [str(p) for p in paths]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(paths), unit="img", desc="encoding", dynamic_ncols=True)
    try:
        for indices, emb, skipped in engine.map_images(model, paths, batch_size, decode=decode,
                                                       num_workers=num_workers):
            if bar is not None:
                bar.update(len(indices) + len(skipped))
            yield EncodedBatch([paths[i] for i in indices], emb if emb is not None else torch.empty(0, 0), skipped)
    finally:
        if bar is not None:
            bar.close()


def encode_image_files(model: Any, paths: Sequence[str | Path], **kw) -> EncodedBatch:
    """All embeddings at once (fine for small sets; large sets should stream or use the cache)."""
    done, embs, skipped = [], [], []
    for b in iter_encoded_batches(model, paths, **kw):
        done += b.paths
        skipped += b.skipped
        if b.paths:
            embs.append(b.embeddings)
    return EncodedBatch(done, torch.cat(embs) if embs else torch.empty(0, 0), skipped)
