"""``POST /v1/chat/completions``: an OpenAI-compatible proxy that routes requests carrying images.

``model`` names a router (``router-<name>`` or ``router-<name>-<lambda>``) or a configured endpoint. For a router,
the task text (the last user message, formatted as the router's training records were) and, for image-aware
routers, the first image pick the model; the request then goes unchanged (but for ``model``) to that model's
OpenAI-compatible endpoint, and the answer comes back in OpenAI's schema with ``model`` set to the model that
answered. ``stream: true`` is passed through as server-sent events. Images arrive as data URLs; a remote
``image_url`` is fetched only when it starts with a prefix in ``allow_image_urls``, and is inlined as a data URL.
"""

from __future__ import annotations

import asyncio
import json
import math
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from visroute.errors import ModelLoadError
from visroute.llm.cancel import current as current_cancel
from visroute.serve.cancel import until_answered
from visroute.serve.decode import BadImageInput, decode_image
from visroute.serve.proxy_cascade import (
    calls_header,
    cascade_stages,
    completion_events,
    run_cascade,
)
from visroute.serve.proxy_images import inline_images
from visroute.serve.schemas import ERRORS, ChatCompletionRequest, ChatCompletionResponse

api = APIRouter()
#: Largest upstream chat answer the proxy holds (bytes): a chat answer is kilobytes; more is refused with a 502.
UPSTREAM_MAX_BYTES = 8 * 1024 * 1024


def _log_detail(status: int, public: str, detail: str) -> None:
    """The details of an upstream failure go to the server log (with the request id the access log carries), never
    to the client, who gets ``public``."""
    import logging

    from visroute.serve.middleware import current_request_id

    logging.getLogger("visroute.serve").warning(json.dumps({"event": "upstream_error", "status": status,
                                                            "request_id": current_request_id(), "error": public,
                                                            "detail": detail}))


def public_failure(status: int, public: str, detail: str) -> HTTPException:
    """An HTTP error whose text is generic for the client; the detail goes to the server log with the request id."""
    _log_detail(status, public, detail)
    return HTTPException(status, public)


def require_json(request: Request) -> None:
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise HTTPException(415, f"unsupported content type '{ctype or 'none'}': send application/json")


def parse_router_model(name: str, routers: dict) -> tuple[str, float | None] | None:
    """'router-demo' -> ('demo', None); 'router-demo-0.5' -> ('demo', 0.5); None when no router matches."""
    if not name.startswith("router-"):
        return None
    rest = name[len("router-"):]
    if rest in routers:
        return rest, None
    head, sep, tail = rest.rpartition("-")
    if sep and head in routers:
        try:
            lam = float(tail)
        except ValueError:
            return None
        if math.isfinite(lam) and lam >= 0:
            return head, lam
    return None


def task_text_of(messages: list[dict]) -> str:
    """What the router reads: the last user message's text (as ``task_text`` formats a question without options)."""
    from visroute.tasks.model import task_text

    for m in reversed(messages):
        if m.get("role") == "user":
            c = m.get("content")
            text = c if isinstance(c, str) else " ".join(p.get("text", "") for p in (c or [])
                                                         if isinstance(p, dict) and p.get("type") == "text")
            if text.strip():
                return task_text(text)
    raise HTTPException(400, "the messages hold no user text to route on")


def decide(state, router, text: str, image: bytes | None, lam: float | None):
    """The bundle's one routing decision for a chat request, on the service's runtime (blocking), and the model
    whose answer it keeps when no call reports its own confidence: (that model, the decision). A cascade whose
    cheaper models do report it is then run stage by stage instead (``visroute.serve.proxy_cascade``)."""
    from visroute.router.decide.plan import answer_without_signal

    pil = decode_image(image, state.config.limits.max_pixels) if image is not None else None
    d = router.bundle.choose(text, pil, lam, state.runtime)
    return answer_without_signal(d), d


def _cost(state, router, chosen: str, target, usage: dict | None, n_images: int, seconds: float) -> float | None:
    """The call's cost under the routed pipeline's price table (None when the price or usage is unknown)."""
    if not usage or router is None or not router.bundle.pipelines.get(chosen):
        return None
    from visroute.pipeline import price_table

    spec = router.bundle.pipeline_spec(chosen)
    c = price_table(spec).price(f"openai-compatible:{target.base_url}#{target.model}").cost(
        usage.get("prompt_tokens"), usage.get("completion_tokens"), n_images, seconds)
    return c if math.isfinite(c) else None


_STREAM_DOC = {"content": {"text/event-stream": {"schema": {"type": "string"}}},
               "description": "The completion (JSON), or server-sent events when stream is true"}


@api.post("/v1/chat/completions", response_model=ChatCompletionResponse, tags=["chat"],
          dependencies=[Depends(require_json)], responses={**ERRORS, 200: _STREAM_DOC})
