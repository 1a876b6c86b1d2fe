"""Finding and decoding image files robustly, in parallel DataLoader workers.

Decoding follows transformers' ``load_image`` (EXIF orientation applied, then RGB), with the modes
PIL's plain ``convert("RGB")`` gets wrong handled explicitly: 16/32-bit integer and float images are
rescaled to 8 bits instead of being clipped to white, CMYK and palette images are converted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class ImageDecodeError(Exception):
    """One file could not be turned into an RGB image; the message says why."""


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str
    index: int | None = None


def find_images(paths: Iterable[str | Path]) -> tuple[list[Path], list[SkippedFile]]:
    """Expand files and folders (recursively, by image extension, sorted) into image paths.

    Files named explicitly are kept whatever their extension (decoding decides); paths that do not
    exist are returned as skipped.
    """
    found: list[Path] = []
    missing: list[SkippedFile] = []
    for p in paths:
        path = Path(p).expanduser()
        if path.is_dir():
            found.extend(sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS))
        elif path.is_file():
            found.append(path)
        else:
            missing.append(SkippedFile(str(p), "no such file or directory"))
    return found, missing


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB without clipping high-bit-depth images."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            scale = 65535.0
        else:
            lo, hi = float(arr.min()), float(arr.max())
            arr = arr - lo
            scale = (hi - lo) or 1.0
        arr = np.clip(np.rint(arr * (255.0 / scale)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if image.mode in ("P", "PA") and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def load_image(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """Decode one file into an RGB PIL image, or raise ImageDecodeError with a readable reason.

    ``draft_size`` (opt-in) lets the JPEG decoder scale down by 1/2, 1/4 or 1/8 while keeping
    the shorter side at least that many pixels: much faster for large photos, slightly different pixels.
    """
    try:
        with Image.open(path) as im:
            if draft_size and im.format == "JPEG":
                w, h = im.size
                scale = min(w, h) / draft_size
                if scale >= 2:
                    im.draft("RGB", (max(1, int(w / scale)), max(1, int(h / scale))))
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.width < 1 or im.height < 1:
                raise ImageDecodeError("image has zero width or height")
            return to_rgb(im)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image file PIL can identify") from None
    except FileNotFoundError:
        raise ImageDecodeError("no such file") from None
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"refused as a decompression bomb ({e})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageDecodeError(f"corrupt or truncated image ({e})") from None


class FileSource:
    """Images stored as files: item ``i`` is ``paths[i]``, identified by its path."""

    def __init__(self, paths: Sequence[str | Path]):
        self.paths = [str(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def item_id(self, i: int) -> str:
        return self.paths[i]

    def load(self, i: int, draft_size: int | None = None) -> Image.Image:
        return load_image(self.paths[i], draft_size)


class PreprocessedItems:
    """Map-style dataset over ``source`` restricted to ``indices``: -> (index, tensors, None) or (index, None, error).

    Errors are returned, not raised, so a DataLoader worker never dies on a bad file.
    """

    def __init__(self, source: Any, preprocess: Callable[[Image.Image], Any], draft_size: int | None = None,
                 indices: Sequence[int] | None = None):
        self.source = source
        self.preprocess = preprocess
        self.draft_size = draft_size
        self.indices = list(range(len(source))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, Any, str | None]:
        i = self.indices[k]
        try:
            image = self.source.load(i, self.draft_size)
            return i, self.preprocess(image), None
        except ImageDecodeError as e:
            return i, None, str(e)
        except Exception as e:  # a processor rejecting an odd image must not kill the worker
            return i, None, f"preprocessing failed ({type(e).__name__}: {e})"


def _keep_items(items: list[tuple[int, Any, str | None]]) -> list[tuple[int, Any, str | None]]:
    return items


def default_num_workers() -> int:
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cores, 8)


def iter_preprocessed_batches(
    source: Any,
    preprocess: Callable[[Image.Image], Any],
    collate: Callable[[list[Any]], Any],
    batch_size: int = 64,
    num_workers: int | None = None,
    draft_size: int | None = None,
    indices: Sequence[int] | None = None,
) -> Iterator[tuple[list[int], Any, list[SkippedFile]]]:
    """Yield (indices of decoded items, collated batch or None, items skipped in this batch).

    ``source`` is a list of file paths or any object with ``__len__``, ``load(i, draft_size)`` and
    ``item_id(i)`` (see ``visroute.data.datasets``); ``indices`` restricts it to a subset.
    Decoding and preprocessing run in ``num_workers`` DataLoader worker processes (default: one
    per CPU core) while the caller runs the model in the main process; order is preserved.
    """
    from torch.utils.data import DataLoader

    if not hasattr(source, "load"):
        source = FileSource(source)
    if num_workers is None:
        num_workers = default_num_workers()
    dataset = PreprocessedItems(source, preprocess, draft_size, indices)
    if num_workers > 0 and len(dataset) <= batch_size:
        num_workers = 0  # start-up of worker processes costs more than it saves on one batch
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=_keep_items, prefetch_factor=4 if num_workers > 0 else None,
        persistent_workers=False,
    )
    for items in loader:
        ok = [(i, x) for i, x, err in items if err is None]
        skipped = [SkippedFile(source.item_id(i), err, i) for i, x, err in items if err is not None]
        batch = collate([x for _, x in ok]) if ok else None
        yield [i for i, _ in ok], batch, skipped
