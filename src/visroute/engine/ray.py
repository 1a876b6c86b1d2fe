"""The Ray engine: the same work as the local engine, spread over a Ray cluster (or a local Ray).

- images: Ray Data reads the list of item chunks and runs ``map_batches`` with an actor pool; each actor builds
  its model once (``EncodeWorker``). Results come back in input order, so the feature shards, result JSON and
  Parquet written by the driver are those of the local engine. Ray Data restarts a killed actor and retries
  its chunk (``max_restarts`` / ``max_task_retries`` default to -1 for actor pools).
- calls (VLM/LLM grid cells, describe): Ray tasks, at most ``endpoint_concurrency // concurrency`` in flight per
  endpoint, each sending at most ``concurrency`` requests at once, so one endpoint never sees more than
  ``endpoint_concurrency`` requests from the whole cluster. A task whose worker dies is retried.

``ray`` is imported only here, and only when an engine is made.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from visroute.engine.options import EngineOptions
from visroute.engine.workers import EncodeWorker, call, driver_env, generate_chunk, with_own_runtime
from visroute.errors import MissingExtraError, VisrouteError

#: tasks retried after their worker died (kill -9, node lost); exceptions raised by visroute are not retried
TASK_RETRIES = 3
_DTYPE_NAMES = {"torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16"}


class EngineError(VisrouteError):
    """Work on the Ray cluster failed; the message is the first line of the worker's error."""