async def chat_completions(request: Request, body: ChatCompletionRequest):
    """OpenAI-compatible chat completions, routed by image and text; the official `openai` client works unchanged."""
    state = request.app.state.serve
    if not state.ready:
        raise HTTPException(503, "models are still loading", headers={"Retry-After": "2"})
    payload = body.model_dump(mode="json", exclude_unset=True)
    with state.admission.admit():  # the client leaving cancels the call (and frees the slot) at once
        return await until_answered(request, _chat(state, payload, body.stream), None)


async def _chat(state, payload: dict, stream: bool):
    try:
        images = await inline_images(state, payload["messages"])
    except BadImageInput as e:
        raise HTTPException(400, str(e)) from None
    name, routed, router, headers = payload["model"], parse_router_model(payload["model"], state.routers), None, {}
    if routed is not None:
        router = state.routers[routed[0]]
        text = task_text_of(payload["messages"])
        limit = state.config.limits.request_timeout_s
        try:
            chosen, d = await asyncio.wait_for(asyncio.to_thread(
                decide, state, router, text, images[0] if images else None, routed[1]), timeout=limit)
        except BadImageInput as e:
            raise HTTPException(400, str(e)) from None
        except asyncio.TimeoutError:
            if (tok := current_cancel()) is not None:  # the decision's thread stops at its next check
                tok.cancel("deadline")
            raise HTTPException(504, f"routing took longer than its deadline of {limit:g} s") from None
        headers = {"x-visroute-router": routed[0], "x-visroute-model": chosen,
                   "x-visroute-predicted-accuracy": json.dumps(d.predicted_accuracy, separators=(",", ":"))}
        if (stages := cascade_stages(router, d)) is not None:  # cheaper answers that say how sure they are
            chosen, kept, calls = await run_cascade(d, stages, payload, lambda m, body: _stage(
                state, router, m, body, len(images)))
            headers.update({"x-visroute-model": chosen, "x-visroute-calls": calls_header(calls)})
            if kept is not None:
                state.metrics.routed.labels(router=routed[0], model=chosen, endpoint="chat").inc()
                return _answer(kept, payload, stream, headers)
    elif name.startswith("router-") or name not in state.targets:
        raise HTTPException(404, f"unknown model '{name}' (see GET /v1/models)")
    else:
        chosen, headers = name, {"x-visroute-model": name}
    target = _target(state, chosen)
    state.metrics.routed.labels(router=routed[0] if routed else "", model=chosen, endpoint="chat").inc()
    if stream:
        t1 = time.perf_counter()
        account = (lambda usage: _account(state, router, chosen, target, usage, len(images), time.perf_counter() - t1))
        return await _stream(state, f"{target.base_url}/chat/completions", {**payload, "model": target.model},
                             _auth_headers(target), chosen, headers, account)
    return _answer(await _complete(state, router, chosen, payload, len(images)), payload, False, headers)


def _target(state, chosen: str):
    try:
        return state.target(chosen)
    except ModelLoadError as e:  # the routed model's endpoint is not one the user's configuration allows
        raise public_failure(502, f"{chosen}: the model's endpoint is not available", str(e)) from None


def _auth_headers(target) -> dict:
    return {"content-type": "application/json", **({"authorization": f"Bearer {target.key}"} if target.key else {})}


async def _complete(state, router, chosen: str, payload: dict, n_images: int) -> dict:
    """One non-streaming call to ``chosen``'s endpoint: its completion (``model`` set to ``chosen``), paid for."""
    target = _target(state, chosen)
    tu = time.perf_counter()
    try:
        status, body = await upstream_post(state, f"{target.base_url}/chat/completions",
                                           {**payload, "model": target.model}, _auth_headers(target))
        state.metrics.upstream_seconds.labels(model=chosen).observe(time.perf_counter() - tu)
    except HTTPException:
        state.metrics.upstream_errors.labels(model=chosen).inc()
        raise
    except Exception as e:
        state.metrics.upstream_errors.labels(model=chosen).inc()
        raise public_failure(502, f"{chosen}: could not reach the model's endpoint", f"{target.base_url}: {e!r}") from None
    doc = _upstream_json(state, status, body, chosen)
    doc["model"] = chosen
    _account(state, router, chosen, target, doc.get("usage"), n_images, time.perf_counter() - tu)
    return doc


async def _stage(state, router, chosen: str, payload: dict, n_images: int) -> dict | None:
    """An earlier stage of a cascade: its completion, or None when the call failed (logged and counted by
    ``_complete``; the next model answers instead)."""
    try:
        return await _complete(state, router, chosen, payload, n_images)
    except HTTPException:
        return None


def _answer(doc: dict, payload: dict, stream: bool, headers: dict):
    if not stream:
        return JSONResponse(doc, headers=headers)
    usage = bool((payload.get("stream_options") or {}).get("include_usage"))
    return StreamingResponse(completion_events(doc, usage), media_type="text/event-stream",
                             headers={**headers, "cache-control": "no-cache"})


