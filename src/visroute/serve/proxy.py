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
import base64
import json
import math
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from visroute.errors import ModelLoadError
from visroute.serve.decode import BadImageInput, data_url_bytes, decode_image
from visroute.serve.schemas import ERRORS, ChatCompletionRequest, ChatCompletionResponse

api = APIRouter()
REMOTE_IMAGE_MAX_BYTES = 20 * 1024 * 1024


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


def _parts(messages: list[dict]) -> list[dict]:
    return [p for m in messages if isinstance(m.get("content"), list) for p in m["content"] if isinstance(p, dict)]


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


async def inline_images(state, messages: list[dict]) -> list[bytes]:
    """Every image part as bytes (remote URLs fetched only when allow-listed, then inlined as data URLs)."""
    out = []
    for part in _parts(messages):
        if part.get("type") != "image_url":
            continue
        ref = part.get("image_url")
        url = ref.get("url") if isinstance(ref, dict) else ref
        if not isinstance(url, str) or not url:
            raise HTTPException(400, "an image_url part needs a url")
        if url[:5].lower() == "data:":
            out.append(data_url_bytes(url))
            continue
        if not allowed_url(url, state.config.allow_image_urls):
            raise HTTPException(400, "remote image URLs are refused unless the config's allow_image_urls permits "
                                     "them; send the image as a data: URL")
        data = await _fetch(state, url)
        part["image_url"] = {**(ref if isinstance(ref, dict) else {}), "url": "data:image/*;base64," +
                             base64.b64encode(data).decode()}
        out.append(data)
    return out


def allowed_url(url: str, prefixes) -> bool:
    """Only a plain http(s) URL under an allowed prefix: no user part, no '..' or encoded dots in the path."""
    from urllib.parse import urlsplit

    p = urlsplit(url)
    if p.scheme not in ("http", "https") or "@" in p.netloc or "%2e" in p.path.lower() or \
            ".." in p.path.split("/"):
        return False
    return any(url.startswith(prefix) for prefix in prefixes)


async def _fetch(state, url: str) -> bytes:
    try:
        async with state.http.stream("GET", url, timeout=state.config.limits.upstream_timeout_s,
                                     follow_redirects=False) as r:
            if r.status_code != 200:
                raise HTTPException(400, f"fetching the image at {url} gave HTTP {r.status_code}")
            chunks, n = [], 0
            async for chunk in r.aiter_bytes():
                n += len(chunk)
                if n > REMOTE_IMAGE_MAX_BYTES:
                    raise HTTPException(413, f"the image at {url} is over {REMOTE_IMAGE_MAX_BYTES:,} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except HTTPException:
        raise
    except Exception as e:  # connection errors of any kind: the client gave a URL we could not read
        raise HTTPException(400, f"could not fetch the image at {url} ({type(e).__name__})") from None


def decide(state, router, text: str, image: bytes | None, lam: float | None) -> tuple[str, dict]:
    """The routed model for one chat request: the bundle's one decision, on the service's runtime (blocking).
    A chat answer carries no confidence of its own, so for a cascade or ensemble the model whose answer would be
    kept is known before any call, and only that one is called."""
    pil = decode_image(image, state.config.limits.max_pixels) if image is not None else None
    from visroute.router.decide.plan import answer_without_signal

    d = router.bundle.choose(text, pil, lam, state.runtime)
    return answer_without_signal(d), d.predicted_accuracy


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
    with state.admission.admit():
        return await _chat(state, payload, body.stream)


async def _chat(state, payload: dict, stream: bool):
    t0 = time.perf_counter()
    try:
        images = await inline_images(state, payload["messages"])
    except BadImageInput as e:
        raise HTTPException(400, str(e)) from None
    name, routed, router, headers = payload["model"], parse_router_model(payload["model"], state.routers), None, {}
    if routed is not None:
        router = state.routers[routed[0]]
        text = task_text_of(payload["messages"])
        try:
            chosen, proba = await asyncio.wait_for(asyncio.to_thread(
                decide, state, router, text, images[0] if images else None, routed[1]),
                timeout=state.config.limits.request_timeout_s)
        except BadImageInput as e:
            raise HTTPException(400, str(e)) from None
        headers = {"x-visroute-router": routed[0], "x-visroute-model": chosen,
                   "x-visroute-predicted-accuracy": json.dumps(proba, separators=(",", ":"))}
    elif name.startswith("router-") or name not in state.targets:
        raise HTTPException(404, f"unknown model '{name}' (see GET /v1/models)")
    else:
        chosen, headers = name, {"x-visroute-model": name}
    try:
        target = state.target(chosen)
    except ModelLoadError as e:  # the routed model's endpoint is not one the user's configuration allows
        raise HTTPException(502, f"{chosen}: {e}") from None
    state.metrics.routed.labels(router=routed[0] if routed else "", model=chosen, endpoint="chat").inc()
    payload["model"] = target.model
    req_headers = {"content-type": "application/json"}
    if target.key:
        req_headers["authorization"] = f"Bearer {target.key}"
    url = f"{target.base_url}/chat/completions"
    account = (lambda usage: _account(state, router, chosen, target, usage, len(images), time.perf_counter() - t0))
    if stream:
        return await _stream(state, url, payload, req_headers, chosen, headers, account)
    try:
        tu = time.perf_counter()
        r = await state.http.post(url, json=payload, headers=req_headers,
                                  timeout=state.config.limits.upstream_timeout_s)
        state.metrics.upstream_seconds.labels(model=chosen).observe(time.perf_counter() - tu)
    except Exception as e:
        state.metrics.upstream_errors.labels(model=chosen).inc()
        raise HTTPException(502, f"{chosen}: could not reach {target.base_url} ({type(e).__name__})") from None
    doc = _upstream_json(state, r, chosen)
    doc["model"] = chosen
    account(doc.get("usage"))
    return JSONResponse(doc, headers=headers)


def _account(state, router, chosen, target, usage, n_images, seconds) -> None:
    c = _cost(state, router, chosen, target, usage, n_images, seconds)
    if c is not None:
        state.metrics.cost.labels(model=chosen).inc(c)


def _upstream_json(state, r, chosen: str) -> dict:
    try:
        doc = r.json()
    except ValueError:
        doc = None
    if r.status_code >= 400 or not isinstance(doc, dict):
        state.metrics.upstream_errors.labels(model=chosen).inc()
        msg = doc.get("error", {}).get("message") if isinstance(doc, dict) and isinstance(doc.get("error"), dict) \
            else r.text[:300]
        status = r.status_code if 400 <= r.status_code < 500 and r.status_code not in (401, 403) else 502
        raise HTTPException(status, f"{chosen} answered HTTP {r.status_code}: {msg}")
    return doc


async def _stream(state, url, payload, req_headers, chosen, headers, account):
    try:
        req = state.http.build_request("POST", url, json=payload, headers=req_headers,
                                       timeout=state.config.limits.upstream_timeout_s)
        tu = time.perf_counter()
        resp = await state.http.send(req, stream=True)
        state.metrics.upstream_seconds.labels(model=chosen).observe(time.perf_counter() - tu)
    except Exception as e:
        state.metrics.upstream_errors.labels(model=chosen).inc()
        raise HTTPException(502, f"{chosen}: could not reach the endpoint ({type(e).__name__})") from None
    if resp.status_code >= 400:
        await resp.aread()
        await resp.aclose()
        _upstream_json(state, resp, chosen)

    async def events():
        usage = None
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
        finally:
            await resp.aclose()
            account(usage)

    return StreamingResponse(events(), media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"})