def import_ray():
    """``ray`` with Ray Data, or a one-line ``MissingExtraError`` naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise MissingExtraError("ray", "ray[data]", "--engine ray") from None
    return ray


def endpoints_of(spec) -> tuple[str, ...]:
    """The HTTP endpoints a pipeline spec calls (local hf: / random-tiny models call none)."""
    from visroute.models.spec import parse_model_spec

    out = []
    for s in spec.model_specs:
        p = parse_model_spec(s)
        if p.backend == "openai-compatible":
            out.append(p.location)
    return tuple(dict.fromkeys(out))


def worker_error(e: BaseException) -> EngineError:
    """One line for an error raised on a worker: the visroute error inside Ray's wrappers when there is one (Ray
    carries it as ``cause`` or only as traceback text), else the last exception line, else the first line."""
    import re

    texts, seen, c = [], set(), e
    while c is not None and id(c) not in seen:
        seen.add(id(c))
        texts.append(re.sub(r"\x1b\[[0-9;]*m", "", str(c)))
        c = getattr(c, "cause", None) or c.__cause__ or c.__context__
    lines = [line.strip() for t in texts for line in t.splitlines()]
    for pattern in (r"^visroute\.[\w.]*(?:Error|Exception): (.+)$", r"^[\w.]*(?:Error|Exception): (.+)$"):
        found = [m.group(1) for line in lines if (m := re.match(pattern, line))]
        if found:
            return EngineError(f"Ray worker failed: {found[-1]}")
    first = next((line for line in lines if line and not line.startswith(("ray::", "Traceback", "File", "^"))),
                 type(e).__name__)
    return EngineError(f"Ray worker failed: {first}")


def connect_timeout_s() -> float:
    """Seconds to wait for a Ray cluster to answer: $VISROUTE_RAY_CONNECT_TIMEOUT, else 60."""
    import os

    try:
        return max(0.1, float(os.environ.get("VISROUTE_RAY_CONNECT_TIMEOUT", "60")))
    except ValueError:
        raise EngineError("VISROUTE_RAY_CONNECT_TIMEOUT must be a number of seconds") from None


def bounded_call(fn, timeout_s: float, what: str):
    """``fn()`` in a daemon thread, waited for at most ``timeout_s``; SIGTERM while waiting ends it with one line.

    ``ray.init`` against a dead address retries for minutes in native code that signals cannot interrupt; waiting
    here instead keeps the main thread free to honour the deadline and SIGTERM (the thread dies with the process).
    """
    import signal
    import threading
    import time

    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = e

    t = threading.Thread(target=run, daemon=True, name="visroute-ray-init")
    t.start()
    stop = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *a: stop.set())
    try:
        ends = time.monotonic() + timeout_s
        while t.is_alive() and not stop.is_set() and time.monotonic() < ends:
            t.join(0.05)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if stop.is_set():
        raise EngineError(f"{what}: stopped by SIGTERM while connecting")
    if t.is_alive():
        raise EngineError(f"{what} within {timeout_s:g} s (set VISROUTE_RAY_CONNECT_TIMEOUT to wait longer)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


class RayEngine:
    name = "ray"

    def __init__(self, options: EngineOptions | None = None):
        self.options = options or EngineOptions(engine="ray")
        self.ray = import_ray()
        self._started = False

    # -- cluster ---------------------------------------------------------------------------------------
    def start(self):
        """Join ``address`` (or $RAY_ADDRESS), else start a local Ray; a Ray already started here is reused."""
        ray = self.ray
        if not ray.is_initialized():
            kw = dict(address=self.options.address, include_dashboard=False, log_to_driver=False,
                      logging_level=logging.WARNING)
            try:
                if self.options.address:  # joining: a dead address must not hold start-up forever
                    bounded_call(lambda: ray.init(**kw), connect_timeout_s(),
                                 f"Ray at {self.options.address} did not answer")
                else:
                    ray.init(**kw)
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = self.options.address or "$RAY_ADDRESS or a new local Ray"
                raise EngineError(f"cannot start or join Ray at {where}: {str(e).splitlines()[0]}") from None
            self._started = True
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled": we know
        return ray

    def shutdown(self) -> None:
        """Stop the local Ray this engine started (a joined cluster keeps running)."""
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False

    def pool_size(self, n_chunks: int) -> int:
        if self.options.actors:
            return max(1, min(self.options.actors, n_chunks))
        res = self.start().cluster_resources()
        if self.options.num_gpus > 0:
            n = int(res.get("GPU", 0) // self.options.num_gpus)
        else:
            n = int(res.get("CPU", 1) // max(self.options.num_cpus, 1e-9))
        return max(1, min(n, n_chunks))

    def default_threads(self) -> int:
        """torch threads per encoding actor: on a one-node CPU pool the driver's count, so a forward pass gives the
        local engine's bits; with GPUs or several nodes (no bit-identity to a local run to keep) ``num_cpus``."""
        import torch

        alive = [n for n in self.start().nodes() if n.get("Alive")]
        if self.options.num_gpus > 0 or len(alive) > 1:
            return max(1, int(self.options.num_cpus))
        return torch.get_num_threads()

    # -- images ----------------------------------------------------------------------------------------
    def feature_cache(self, root=None):
        """The feature cache, with missing shards encoded on the Ray actor pool."""
        from visroute.features.cache import FeatureCache

        return FeatureCache(root, engine=self)

    def map_images(self, model, source, batch_size: int = 64, decode: str = "exact",
                   num_workers: int | None = None, indices=None) -> Iterator[tuple[list[int], Any, list]]:
        """(decoded item indices, embeddings or None, skipped) per chunk of ``batch_size`` items, in input order."""
        import torch

        from visroute.data.images import FileSource, SkippedFile

        if not hasattr(source, "load"):
            source = FileSource(source)
        indices = list(range(len(source))) if indices is None else [int(i) for i in indices]
        bs = self.options.batch_size or batch_size
        chunks = [indices[j : j + bs] for j in range(0, len(indices), bs)]
        if not chunks:
            return
        for c, (index, emb, error) in self._run_chunks(model, source, decode, chunks):
            ok = [r for r, e in enumerate(error) if not e]
            skipped = [SkippedFile(source.item_id(int(index[r])), str(error[r]), int(index[r]))
                       for r, e in enumerate(error) if e]
            yield [int(index[r]) for r in ok], (torch.from_numpy(emb[ok]) if ok else None), skipped

    def _run_chunks(self, model, source, decode: str, chunks: list[list[int]]):
        """(chunk number, indices, embeddings, errors) for every chunk, in chunk order."""
        import numpy as np

        from visroute.pipeline.spec import PipelineSpec

        ray = self.start()
        spec = PipelineSpec(model=model.spec, device="auto", dtype=_DTYPE_NAMES.get(str(model.dtype), "auto"))
        kwargs = {"spec_json": spec.to_json(), "source": source, "decode": decode,
                  "dim": int(model.encode_texts(["a photo."]).shape[1]), "env": driver_env(),
                  "threads": self.options.threads or self.default_threads(),
                  "expect": {"weights": model.weights_fingerprint, "preprocess": model.preprocess_fingerprint}}
        items = [{"chunk": c, "indices": ch} for c, ch in enumerate(chunks)]
        data = ray.data.from_items(items, override_num_blocks=min(len(items), 1024))
        out = data.map_batches(EncodeWorker, batch_size=1, fn_constructor_kwargs=kwargs,
                               compute=ray.data.ActorPoolStrategy(size=self.pool_size(len(chunks))),
                               num_cpus=self.options.num_cpus, num_gpus=self.options.num_gpus or None)
        parts: dict[int, list] = {}
        seen: Counter = Counter()
        nxt = 0
        try:
            for b in out.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
                for c in np.unique(b["chunk"]):
                    m = b["chunk"] == c
                    parts.setdefault(int(c), []).append((b["index"][m], b["embedding"][m], b["error"][m]))
                    seen[int(c)] += int(m.sum())
                while nxt < len(chunks) and seen[nxt] == len(chunks[nxt]):
                    got = parts.pop(nxt)
                    idx, emb, err = (np.concatenate([g[k] for g in got]) for k in range(3))
                    pos = {i: k for k, i in enumerate(chunks[nxt])}
                    order = np.argsort([pos[int(i)] for i in idx], kind="stable")
                    yield nxt, (idx[order], emb[order], err[order])
                    nxt += 1
        except VisrouteError:
            raise
        except Exception as e:  # Ray wraps worker errors; the user gets the first line of the cause
            if isinstance(e, (KeyboardInterrupt, MemoryError)):
                raise
            raise worker_error(e) from None
        if nxt != len(chunks):
            raise EngineError(f"Ray returned {nxt} of {len(chunks)} chunks; re-run to resume from the written shards")

    # -- calls -----------------------------------------------------------------------------------------
    def map_calls(self, fn: Callable[[Any, int], Any], items: Iterable[Any],
                  endpoints: Callable[[Any], tuple[str, ...]] = lambda item: ()) -> "RayCalls":
        """``fn(item, concurrency)`` as Ray tasks under the per-endpoint limit; submitted at once, results
        as they finish (``finished()`` without waiting, iteration waiting)."""
        return RayCalls(self, fn, list(items), endpoints)

    def run_cells(self, jobs, run_contrastive, run_task, runtime):
        """Grid cells: VLM/LLM cells go out as Ray tasks first (``run_task``, a module-level function, is shipped by
        reference and called with the worker's own runtime, not ``runtime``); contrastive cells then run here, their
        features encoded on the actor pool; every finished cell is handed back at once, so its records get written."""
        from functools import partial

        jobs = list(jobs)
        calls = self.map_calls(partial(with_own_runtime, run_task), [j for j in jobs if not j.contrastive],
                               lambda j: endpoints_of(j.spec))
        for job in jobs:
            if job.contrastive:
                yield job, run_contrastive(job)
                yield from calls.finished()
        yield from calls

    def generator(self, llm: str, spec, runtime):
        """A generator whose ``generate`` spreads requests over Ray tasks (``visroute describe``)."""
        return RayGenerator(self, llm, spec, runtime)