def _account(state, router, chosen, target, usage, n_images, seconds) -> None:
    c = _cost(state, router, chosen, target, usage, n_images, seconds)
    if c is not None:
        state.metrics.cost.labels(model=chosen).inc(c)


async def upstream_post(state, url: str, payload: dict, headers: dict) -> tuple[int, bytes]:
    """POST with one total deadline (``upstream_timeout_s`` covers connect, headers and body, however slowly the
    upstream trickles) and a size cap on the answer; cancelling the caller cancels the call."""
    limit = state.config.limits.upstream_timeout_s

    async def go() -> tuple[int, bytes]:
        async with state.http.stream("POST", url, json=payload, headers=headers, timeout=limit) as r:
            declared = r.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > UPSTREAM_MAX_BYTES:
                raise public_failure(502, "the model's answer is too large", f"{url}: Content-Length {declared}")
            chunks, n = [], 0
            async for chunk in r.aiter_bytes():
                n += len(chunk)
                if n > UPSTREAM_MAX_BYTES:
                    raise public_failure(502, "the model's answer is too large", f"{url}: over {UPSTREAM_MAX_BYTES} bytes")
                chunks.append(chunk)
            return r.status_code, b"".join(chunks)

    try:
        return await asyncio.wait_for(go(), timeout=limit)
    except asyncio.TimeoutError:
        raise public_failure(504, f"the model did not answer within {limit:g} s", url) from None


def _stream_abandoned(state) -> None:
    from visroute.serve.middleware import access_logger, current_request_id

    state.metrics.cancelled.labels(path="/v1/chat/completions", reason="client_gone").inc()
    access_logger().info(json.dumps({"event": "client_gone", "reason": "client_gone", "stream": True,
                                     "request_id": current_request_id(), "path": "/v1/chat/completions"}))


def _upstream_json(state, status: int, body: bytes, chosen: str) -> dict:
    from visroute.safe_load import SafeLoadError, parse_json

    try:
        doc = parse_json(body, "upstream answer")
    except SafeLoadError:
        doc = None
    if status >= 400 or not isinstance(doc, dict):
        state.metrics.upstream_errors.labels(model=chosen).inc()
        msg = doc.get("error", {}).get("message") if isinstance(doc, dict) and isinstance(doc.get("error"), dict) \
            else body[:300].decode("utf-8", "replace")
        code = status if 400 <= status < 500 and status not in (401, 403) else 502
        raise public_failure(code, f"{chosen} answered HTTP {status}" if status >= 400 else f"{chosen} gave no valid answer",
                    str(msg))
    return doc


async def _stream(state, url, payload, req_headers, chosen, headers, account):
    """The upstream's events, passed through. Until its headers arrive the call has one total deadline
    (``upstream_timeout_s``, a 504); after that, each read has it. A client that leaves, or a 504, closes the upstream
    connection at once."""
    limit = state.config.limits.upstream_timeout_s
    try:
        req = state.http.build_request("POST", url, json=payload, headers=req_headers, timeout=limit)
        tu = time.perf_counter()
        resp = await asyncio.wait_for(state.http.send(req, stream=True), timeout=limit)  # cancelled: closed
        state.metrics.upstream_seconds.labels(model=chosen).observe(time.perf_counter() - tu)
    except asyncio.TimeoutError:
        state.metrics.upstream_errors.labels(model=chosen).inc()
        raise public_failure(504, f"the model did not answer within {limit:g} s", url) from None
    except Exception as e:
        state.metrics.upstream_errors.labels(model=chosen).inc()
        raise public_failure(502, f"{chosen}: could not reach the model's endpoint", f"{url}: {e!r}") from None
    if resp.status_code >= 400:
        try:
            body = await resp.aread() if int(resp.headers.get("content-length") or 0) <= UPSTREAM_MAX_BYTES else b""
        finally:
            await resp.aclose()
        _upstream_json(state, resp.status_code, body, chosen)

    async def events():
        usage, gone = None, False
        try:
            async for line in resp.aiter_lines():
                if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
                    try:
                        chunk = json.loads(line[5:])
                    except ValueError:
                        chunk = None
                    if isinstance(chunk, dict):
                        chunk["model"] = chosen
                        usage = chunk.get("usage") or usage
                        line = "data: " + json.dumps(chunk, separators=(",", ":"))
                yield line + "\n"
        except (asyncio.CancelledError, GeneratorExit):  # the client left mid-stream
            gone = True
            raise
        finally:
            account(usage)
            if gone:
                _stream_abandoned(state)
            await asyncio.shield(resp.aclose())  # the upstream connection closes even while this is being cancelled

    return StreamingResponse(events(), media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"})
