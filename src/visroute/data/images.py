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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from visroute.errors import VisrouteError

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
