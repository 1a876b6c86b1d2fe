"""Finding and decoding image files robustly, in parallel DataLoader workers.

Decoding follows transformers' ``load_image`` (EXIF orientation applied, then RGB), with the modes
PIL's plain ``convert("RGB")`` gets wrong handled explicitly: 16/32-bit integer and float images are
rescaled to 8 bits instead of being clipped to white, CMYK and palette images are converted.
"""

from __future__ import annotations

import io

import os
import stat
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from visroute.errors import VisrouteError
from visroute.log import get_logger

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

#: Largest image decoded by default (8192 x 8192): a 50-megapixel camera photo fits, while the decoded RGB copy
#: stays under 200 MiB per worker. PIL's own bomb limit (89M, error at 179M) is too high for several workers.
DEFAULT_MAX_PIXELS = 8192 * 8192
MAX_PIXELS_ENV = "VISROUTE_MAX_PIXELS"


class ImageDecodeError(VisrouteError):
    """One file could not be turned into an RGB image; the message says why."""


def resolve_max_pixels(value: int | None = None) -> int | None:
    """The pixel limit in force: ``value`` if given, else $VISROUTE_MAX_PIXELS, else the default; 0 means none."""
    if value is None:
        raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not raw:
            return DEFAULT_MAX_PIXELS
        try:
            number = float(raw.replace("_", ""))
        except ValueError:
            number = float("nan")
        if not (number >= 0 and number.is_integer()):
            raise VisrouteError(f"{MAX_PIXELS_ENV}={raw!r} is not a pixel count "
                                "(a whole number such as 67108864; 0 disables the limit)")
        value = int(number)
    if value < 0:
        raise VisrouteError(f"the pixel limit must be 0 (no limit) or positive, not {value}")
    return int(value) or None


def not_a_regular_file(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as an image file (None if it is a regular file); never opens it.

    Opening a FIFO blocks until a writer appears and a device such as /dev/zero never ends, so both
    are refused from ``stat`` alone.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as e:
        return f"cannot access the file ({e.strerror or e})"
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
             (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))
    kind = next((name for test, name in kinds if test(mode)), "a special file")
    return f"not a regular file ({kind})"


def check_pixels(size: tuple[int, int], limit: int | None) -> None:
    """Refuse an image whose header announces more than ``limit`` pixels, before any decoding."""
    w, h = size
    if limit is not None and w * h > limit:
        raise ImageDecodeError(f"image is {w}x{h} = {w * h:,} pixels, over the limit of {limit:,} "
                               f"(raise it with {MAX_PIXELS_ENV}=N; 0 disables it)")


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str
    index: int | None = None


