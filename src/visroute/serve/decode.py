"""Request bytes -> RGB images, with the same decoding rules as ``visroute classify`` (EXIF orientation,
high-bit-depth and palette modes, the pixel limit checked on the header before decoding)."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from visroute.data.images import ImageDecodeError, check_pixels, to_rgb
from visroute.errors import VisrouteError

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,",
                       re.IGNORECASE)


class BadImageInput(VisrouteError):
    """The request's image could not be read (HTTP 400)."""


def decode_image(data: bytes, max_pixels: int | None) -> Image.Image:
    """One RGB image from encoded bytes, or ``BadImageInput`` saying why (never a traceback)."""
    if not data:
        raise BadImageInput("the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
        with im:
            check_pixels(im.size, max_pixels)
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.width < 1 or im.height < 1:
                raise ImageDecodeError("image has zero width or height")
            return to_rgb(im)
    except ImageDecodeError as e:
        raise BadImageInput(f"image refused: {e}") from None
    except UnidentifiedImageError:
        raise BadImageInput("the upload is not an image file PIL can identify") from None
    except Image.DecompressionBombError as e:
        raise BadImageInput(f"image refused as a decompression bomb ({e})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise BadImageInput(f"corrupt or truncated image ({e})") from None


def b64_bytes(text: str, what: str = "image") -> bytes:
    """Standard base64 (a data URL is accepted too); one clear error when it is not."""
    if not isinstance(text, str) or not text.strip():
        raise BadImageInput(f"'{what}' is empty; give the image as base64 (or a data: URL)")
    payload = text.strip()
    if payload[:5].lower() == "data:":
        return data_url_bytes(payload)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BadImageInput(f"'{what}' is not valid base64") from None


def data_url_bytes(url: str) -> bytes:
    m = _DATA_URL.match(url)
    if not m or not m.group("b64"):
        raise BadImageInput("an image data URL must look like data:image/png;base64,<base64>")
    try:
        return base64.b64decode(url[m.end():], validate=True)
    except (binascii.Error, ValueError):
        raise BadImageInput("the image data URL does not hold valid base64") from None
