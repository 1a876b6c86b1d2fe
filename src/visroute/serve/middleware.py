"""The gate every request passes: request id, API key, body-size limit, metrics and one structured log line;
and the error handlers that turn every failure into an OpenAI-shaped JSON error with a 4xx/5xx status."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from visroute.errors import VisrouteError
from visroute.serve.batching import QueueFull, ShuttingDown

ACCESS_LOGGER = "visroute.serve.access"
_RID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error", 413: "request_too_large",
          415: "unsupported_media_type", 422: "invalid_request_error", 502: "upstream_error", 503: "overloaded_error",
          504: "timeout_error"}


def access_logger() -> logging.Logger:
    """One JSON object per line on stderr (a handler is added once; the CLI's log level does not hide it)."""
    log = logging.getLogger(ACCESS_LOGGER)
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


def error_body(status: int, message: str, request_id: str | None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error" if status >= 500 else
                                                              "invalid_request_error"),
                      "code": code, "request_id": request_id}}


async def _send_error(send, status: int, message: str, rid: str, extra: list | None = None) -> None:
    body = json.dumps(error_body(status, message, rid)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"x-request-id", rid.encode())] + (extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Gate:
    """Pure ASGI middleware (streams pass through untouched)."""

    def __init__(self, app, state, keys, max_body: int):
        self.app, self.state, self.keys, self.max_body = app, state, keys, max_body
        self.log = access_logger()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = headers.get("x-request-id", "")
        rid = given if _RID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        t0, status, first_byte = time.perf_counter(), [0], [None]

        async def send_(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
                first_byte[0] = time.perf_counter()
                msg = {**msg, "headers": list(msg.get("headers", [])) + [(b"x-request-id", rid.encode())]}
            await send(msg)

        try:
            await self._handle(scope, receive, send_, headers, rid)
        except Exception:  # the last line of defence: a bug answers one 500 with the request id, logged in full
            self.log.error(json.dumps({"event": "error", "request_id": rid, "path": scope["path"]}), exc_info=True)
            if not status[0]:
                await _send_error(send_, 500, "internal error; the server log has the details under this request id",
                                  rid)
        finally:
            self._record(scope, headers, rid, status[0], t0, first_byte[0])

    async def _handle(self, scope, receive, send, headers, rid):
        path = scope["path"]
        if not self.keys.is_public(path) and not self.keys.allowed(headers):
            self.state.metrics.rejected.labels(reason="auth").inc()
            msg = "missing API key" if self.keys.presented(headers) is None else "invalid API key"
            return await _send_error(send, 401, f"{msg}: send 'Authorization: Bearer <key>'", rid,
                                     [(b"www-authenticate", b"Bearer")])
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            self.state.metrics.rejected.labels(reason="body_size").inc()
            return await _send_error(send, 413, f"request body of {int(length):,} bytes is over the limit of "
                                                f"{self.max_body:,} bytes", rid)
        seen = [0]
        limit = self.max_body

        async def receive_():
            msg = await receive()
            if msg["type"] == "http.request":
                seen[0] += len(msg.get("body", b""))
                if seen[0] > limit:
                    raise HTTPException(413, f"request body is over the limit of {limit:,} bytes")
            return msg

        await self.app(scope, receive_, send)

    def _record(self, scope, headers, rid, status, t0, first_byte):
        route = scope.get("route")
        path = getattr(route, "path", None) or ("/static" if scope["path"].startswith("/static/") else "unmatched")
        took = ((first_byte or time.perf_counter()) - t0)
        m = self.state.metrics
        m.requests.labels(method=scope["method"], path=path, status=str(status or 500)).inc()
        m.latency.labels(path=path).observe(took)
        client = scope.get("client") or ("", 0)
        self.log.info(json.dumps({"event": "request", "request_id": rid, "method": scope["method"],
                                  "path": scope["path"], "status": status or 500, "ms": round(took * 1000, 2),
                                  "client": client[0], "user_agent": headers.get("user-agent", "")[:120]}))


def install_error_handlers(app: FastAPI) -> None:
    def rid(request: Request) -> str | None:
        return request.scope.get("state", {}).get("request_id")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        return JSONResponse(error_body(exc.status_code, str(exc.detail), rid(request)), exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return JSONResponse(error_body(422, validation_message(exc.errors()), rid(request)), 422)

    @app.exception_handler(QueueFull)
    async def _full(request: Request, exc: QueueFull):
        request.app.state.serve.metrics.rejected.labels(reason="queue_full").inc()
        return JSONResponse(error_body(503, str(exc), rid(request)), 503,
                            headers={"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(ShuttingDown)
    async def _down(request: Request, exc: ShuttingDown):
        return JSONResponse(error_body(503, str(exc), rid(request)), 503, headers={"Retry-After": "5"})

    @app.exception_handler(VisrouteError)
    async def _visroute(request: Request, exc: VisrouteError):
        status = getattr(exc, "status", None) or (404 if type(exc).__name__ == "NotFound" else 400)
        return JSONResponse(error_body(status, str(exc), rid(request)), status, headers=getattr(exc, "headers", None))


def validation_message(errors) -> str:
    """Pydantic's errors as one line: 'body.top_k: Input should be greater than or equal to 1; ...'."""
    parts = []
    for e in list(errors)[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request does not match the schema"