def find_images(paths: Iterable[str | Path]) -> tuple[list[Path], list[SkippedFile]]:
    """Expand files and folders (recursively, by image extension, sorted) into image paths.

    Files named explicitly are kept whatever their extension (decoding decides); paths that do not
    exist, and FIFOs, devices or sockets (named, or with an image extension in a folder), are returned
    as skipped with the reason.
    """
    found: list[Path] = []
    missing: list[SkippedFile] = []
    for p in paths:
        path = Path(p).expanduser()
        if path.is_dir():
            for f in sorted(f for f in path.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and not f.is_dir()):
                why = not_a_regular_file(f)  # a FIFO named x.png would block the decoder
                if why:
                    missing.append(SkippedFile(str(f), why))
                else:
                    found.append(f)
        elif path.is_file():
            found.append(path)
        else:
            why = not_a_regular_file(path)
            missing.append(SkippedFile(str(p), "no such file or directory" if why == "no such file" else why))
    return found, missing


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB without clipping high-bit-depth images."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_deep_to_uint8(image), mode="L").convert("RGB")
    if image.mode in ("P", "PA") and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def _deep_to_uint8(image: Image.Image) -> np.ndarray:
    """16/32-bit integer or float pixels rescaled to 0..255, a block of rows at a time to bound memory."""
    src = np.asarray(image)
    if image.mode.startswith("I;16"):
        lo, scale = 0.0, 65535.0
    else:
        finite = src[np.isfinite(src)] if src.dtype.kind == "f" else src
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        scale = (hi - lo) or 1.0
    out = np.empty(src.shape, dtype=np.uint8)
    rows = max(1, (1 << 22) // max(1, src.shape[1]))
    for r in range(0, src.shape[0], rows):
        block = (src[r : r + rows].astype(np.float64) - lo) * (255.0 / scale)
        out[r : r + rows] = np.clip(np.rint(np.nan_to_num(block, nan=0.0)), 0, 255)
    return out


def load_image(path: str | Path | bytes, draft_size: int | None = None, max_pixels: int | None = None) -> Image.Image:
    """Decode one file (or encoded bytes, e.g. an upload) into an RGB PIL image, or raise ImageDecodeError with a
    readable reason.

    ``draft_size`` (opt-in) lets the JPEG decoder scale down by 1/2, 1/4 or 1/8 while keeping
    the shorter side at least that many pixels: much faster for large photos, slightly different pixels.
    ``max_pixels`` (default: $VISROUTE_MAX_PIXELS or DEFAULT_MAX_PIXELS) is checked on the size the
    header announces, after drafting, so an oversized image is refused without being decoded.
    Only regular files are opened: a FIFO or device would block or never end.
    """
    limit = resolve_max_pixels(max_pixels)
    if isinstance(path, (bytes, bytearray, memoryview)):
        path = io.BytesIO(bytes(path))
    else:
        why = not_a_regular_file(path)
        if why:
            raise ImageDecodeError(why)
    try:
        with warnings.catch_warnings():  # our own limit decides; PIL's bomb warning would only be noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            if draft_size and im.format == "JPEG":
                w, h = im.size
                scale = min(w, h) / draft_size
                if scale >= 2:
                    im.draft("RGB", (max(1, int(w / scale)), max(1, int(h / scale))))
            check_pixels(im.size, limit)
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

    def __init__(self, paths: Sequence[str | Path], max_pixels: int | None = None):
        self.paths = [str(p) for p in paths]
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def item_id(self, i: int) -> str:
        return self.paths[i]

    def load(self, i: int, draft_size: int | None = None) -> Image.Image:
        return load_image(self.paths[i], draft_size, self.max_pixels)


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
        except Exception as e:  # a processor rejecting an odd image must not kill the worker; counted as skipped
            return i, None, f"preprocessing failed ({type(e).__name__}: {e})"


def _keep_items(items: list[tuple[int, Any, str | None]]) -> list[tuple[int, Any, str | None]]:
    return items


def _unchanged(item: Any) -> Any:
    return item


class PixelBatches:
    """Map-style dataset whose item ``k`` is a whole batch, decoded and stacked inside the worker.

    -> (decoded item indices, uint8 (B, C, H, W) or None, [(item index, reason)]): one shared-memory tensor per
    batch crosses to the main process, at a quarter of the float32 bytes, instead of one tensor per image.
    """

    def __init__(self, source: Any, plan: Any, chunks: list[list[int]], draft_size: int | None = None,
                 fast: bool = False):
        self.source, self.plan, self.chunks = source, plan, chunks
        self.draft_size, self.fast = draft_size, fast

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int) -> tuple[list[int], Any, list[tuple[int, str]]]:
        import torch

        ok, pixels, bad = [], [], []
        for i in self.chunks[k]:
            try:
                pixels.append(self.plan.pixels(self.source.load(i, self.draft_size), self.fast))
                ok.append(i)
            except ImageDecodeError as e:
                bad.append((i, str(e)))
            except Exception as e:  # as in PreprocessedItems: one odd image is a counted skip, not a dead worker
                bad.append((i, f"preprocessing failed ({type(e).__name__}: {e})"))
        return ok, (torch.stack(pixels) if pixels else None), bad


def default_num_workers() -> int:
    return min(available_cores(), 8)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _worker_threads(_worker_id: int) -> None:
    """Each decoding worker does its (single-image) work on one thread: the cores belong to the workers as a whole."""
    import torch

    torch.set_num_threads(1)


def main_threads(num_workers: int) -> int:
    """torch threads for the process that runs the model while ``num_workers`` processes decode: every core
    (the model is what the workers wait for when it is large, and it sleeps while they work when it is small),
    never more than there are cores. Set once, logged at INFO (``--verbose``)."""
    import torch

    cores = available_cores()
    want = max(1, min(torch.get_num_threads(), cores))
    if torch.get_num_threads() != want:
        torch.set_num_threads(want)
    if (cores, num_workers, want) not in _LOGGED_THREADS:
        _LOGGED_THREADS.add((cores, num_workers, want))
        get_logger(__name__).info("threads: %d core(s); %d decoding worker process(es) with 1 torch thread each; "
                                  "model in the main process with %d torch thread(s); OMP_WAIT_POLICY=%s", cores,
                                  num_workers, want, os.environ.get("OMP_WAIT_POLICY", "(unset)"))
    return want


