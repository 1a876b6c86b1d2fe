"""``/v1/classify``, ``/v1/route``, ``/v1/models`` and the probes. Blocking work (decoding, text encoding,
routing) runs off the event loop; classification forward passes go through the model's micro-batcher."""

from __future__ import annotations

import asyncio
import math
import os
import tempfile
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from visroute.errors import VisrouteError
from visroute.llm.cancel import check as check_cancelled
from visroute.serve.cancel import blocking_work, until_answered
from visroute.serve.decode import BadImageInput, b64_bytes, decode_image
from visroute.serve.middleware import validation_message
from visroute.serve.service import ensure_ready
from visroute.serve.schemas import (ERRORS, ClassifyRequest, ClassifyResponse, Health, ModelCard, ModelList,
                                    RouteRequest, RouteResponse)

api = APIRouter()


def _body_doc(model: type[BaseModel], file_field: str, required: list[str]) -> dict:
    """The request body in the schema: JSON (``model``) or a multipart form with the image as a file."""
    js = model.model_json_schema()
    props = {k: ({"type": "string"} if k in ("labels", "options", "templates") else v)
             for k, v in js["properties"].items() if k != "image"}
    props[file_field] = {"type": "string", "format": "binary"}
    form = {"type": "object", "properties": props, "required": required}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": js},
                                                          "multipart/form-data": {"schema": form}}}}


async def read_body(request: Request, model: type[BaseModel], list_fields: tuple[str, ...]) -> Any:
    """A JSON or multipart request as ``model``; the uploaded file's bytes go in ``image`` (as base64-free bytes)."""
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    upload = None
    if ctype == "application/json":
        from visroute.safe_load import SafeLoadError, parse_json

        try:
            raw = parse_json(await request.body(), "the body")
        except SafeLoadError:  # invalid, too deep (a nesting bomb), not UTF-8: one generic line
            raise HTTPException(400, "the body is not valid JSON (or is nested too deeply)") from None
        if not isinstance(raw, dict):
            raise HTTPException(400, "the body must be a JSON object")
    elif ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=2000)
        except Exception as e:  # malformed multipart (starlette raises several types)
            raise HTTPException(400, f"malformed multipart body ({e})") from None
        raw = {}
        for k in set(form.keys()):
            values = form.getlist(k)
            if isinstance(values[0], UploadFile):
                upload = values[0]
                continue
            if k in list_fields:
                raw[k] = [x.strip() for x in values[0].split(",") if x.strip()] if len(values) == 1 else list(values)
            else:
                raw[k] = values[0]
        if upload is not None:
            raw["image"] = "-"  # placeholder so the model validates; the bytes are returned separately
    else:
        raise HTTPException(415, f"unsupported content type '{ctype or 'none'}': send application/json or "
                                 "multipart/form-data")
    try:
        parsed = model.model_validate(raw)
    except ValidationError as e:
        raise HTTPException(422, validation_message(e.errors())) from None
    data = await upload.read() if upload is not None else None
    return parsed, data


def _deadline(request: Request) -> float:
    return request.app.state.serve.config.limits.request_timeout_s


@api.post("/v1/classify", response_model=ClassifyResponse, responses=ERRORS, tags=["classify"],
          openapi_extra=_body_doc(ClassifyRequest, "image", ["image"]))
async def classify(request: Request):
    """Zero-shot classification of one image: top-k labels and probabilities, equal to `visroute classify`."""
    t0 = time.perf_counter()
    req, data = await read_body(request, ClassifyRequest, ("labels", "templates"))
    return await until_answered(request, request.app.state.classify.classify(req, data, t0), _deadline(request))


@api.post("/v1/route", response_model=RouteResponse, responses=ERRORS, tags=["route"],
          openapi_extra=_body_doc(RouteRequest, "image", ["task", "options"]))
async def route(request: Request):
    """Pick a model for a task (image + question + options) with a trained router, and (``run``) answer with it."""
    req, data = await read_body(request, RouteRequest, ("options",))
    state = request.app.state.serve
    with state.admission.admit():
        return await until_answered(request, _route(state, req, data), _deadline(request))


def _finite(x) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


