"""Dynamic micro-batching: concurrent classify requests for one model share one forward pass.

A request is *admitted* first (a bounded count: past ``max_queue`` the caller gets ``QueueFull`` and answers 503
with ``Retry-After``), then decodes and preprocesses its image off the event loop, then waits here for a batch.
The batcher takes the first waiting image and gathers more until ``max_batch_size`` images or ``max_wait_ms``;
it only waits while other admitted requests are still on their way (decoding), so a lone request never pays the
wait. While a forward pass runs on the model's own thread, new requests queue up and form the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


class QueueFull(Exception):
    """The bounded queue is full: the request is refused before any work (HTTP 503 + Retry-After)."""

    def __init__(self, retry_after_s: int = 1):
        super().__init__("the service is at capacity; retry shortly")
        self.retry_after_s = retry_after_s


class Admission:
    """At most ``limit`` requests in the service at once; the next one is refused (``QueueFull``), never queued."""

    def __init__(self, limit: int, retry_after_s: int = 1):
        self.limit = max(1, int(limit))
        self.retry_after_s = retry_after_s
        self.pending = 0

    @contextlib.contextmanager
    def admit(self):
        if self.pending >= self.limit:
            raise QueueFull(self.retry_after_s)
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1


class ShuttingDown(Exception):
    """The batcher stopped before the request was served."""


@dataclass
class BatchInfo:
    batch_size: int
    queue_ms: float
    forward_ms: float


@dataclass
class _Item:
    inputs: Any
    future: asyncio.Future
    enqueued: float


class MicroBatcher:
    def __init__(self, name: str, encode: Callable[[list[Any]], Any], max_batch_size: int = 32,
                 max_wait_ms: float = 5.0, max_queue: int = 256, on_batch: Callable[[int, float], None] | None = None,
                 on_drop: Callable[[int], None] | None = None):
        self.name = name
        self.encode = encode                  # list of preprocessed inputs -> (n, d) embeddings
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_wait_s = max(0.0, float(max_wait_ms)) / 1000.0
        self.admission = Admission(max_queue, retry_after_s=max(1, round(self.max_wait_s * 4 + 0.5)))
        self.on_batch = on_batch
        self.on_drop = on_drop                # images dropped before their forward (their request was answered)
        self.dropped = 0
        self.arriving = 0                     # admitted, still decoding: worth waiting for
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"forward-{name}")

    @property
    def pending(self) -> int:
        """Requests admitted for this model and not finished (decoding, waiting or in a forward pass)."""
        return self.admission.pending

    @contextlib.contextmanager
    def admit(self):
        """Hold one of ``max_queue`` places for a request's whole life (decode, wait, forward); the ticket marks
        the request as on its way to the queue until it is submitted."""
        with self.admission.admit():
            self.arriving += 1
            ticket = {"arrived": False}
            try:
                yield ticket
            finally:
                if not ticket["arrived"]:
                    self.arriving -= 1

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._queue is not None and not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(ShuttingDown("the service is shutting down"))
        self._executor.shutdown(wait=True)

    # -- work ----------------------------------------------------------------------------------------------
    async def submit(self, inputs: Any, ticket: dict | None = None) -> tuple[Any, BatchInfo]:
        """The embedding (1, d) of one preprocessed image, and how it was batched."""
        if ticket is not None and not ticket["arrived"]:
            ticket["arrived"] = True
            self.arriving -= 1
        if self._queue is None:
            raise ShuttingDown("the batcher is not running")
        fut = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(inputs, fut, time.perf_counter()))
        return await fut

    async def _gather(self) -> list[_Item]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - time.perf_counter()
            if left <= 0 or self.arriving <= 0:  # nobody else on the way: do not wait
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), timeout=left))
            except (asyncio.TimeoutError, TimeoutError):
                break
        kept = [it for it in batch if not it.future.done()]  # a caller answered early (504, gone) is dropped
        if len(kept) < len(batch):
            self.dropped += len(batch) - len(kept)
            if self.on_drop:
                self.on_drop(len(batch) - len(kept))
        return kept

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            start = time.perf_counter()
            try:
                items = [it.inputs for it in batch]
                emb = await (self.encode(items) if asyncio.iscoroutinefunction(self.encode) else  # a remote model
                             loop.run_in_executor(self._executor, self.encode, items))
            except Exception as e:  # one failed pass fails its requests, not the service
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(e)
                continue
            forward_ms = (time.perf_counter() - start) * 1000
            if self.on_batch:
                self.on_batch(len(batch), forward_ms / 1000)  # images, seconds
            for i, it in enumerate(batch):
                if not it.future.done():
                    info = BatchInfo(len(batch), (start - it.enqueued) * 1000, forward_ms)
                    it.future.set_result((emb[i : i + 1], info))
