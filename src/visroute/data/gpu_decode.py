"""``decode: gpu``: JPEG bytes decoded in batches by nvJPEG on the device, resized there with the model's geometry.

The decoding workers only read bytes and the header (format, size: the pixel limit is checked before any
decoding). A JPEG in RGB or greyscale travels as bytes; anything else (PNG, CMYK JPEG, a dataset item that is
not a file) is decoded in the worker with the exact CPU path. A batch nvJPEG refuses is retried image by image,
and each image it still refuses is decoded on the CPU from its bytes. Every CPU decode is counted
(``GpuDecoder.on_cpu``) and reported once per run, so a run that silently fell back is visible.
"""

from __future__ import annotations

import io
from typing import Any, Callable

from visroute.data.images import ImageDecodeError, check_pixels, load_image, not_a_regular_file, resolve_max_pixels
from visroute.errors import VisrouteError
from visroute.log import get_logger


def require_gpu() -> None:
    """One line instead of a CUDA traceback when ``decode: gpu`` is asked for where it cannot run."""
    import torch

    if not torch.cuda.is_available():
        raise VisrouteError("decode 'gpu' needs a CUDA device and none is available here "
                            "(use --decode exact or --decode fast)")
    try:
        import torchvision.io  # noqa: F401
    except ImportError:
        raise VisrouteError("decode 'gpu' needs torchvision (pip install torchvision) for nvJPEG decoding") from None


def _raw_bytes(source: Any, i: int) -> bytes | None:
    """The encoded file of item ``i`` when the source is made of files, else None (decoded on the CPU)."""
    paths = getattr(source, "paths", None)
    if paths is None:
        return None
    path = paths[i]
    why = not_a_regular_file(path)
    if why:
        raise ImageDecodeError(why)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ImageDecodeError(f"cannot read the file ({e.strerror or e})") from None


def jpeg_for_gpu(data: bytes, limit: int | None) -> bool:
    """Whether nvJPEG can take ``data``: a baseline/progressive JPEG in RGB or greyscale, within the pixel limit
    (checked from the header, so an oversized image is refused without being decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG":
                return False
            check_pixels(im.size, limit)
            return im.mode in ("RGB", "L")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False  # the CPU path gives the readable reason


def read_for_gpu(source: Any, i: int, plan: Any) -> tuple[str, Any]:
    """In a decoding worker: ("jpeg", bytes) for nvJPEG, or ("cpu", uint8 (C, H, W)) decoded exactly here."""
    data = _raw_bytes(source, i)
    limit = resolve_max_pixels(getattr(source, "max_pixels", None))
    if data is not None and jpeg_for_gpu(data, limit):
        return "jpeg", data
    image = source.load(i, None) if data is None else load_image(data, None, limit)
    return "cpu", plan.pixels(image, False)


class GpuDecoder:
    """Turns a worker batch of ("jpeg", bytes) / ("cpu", pixels) entries into uint8 (B, C, H, W) on ``device``.

    ``decode_jpeg`` defaults to ``torchvision.io.decode_jpeg``; tests inject a CPU stand-in to check the
    fallback and its count without a GPU.
    """

    def __init__(self, plan: Any, device: Any = "cuda", decode_jpeg: Callable | None = None):
        self.plan, self.device = plan, device
        self._decode_jpeg = decode_jpeg
        self.on_gpu = 0
        self.on_cpu = 0

    def _nvjpeg(self, blobs: list) -> list:
        if self._decode_jpeg is None:
            from torchvision.io import ImageReadMode, decode_jpeg

            return decode_jpeg(blobs, mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=True)
        return self._decode_jpeg(blobs, self.device)

    def decode(self, entries: list[tuple[str, Any]]) -> tuple[Any, list[tuple[int, str]]]:
        """(uint8 pixels of the entries that decoded, stacked on the device, or None; [(entry position, reason)])."""
        import torch

        out: list = [None] * len(entries)
        failed: list[tuple[int, str]] = []
        jpeg = [r for r, (kind, _) in enumerate(entries) if kind == "jpeg"]
        for r, (kind, x) in enumerate(entries):
            if kind == "cpu":
                out[r] = x.to(self.device)
                self.on_cpu += 1
        if jpeg:
            blobs = [torch.frombuffer(bytearray(entries[r][1]), dtype=torch.uint8) for r in jpeg]
            try:
                decoded = list(self._nvjpeg(blobs))
            except Exception:  # one bad file fails the whole batch: retry one by one
                decoded = []
                for b in blobs:
                    try:
                        decoded.append(self._nvjpeg([b])[0])
                    except Exception:
                        decoded.append(None)
            for r, img in zip(jpeg, decoded):
                px = self._resize(img) if img is not None else None
                if px is not None:
                    out[r] = px
                    self.on_gpu += 1
                    continue
                try:  # nvJPEG refused it (or the geometry needs padding): the exact CPU path, counted
                    out[r] = self.plan.pixels(load_image(entries[r][1]), False).to(self.device)
                    self.on_cpu += 1
                except ImageDecodeError as e:
                    failed.append((r, str(e)))
        kept = [x for x in out if x is not None]
        return (torch.stack(kept) if kept else None), failed

    def _resize(self, img: Any) -> Any:
        """The model's resize and centre crop on the device (float antialiased kernel, rounded back to uint8)."""
        import torch

        fast = self.plan.fast
        if img.shape[0] == 1:
            img = img.expand(3, -1, -1)
        h, w = int(img.shape[1]), int(img.shape[2])
        th, tw = fast.target(w, h)
        x = torch.nn.functional.interpolate(img[None].float(), size=(th, tw), mode=fast.mode, antialias=True,
                                            align_corners=False)
        x = x.round_().clamp_(0, 255).to(torch.uint8)
        if fast.crop is not None:
            ch, cw = fast.crop
            off = (lambda d: int(round(d / 2.0))) if fast.round_crop else (lambda d: d // 2)
            top, left = off(th - ch), off(tw - cw)
            if top < 0 or left < 0:
                return None
            x = x[:, :, top : top + ch, left : left + cw]
        return x[0].contiguous()

    def report(self, total: int) -> None:
        if self.on_cpu:
            get_logger(__name__).warning("decode gpu: %d of %d image(s) decoded on the CPU (not a JPEG nvJPEG reads, "
                                         "or refused by it)", self.on_cpu, total)