async def _route(state, req: RouteRequest, data: bytes | None) -> dict:
    ensure_ready(state)
    t0 = time.perf_counter()
    router = state.router(req.router)
    name = req.router or next(iter(state.routers))
    raw = data if data is not None else (b64_bytes(req.image) if req.image else None)
    try:  # the thread inherits the request's cancel token (serve.cancel): a 504 or a client leaving stops it
        out = await asyncio.to_thread(_route_job, state, router, req, raw)
    except BadImageInput:
        raise
    except VisrouteError as e:  # the details go to the log with the request id; the client gets a generic line
        from visroute.serve.proxy import public_failure

        if "failed to answer" in str(e):
            raise public_failure(502, "the routed model failed to answer", str(e)) from None
        raise public_failure(400, "the request could not be routed (check task, options, lambda and image)", str(e)) from None
    state.metrics.routed.labels(router=name, model=out["chosen"], endpoint="route").inc()
    for c in out.get("calls") or []:  # a cascade or ensemble pays each model it called
        if _finite(c.get("cost")) is not None:
            state.metrics.cost.labels(model=c["model"]).inc(c["cost"])
    keep = ("chosen", "predicted_accuracy", "task_text", "answer", "raw_answer", "parse_rule", "latency_s", "pipeline",
            "strategy")
    doc = {k: out.get(k) for k in keep}
    if out.get("calls"):
        doc["calls"] = [{"model": c["model"], "cost": _finite(c.get("cost")), "confidence": _finite(c.get("confidence"))}
                        for c in out["calls"]]
    doc.update(router=name, expected_cost={m: _finite(c) for m, c in out["expected_cost"].items()},
               cost=_finite(out.get("cost")), total_ms=(time.perf_counter() - t0) * 1000)
    doc["lambda"] = out["lambda"]
    return doc


def _route_job(state, router, req: RouteRequest, raw: bytes | None) -> dict:
    """The blocking part of /v1/route, in one worker thread: decode check, temp file, route. Once the request's
    token is set, the next stage raises ``Cancelled`` (inside routing too: each model call, each HTTP attempt, whose
    socket is shut down at once); the file lives exactly as long as the stage that reads it."""
    path = None
    with blocking_work(state, "/v1/route"):
        if raw is not None:
            decode_image(raw, state.config.limits.max_pixels)  # refuse bad images with a 400
            check_cancelled()
            fd, path = tempfile.mkstemp(prefix="visroute-route-", suffix=".img")
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
        try:
            check_cancelled()
            return router.route(path, req.task, list(req.options), req.run, req.lam)
        finally:
            if path:
                os.unlink(path)


@api.get("/v1/models", response_model=ModelList, responses=ERRORS, tags=["models"])
async def models(request: Request):
    """Served contrastive models (with their label sets), routers (as `router-<name>`) and endpoints."""
    state = request.app.state.serve
    cards = [ModelCard(id=m.name, kind="contrastive", spec=m.spec.model, decode=m.spec.decode,
                       label_sets=[s.name for s in state.label_sets.values() if s.model == m.name],
                       explainable_label_sets=[s.name for s in state.label_sets.values()
                                               if s.model == m.name and s.explainable])
             for m in state.models.values()]
    cards += [ModelCard(id=f"router-{n}", kind="router", routes_to=list(r.bundle.models))
              for n, r in state.routers.items()]
    cards += [ModelCard(id=t.name, kind="endpoint", spec=t.model) for t in state.targets.values()]
    return ModelList(data=cards)


@api.get("/healthz", response_model=Health, tags=["probes"])
async def healthz():
    """Liveness: the process answers."""
    return Health(status="ok")


@api.get("/readyz", response_model=Health, responses={503: {"model": Health}}, tags=["probes"])
async def readyz(request: Request):
    """Readiness: every configured model, label set and router is loaded."""
    state = request.app.state.serve
    if state.ready:
        return Health(status="ready")
    status, detail = ("failed", state.load_error) if state.load_error else ("loading", None)
    return JSONResponse(Health(status=status, detail=detail).model_dump(), 503)


@api.get("/metrics", tags=["probes"], response_class=Response,
         responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, 401: ERRORS[401]})
async def metrics(request: Request):
    """Prometheus metrics."""
    from prometheus_client import CONTENT_TYPE_LATEST

    state = request.app.state.serve
    for name, m in state.models.items():
        state.metrics.queue_depth.labels(model=name).set(m.batcher.pending)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