_LOGGED_THREADS: set = set()


def iter_preprocessed_batches(
    source: Any,
    preprocess: Callable[[Image.Image], Any],
    collate: Callable[[list[Any]], Any],
    batch_size: int = 64,
    num_workers: int | None = None,
    draft_size: int | None = None,
    indices: Sequence[int] | None = None,
    max_pixels: int | None = None,
    device: Any = None,
    dtype: Any = None,
) -> Iterator[tuple[list[int], Any, list[SkippedFile]]]:
    """Yield (indices of decoded items, collated batch or None, items skipped in this batch).

    ``source`` is a list of file paths or any object with ``__len__``, ``load(i, draft_size)`` and
    ``item_id(i)`` (see ``visroute.data.datasets``); ``indices`` restricts it to a subset.
    ``max_pixels`` applies to a plain list of paths (item sources carry their own limit).
    Decoding and preprocessing run in ``num_workers`` DataLoader worker processes (default: one
    per CPU core) while the caller runs the model in the main process; order is preserved.
    Where the preprocessing splits exactly (``visroute.data.pixels``) the workers stop at uint8 pixels and
    stack them, and the exact normalisation table is applied on ``device`` in ``dtype`` (the model's, when
    given; else float32 on the CPU); ``draft_size`` (fast decode)
    also lets large images be decoded at reduced size and resized with torch's antialiased kernel.
    """
    from torch.utils.data import DataLoader

    from visroute.data.pixels import pixel_plan

    resolve_max_pixels(max_pixels)  # a malformed $VISROUTE_MAX_PIXELS is one error here, not a skip per image
    if not hasattr(source, "load"):
        source = FileSource(source, max_pixels)
    if num_workers is None:
        num_workers = default_num_workers()
    order = list(range(len(source))) if indices is None else list(indices)
    if num_workers > 0 and len(order) <= batch_size:
        num_workers = 0  # start-up of worker processes costs more than it saves on one batch
    main_threads(num_workers)
    plan = pixel_plan(preprocess)
    if plan is not None and draft_size and plan.fast is not None:
        draft_size = max(draft_size, plan.fast.min_side)  # never decode below what the model's resize needs
    if plan is None:
        get_logger(__name__).debug("preprocessing %r does not split exactly; images travel as float tensors", preprocess)
        yield from _float_batches(source, preprocess, collate, batch_size, num_workers, draft_size, order)
        return
    chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    dataset = PixelBatches(source, plan, chunks, draft_size, fast=bool(draft_size))
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers, collate_fn=_unchanged,
                        prefetch_factor=2 if num_workers > 0 else None, worker_init_fn=_worker_threads if num_workers
                        else None, persistent_workers=False)
    tally = _SkipTally(len(order))
    for ok, pixels, bad in loader:
        skipped = [SkippedFile(source.item_id(i), err, i) for i, err in bad]
        tally.add(skipped)
        yield ok, (plan.finish(pixels, device, dtype) if pixels is not None else None), skipped
    tally.report()


class _SkipTally:
    def __init__(self, total: int):
        self.total, self.n, self.first = total, 0, None

    def add(self, skipped: list[SkippedFile]) -> None:
        self.n += len(skipped)
        self.first = self.first or (skipped[0] if skipped else None)

    def report(self) -> None:
        if self.first is not None:  # each skip is also returned to the caller, which lists them
            get_logger(__name__).warning("%d of %d image(s) skipped: could not be read or preprocessed (first: %s: %s)",
                                         self.n, self.total, self.first.path, self.first.reason)


def _float_batches(source: Any, preprocess: Callable, collate: Callable, batch_size: int, num_workers: int,
                   draft_size: int | None, order: list[int]) -> Iterator[tuple[list[int], Any, list[SkippedFile]]]:
    """Per-image float tensors, collated here: any preprocessing (a VLM processor, say) works this way."""
    from torch.utils.data import DataLoader

    dataset = PreprocessedItems(source, preprocess, draft_size, order)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=_keep_items, prefetch_factor=4 if num_workers > 0 else None,
        worker_init_fn=_worker_threads if num_workers else None, persistent_workers=False,
    )
    tally = _SkipTally(len(dataset))
    for items in loader:
        ok = [(i, x) for i, x, err in items if err is None]
        skipped = [SkippedFile(source.item_id(i), err, i) for i, x, err in items if err is not None]
        tally.add(skipped)
        batch = collate([x for _, x in ok]) if ok else None
        yield [i for i, _ in ok], batch, skipped
    tally.report()
