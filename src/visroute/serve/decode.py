"""Request bytes -> RGB images -> model inputs, with the same decoding rules as ``visroute classify`` (EXIF
orientation, high-bit-depth and palette modes, the pixel limit checked on the header before decoding).

Decoding and preprocessing run on a pool of threads (two per core, 4 to 16), or, with ``decode_processes: true``,
in worker processes (started with ``spawn`` and warmed before the service reports ready; a model whose
preprocessing cannot be pickled falls back to threads). Measured on a 16-core machine, processes gave no more
throughput than threads and added about 3 ms per request (the preprocessed tensor crosses a pipe), so threads are
the default.
"""

from __future__ import annotations

import base64
import binascii
import os
import pickle
import re
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

from PIL import Image

from visroute.data.images import ImageDecodeError, load_image
from visroute.errors import VisrouteError

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,",
                       re.IGNORECASE)


class BadImageInput(VisrouteError):
    """The request's image could not be read (HTTP 400)."""


def decode_image(data: bytes, max_pixels: int | None) -> Image.Image:
    """One RGB image from encoded bytes, or ``BadImageInput`` saying why (never a traceback): the same decoder,
    orientation and pixel limit as files on disk (``visroute.data.images.load_image``)."""
    if not data:
        raise BadImageInput("the image is empty (0 bytes)")
    try:
        return load_image(data, max_pixels=max_pixels)
    except ImageDecodeError as e:
        raise BadImageInput(f"image refused: {e}") from None


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


#: model name -> its ``ImageInputs`` (``visroute.data.batches``: the model's preprocessing in its decode mode), in each
#: worker process and in the service's process for the thread fallback; per process by necessity: a decode-pool
#: worker receives it once at start-up, not with every request
_INPUTS: dict[str, Callable[..., Any]] = {}


def _worker_init(inputs: dict) -> None:
    import torch

    torch.set_num_threads(1)  # one image per worker at a time: the cores are shared by the workers
    _INPUTS.update(inputs)


def _ping(_: int) -> int:
    time.sleep(0.05)  # long enough that every worker gets one, so all are started before the first request
    return os.getpid()


def prepare(model: str, data: bytes | None, b64: str | None, max_pixels: int | None) -> tuple[Any, float]:
    """Decode and preprocess one request's image for ``model``: (model inputs, milliseconds taken), by the same
    rule and in the same decode mode as the model's batches on any engine."""
    t = time.perf_counter()
    raw = data if data is not None else b64_bytes(b64 or "")
    if not raw:
        raise BadImageInput("the image is empty (0 bytes)")
    try:
        x = _INPUTS[model](raw, max_pixels)
    except ImageDecodeError as e:
        raise BadImageInput(f"image refused: {e}") from None
    return x, (time.perf_counter() - t) * 1000


def default_workers(processes: bool = False) -> int:
    """Processes: one per core, up to 8. Threads: two per core, 4 to 16, because a decode thread holds the GIL for
    part of its work (PIL's tobytes, the processor's Python), so one thread per core leaves cores idle and batches
    small (2 cores: 141 -> 155 requests/s and mean batch 5 -> 20 with 8 threads, benchmarks/bench_serve.py)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores)) if processes else max(4, min(16, 2 * cores))


def make_pool(inputs: dict[str, Callable], workers: int = 0, processes: bool = False) -> Executor:
    """The executor ``prepare`` runs on: started and warmed here (blocking), so no request pays for it.
    ``inputs``: model name -> its ``ImageInputs``."""
    if processes:
        try:
            pickle.dumps(inputs)
        except Exception:  # a custom preprocess that cannot travel: decode in threads instead
            processes = False
    workers = workers or default_workers(processes)
    if not processes:
        _INPUTS.update(inputs)
        return ThreadPoolExecutor(max_workers=max(2, workers), thread_name_prefix="decode")
    import multiprocessing

    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init, initargs=(inputs,))
    list(pool.map(_ping, range(workers)))
    return pool