class RayCalls:
    def __init__(self, engine: RayEngine, fn, items: list, endpoints):
        ray = engine.start()
        opts = engine.options
        self.ray, self.fn, self.endpoints = ray, fn, endpoints
        self.per_call = min(opts.concurrency, opts.endpoint_concurrency)
        self.slots = max(1, opts.endpoint_concurrency // self.per_call)
        self.remote = ray.remote(call).options(num_cpus=opts.cell_num_cpus, num_gpus=opts.cell_num_gpus or None,
                                               max_retries=TASK_RETRIES, retry_exceptions=False)
        self.env = driver_env()
        self.queue = [(item, tuple(endpoints(item))) for item in items]
        self.running: dict[Any, tuple[Any, tuple]] = {}
        self.in_flight: Counter = Counter()
        self.peak: Counter = Counter()
        self._submit()

    def _submit(self) -> None:
        waiting = []
        for item, eps in self.queue:
            if all(self.in_flight[e] < self.slots for e in eps):
                ref = self.remote.remote(self.fn, item, self.per_call, self.env)
                self.running[ref] = (item, eps)
                for e in eps:
                    self.in_flight[e] += 1
                    self.peak[e] = max(self.peak[e], self.in_flight[e])
            else:
                waiting.append((item, eps))
        self.queue = waiting

    def _collect(self, ref) -> tuple[Any, Any]:
        item, eps = self.running.pop(ref)
        for e in eps:
            self.in_flight[e] -= 1
        try:
            result = self.ray.get(ref)
        except VisrouteError:
            raise
        except Exception as e:
            if isinstance(e, (KeyboardInterrupt, MemoryError)):
                raise
            raise worker_error(e) from None
        self._submit()
        return item, result

    def finished(self) -> Iterator[tuple[Any, Any]]:
        """Calls already done, without waiting."""
        if not self.running:
            return
        ready, _ = self.ray.wait(list(self.running), num_returns=len(self.running), timeout=0)
        for ref in ready:
            yield self._collect(ref)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        while self.running or self.queue:
            if not self.running:  # cannot happen while the limit admits one call per endpoint
                raise EngineError("no call can be started under the endpoint limit")
            ready, _ = self.ray.wait(list(self.running), num_returns=1)
            yield self._collect(ready[0])


class RayGenerator:
    """``generate(requests)`` for ``generate_descriptions``: requests split into one chunk per free slot of the
    endpoint, generated by workers, returned in request order."""

    def __init__(self, engine: RayEngine, llm: str, spec, runtime):
        from visroute.models.spec import parse_model_spec

        self.engine, self.llm, self.spec_json = engine, llm, spec.to_json()
        self.spec = parse_model_spec(llm).text
        self.runtime = (tuple(runtime.trusted_endpoints), runtime.timeout, runtime.retries)
        self.endpoints = endpoints_of(spec)

    def generate(self, requests) -> list:
        requests = list(requests)
        opts = self.engine.options
        slots = max(1, opts.endpoint_concurrency // min(opts.concurrency, opts.endpoint_concurrency))
        size = max(1, -(-len(requests) // slots))
        items = [(start, (self.llm, self.spec_json, *self.runtime, requests[start : start + size]))
                 for start in range(0, len(requests), size)]
        out: list = [None] * len(requests)
        calls = self.engine.map_calls(_indexed_generate, items, lambda it: self.endpoints)
        for (start, _), results in calls:
            out[start : start + len(results)] = results
        return out


def _indexed_generate(item: tuple, concurrency: int) -> list:
    return generate_chunk(item[1], concurrency)
