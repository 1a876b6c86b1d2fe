"""The work behind ``/v1/classify``: checks a request against the limits, decodes, batches, applies the head and
shapes the answer. Route handlers parse and answer (transport); this object does the work, so the same logic
serves ``visroute serve``, its ``--workers`` processes and a Ray Serve replica."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from visroute.errors import VisrouteError


class ServiceError(VisrouteError):
    """A request the service refuses or cannot serve now: an HTTP ``status`` and optional headers."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers


def ensure_ready(state) -> None:
    if not state.ready:
        raise ServiceError(503, state.load_error or "models are still loading", {"Retry-After": "2"})


class ClassifyService:
    """Zero-shot classification of one image through the served model's micro-batcher (``state``: ServeState)."""

    def __init__(self, state):
        self.state = state

    def _head(self, req) -> tuple[Any, Any]:
        """(label set or None, served model) for the request, after every limit check."""
        state, lim = self.state, self.state.config.limits
        if req.labels is not None and req.label_set is not None:
            raise ServiceError(400, "give either 'labels' or 'label_set', not both")
        if req.top_k > lim.max_top_k:
            raise ServiceError(400, f"top_k is over the limit of {lim.max_top_k}")
        lset = None
        if req.labels is None:
            if req.label_set is None and not state.label_sets:
                raise ServiceError(400, "give 'labels' (no label set is configured)")
            lset = state.label_set(req.label_set or next(iter(state.label_sets)))
            if req.model and req.model != lset.model:
                raise ServiceError(400, f"label set '{lset.name}' belongs to model '{lset.model}', not "
                                        f"'{req.model}'")
            if req.templates:
                raise ServiceError(400, "templates apply to 'labels'; a label set has its own")
        elif len(req.labels) > lim.max_labels or len(req.templates or []) > lim.max_templates:
            raise ServiceError(400, f"at most {lim.max_labels} labels and {lim.max_templates} templates per request")
        served = state.served(lset.model if lset else req.model)
        if req.explain and not (lset and lset.explainable):
            raise ServiceError(400, "explanations need a label set with a description head (see /v1/models)")
        return lset, served

    async def classify(self, req, data: bytes | None, t0: float) -> dict:
        """The answer for one ClassifyRequest (``data``: an uploaded file's bytes, else ``req.image``)."""
        from visroute.serve.decode import prepare

        state = self.state
        ensure_ready(state)
        parse_ms = (time.perf_counter() - t0) * 1000
        lset, served = self._head(req)
        loop = asyncio.get_running_loop()
        with served.batcher.admit() as ticket:
            jobs = [loop.run_in_executor(state.decode_pool, prepare, served.name, data, req.image,
                                         state.config.limits.max_pixels)]
            if lset is None:  # request-given labels: the text head is built (or found cached) while the image decodes
                jobs.append(asyncio.to_thread(state.ad_hoc_head, served.name, req.labels, req.templates))
            done = await asyncio.gather(*jobs, return_exceptions=True)
            failed = next((r for r in done if isinstance(r, BaseException)), None)
            if failed is not None:
                raise failed
            (x, decode_ms), head = done[0], (lset.head if lset else done[1])
            emb, info = await served.batcher.submit(x, ticket)
        t = time.perf_counter()
        idx, scores = head.predict_topk(emb, req.top_k)
        labels = [str(head.classes_[j]) for j in idx[0]]
        explanation = _explain(head, emb, req.top_k) if req.explain else None
        m = state.metrics
        m.images.labels(model=served.name).inc()
        m.decode_seconds.labels(model=served.name).observe(decode_ms / 1000)
        m.queue_seconds.labels(model=served.name).observe(info.queue_ms / 1000)
        now = time.perf_counter()
        model = served.pipeline.model
        return {"model": served.name, "model_spec": model.spec, "decode": served.spec.decode,
                "random_weights": model.is_random,
                "label_set": lset.name if lset else None, "labels": labels, "scores": [float(s) for s in scores[0]],
                "batch_size": info.batch_size, "explanation": explanation,
                "timings": {"parse_ms": parse_ms, "decode_ms": decode_ms, "queue_ms": info.queue_ms,
                            "forward_ms": info.forward_ms, "head_ms": (now - t) * 1000,
                            "total_ms": (now - t0) * 1000}}


def _explain(head, emb, k: int) -> list[dict]:
    return [{"label": c["class"], "probability": c["probability"], "score": c["score"],
             "descriptions": c["descriptions"][:8]} for c in head.explain(emb[0], k=min(k, 10))]
