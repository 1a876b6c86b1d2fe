"""The one decoding road: image items -> model inputs, batch by batch, in one of three named modes.

- ``exact`` (the default everywhere): the model's own preprocessing, bit for bit (the workers stop at uint8 pixels
  where ``visroute.data.pixels`` proves the split exact, and the destination applies the exact lookup table).
- ``fast``: reduced-size JPEG decoding (PIL's draft) and torch's antialiased uint8 resize for images larger than
  the model's input; pixels within about one level of ``exact``.
- ``gpu``: the workers only read JPEG bytes; the bytes are decoded in batches by nvJPEG on the device
  (``torchvision.io.decode_jpeg(device="cuda")``) and resized there (``visroute.data.gpu_decode``). Other formats,
  and JPEGs nvJPEG refuses, are decoded on the CPU exactly and counted.

``choose_decoding`` is the one place the decode size and the number of worker processes are chosen.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from visroute.data.images import FileSource, ImageDecodeError, PreprocessedItems, SkippedFile, resolve_max_pixels
from visroute.errors import VisrouteError
from visroute.log import get_logger

DECODE_MODES = ("exact", "fast", "gpu")
DEFAULT_DECODE = "exact"


def check_decode(mode: Any) -> str:
    """``mode`` if it names a decode mode, else one VisrouteError line naming the valid ones."""
    if mode not in DECODE_MODES:
        raise VisrouteError(f"unknown decode mode {mode!r} (one of: {', '.join(DECODE_MODES)}; 'exact' is the "
                            "model's own preprocessing)")
    return str(mode)


@dataclass(frozen=True)
class Decoding:
    """How a run decodes: the mode, the exact pixel split (or None), the JPEG draft size and the worker count."""

    mode: str
    plan: Any
    draft_size: int | None
    num_workers: int

    @property
    def key(self) -> str:
        """What a feature-cache key records: features decoded another way are never mixed with these."""
        from visroute.data.pixels import FAST_RESIZE_VERSION

        if self.mode == "exact" or (self.mode == "fast" and self.draft_size is None):
            return "decode=exact"
        return f"decode={self.mode}+draft={self.draft_size}+{FAST_RESIZE_VERSION}"


def default_num_workers() -> int:
    return min(available_cores(), 8)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def choose_decoding(preprocess: Any, mode: str = DEFAULT_DECODE, n_items: int | None = None, batch_size: int = 64,
                    num_workers: int | None = None) -> Decoding:
    """The decode size and worker processes for ``n_items`` images in ``mode``.

    Workers: ``num_workers`` if given, else one per core (at most 8); none for a single batch (starting processes
    costs more than it saves on a handful of images). Draft size (``fast``, ``gpu``): the shortest side the model's
    resize needs, so JPEG drafting only ever drops pixels the resize would have dropped. A preprocessing that
    does not split exactly has no fast path: ``fast`` decodes it exactly, ``gpu`` is refused.
    """
    from visroute.data.pixels import pixel_plan

    mode = check_decode(mode)
    plan = pixel_plan(preprocess)
    workers = default_num_workers() if num_workers is None else int(num_workers)
    if workers > 0 and n_items is not None and n_items <= batch_size:
        workers = 0
    draft = plan.fast.min_side if plan is not None and plan.fast is not None and mode != "exact" else None
    if mode == "gpu":
        from visroute.data.gpu_decode import require_gpu

        if plan is None or plan.fast is None:
            raise VisrouteError("decode 'gpu' needs a preprocessing of resize, crop and normalise only; this model's "
                                "is not (use --decode exact)")
        require_gpu()
    return Decoding(mode, plan, draft, workers)


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


def _keep_items(items: list) -> list:
    return items


def _unchanged(item: Any) -> Any:
    return item


class PixelBatches:
    """Map-style dataset whose item ``k`` is a whole batch, decoded and stacked inside the worker.

    -> (decoded item indices, uint8 (B, C, H, W) or None, [(item index, reason)]): one shared-memory tensor per
    batch crosses to the main process, at a quarter of the float32 bytes, instead of one tensor per image.
    In ``gpu`` mode the middle element is instead a list of ("jpeg", bytes) / ("cpu", uint8 (C, H, W)) entries.
    """

    def __init__(self, source: Any, plan: Any, chunks: list[list[int]], draft_size: int | None = None,
                 mode: str = DEFAULT_DECODE):
        self.source, self.plan, self.chunks = source, plan, chunks
        self.draft_size, self.mode = draft_size, mode

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int) -> tuple[list[int], Any, list[tuple[int, str]]]:
        import torch

        from visroute.data.gpu_decode import read_for_gpu

        ok, pixels, bad = [], [], []
        for i in self.chunks[k]:
            try:
                if self.mode == "gpu":
                    pixels.append(read_for_gpu(self.source, i, self.plan))
                else:
                    pixels.append(self.plan.pixels(self.source.load(i, self.draft_size), self.mode == "fast"))
                ok.append(i)
            except ImageDecodeError as e:
                bad.append((i, str(e)))
            except Exception as e:  # as in PreprocessedItems: one odd image is a counted skip, not a dead worker
                bad.append((i, f"preprocessing failed ({type(e).__name__}: {e})"))
        if self.mode == "gpu":
            return ok, (pixels or None), bad
        return ok, (torch.stack(pixels) if pixels else None), bad


def iter_preprocessed_batches(
    source: Any,
    preprocess: Callable[[Any], Any],
    collate: Callable[[list[Any]], Any],
    batch_size: int = 64,
    num_workers: int | None = None,
    decode: str = DEFAULT_DECODE,
    indices: Sequence[int] | None = None,
    max_pixels: int | None = None,
    device: Any = None,
    dtype: Any = None,
    stats: dict | None = None,
) -> Iterator[tuple[list[int], Any, list[SkippedFile]]]:
    """Yield (indices of decoded items, collated batch or None, items skipped in this batch), in input order.

    ``source`` is a list of file paths or any object with ``__len__``, ``load(i, draft_size)`` and
    ``item_id(i)`` (see ``visroute.data.datasets``); ``indices`` restricts it to a subset.
    ``max_pixels`` applies to a plain list of paths (item sources carry their own limit).
    Decoding runs in the worker processes ``choose_decoding`` picks while the caller runs the model in this one.
    Where the preprocessing splits exactly (``visroute.data.pixels``) the workers stop at uint8 pixels and
    stack them, and the exact normalisation table is applied on ``device`` in ``dtype`` (the model's, when
    given; else float32 on the CPU). ``stats`` (a dict), in ``gpu`` mode only: ``decoded_on_cpu`` grows by the
    images of this call that nvJPEG did not decode (kept up to date batch by batch, so a stopped run counts too).
    """
    from torch.utils.data import DataLoader

    resolve_max_pixels(max_pixels)  # a malformed $VISROUTE_MAX_PIXELS is one error here, not a skip per image
    if not hasattr(source, "load"):
        source = FileSource(source, max_pixels)
    order = list(range(len(source))) if indices is None else list(indices)
    how = choose_decoding(preprocess, decode, len(order), batch_size, num_workers)
    main_threads(how.num_workers)
    if how.plan is None:
        get_logger(__name__).debug("preprocessing %r does not split exactly; images travel as float tensors", preprocess)
        yield from _float_batches(source, preprocess, collate, batch_size, how.num_workers, order)
        return
    plan, gpu = how.plan, None
    if how.mode == "gpu":
        from visroute.data.gpu_decode import GpuDecoder

        gpu = GpuDecoder(plan, device if device is not None and str(device) != "cpu" else "cuda")
        base = stats.setdefault("decoded_on_cpu", 0) if stats is not None else 0
    chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    dataset = PixelBatches(source, plan, chunks, how.draft_size, how.mode)
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=how.num_workers, collate_fn=_unchanged,
                        prefetch_factor=2 if how.num_workers > 0 else None,
                        worker_init_fn=_worker_threads if how.num_workers else None, persistent_workers=False)
    tally = _SkipTally(len(order))
    for ok, pixels, bad in loader:
        if gpu is not None and pixels is not None:
            pixels, failed = gpu.decode(pixels)
            bad = bad + [(ok[r], why) for r, why in failed]
            keep = set(range(len(ok))) - {r for r, _ in failed}
            ok = [i for r, i in enumerate(ok) if r in keep]
            if stats is not None:
                stats["decoded_on_cpu"] = base + gpu.on_cpu
        skipped = [SkippedFile(source.item_id(i), err, i) for i, err in bad]
        tally.add(skipped)
        yield ok, (plan.finish(pixels, device, dtype) if pixels is not None else None), skipped
    tally.report()
    if gpu is not None:
        gpu.report(len(order))


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
                   order: list[int]) -> Iterator[tuple[list[int], Any, list[SkippedFile]]]:
    """Per-image float tensors, collated here: any preprocessing (a VLM processor, say) works this way."""
    from torch.utils.data import DataLoader

    dataset = PreprocessedItems(source, preprocess, None, order)
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


class ImageInputs:
    """One image (encoded bytes, a path or a PIL image) -> the model's inputs for it, by the same rule and the same
    bits as the batched road in the same ``mode`` (the service, the Python API's PIL images, the proxy).
    Picklable, so the service's decoding processes can hold one per model."""

    def __init__(self, preprocess: Callable[[Any], Any], mode: str = DEFAULT_DECODE):
        self.preprocess = preprocess
        self.how = choose_decoding(preprocess, mode, 1, 1, 0)
        self._gpu = None

    @property
    def mode(self) -> str:
        return self.how.mode

    def __call__(self, image: Any, max_pixels: int | None = None) -> Any:
        from visroute.data.images import load_image, to_rgb

        plan, mode = self.how.plan, self.how.mode
        if mode == "gpu" and isinstance(image, (bytes, bytearray, memoryview)):
            from visroute.data.gpu_decode import GpuDecoder, jpeg_for_gpu

            data = bytes(image)
            if jpeg_for_gpu(data, resolve_max_pixels(max_pixels)):
                self._gpu = self._gpu or GpuDecoder(plan)
                pixels, failed = self._gpu.decode([("jpeg", data)])
                if failed:
                    raise ImageDecodeError(failed[0][1])
                return {k: v[0].cpu() for k, v in plan.finish(pixels).items()}
        pil = to_rgb(image) if hasattr(image, "convert") else load_image(image, self.how.draft_size, max_pixels)
        if plan is None:
            return self.preprocess(pil)
        if mode == "exact":
            return self.preprocess(pil)  # equal to plan.finish(plan.pixels(pil)) by construction (pixels.py)
        return {k: v[0] for k, v in plan.finish(plan.pixels(pil, True)[None]).items()}
