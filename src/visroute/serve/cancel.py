"""Work that ends with its request: nothing keeps running for a request that has been answered.

A handler's work runs as a task raced against the client leaving and the request deadline, with a
``visroute.llm.cancel.CancelToken`` bound to its context (``asyncio.to_thread`` carries it into worker threads).
When the client disconnects (an unsent 499), or the deadline answers 504:

- the token is set first, then the work task is cancelled, so its admission slot is freed at once;
- async work (the chat proxy's upstream call, streaming or not) is cancelled where it awaits, and httpx closes the
  upstream connection;
- blocking work in a worker thread (``/v1/route``) sees the token: stages that have not started are skipped (image
  check, temp file, routing, each call of a cascade or ensemble, each retry and backoff), an upstream HTTP call in
  progress has its socket shut down (the upstream sees the connection close, the call raises ``Cancelled``: never
  retried, never cached), a local ``generate`` stops at its next token;
- a ``/v1/classify`` image still queued for the micro-batcher is dropped before its forward pass.

What Python cannot interrupt finishes on its own, holding no slot, and its result is dropped: a single C call
already running (one image decode, the router's one image embedding), and a batched forward pass already running,
which also serves the other requests in its batch. ``visroute_cancelled_total`` counts cancellations,
``visroute_cancel_stop_seconds`` measures how long blocking work ran on after its request was answered, and
``visroute_batch_dropped_total`` counts queued images never computed; each cancellation is logged with its request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from starlette.exceptions import HTTPException
from starlette.responses import Response

from visroute.llm.cancel import CancelToken, bound, current

#: the status logged for a request whose client left before the answer (nginx's convention; never sent)
CLIENT_GONE = 499


async def _client_gone(receive) -> None:
    """Returns once the client has disconnected (the body has been read, so the next message is the disconnect)."""
    while True:
        msg = await receive()
        if msg.get("type") == "http.disconnect":
            return


async def until_answered(request, work, timeout: float | None):
    """The result of coroutine ``work``; 504 after ``timeout`` seconds (None: no deadline here), and an unsent
    499 when the client leaves first. Either way the work's cancel token is set and ``work`` is cancelled, and
    waited for, before this returns."""
    token = CancelToken()
    with bound(token):  # the task copies the context now: the work and the threads it starts see the token
        task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_client_gone(request.receive))
    try:
        done, _ = await asyncio.wait({task, watch}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # the handler itself was cancelled (server shutdown): take the work with it
        token.cancel("shutdown")
        await _cancel(task, watch)
        raise
    if task in done:
        await _cancel(watch)
        return task.result()
    reason = "client_gone" if watch in done else "deadline"
    token.cancel(reason)  # before the task: a worker thread stops at its next check, its upstream call at once
    await _cancel(task, watch)
    _record_cancel(request, reason)
    if watch in done:
        return Response(status_code=CLIENT_GONE)  # uvicorn drops it: nobody is listening
    raise HTTPException(504, f"the request took longer than its deadline of {timeout:g} s")


def _record_cancel(request, reason: str) -> None:
    from visroute.serve.middleware import access_logger, current_request_id

    path = getattr(getattr(request, "url", None), "path", "")
    state = getattr(getattr(getattr(request, "app", None), "state", None), "serve", None)
    if state is not None:
        state.metrics.cancelled.labels(path=path, reason=reason).inc()
    event = "client_gone" if reason == "client_gone" else "cancelled"
    access_logger().info(json.dumps({"event": event, "reason": reason, "request_id": current_request_id(),
                                     "path": path}))


@contextlib.contextmanager
def blocking_work(state, path: str):
    """Wraps the blocking part of a request, in its worker thread: when it ends after its request was answered,
    how long it ran on is observed (``visroute_cancel_stop_seconds``) and logged with the request id."""
    tok = current()
    try:
        yield tok
    finally:
        if tok is not None and tok.cancelled_at is not None:
            from visroute.serve.middleware import access_logger, current_request_id

            late = time.monotonic() - tok.cancelled_at
            state.metrics.cancel_stop_seconds.labels(path=path).observe(late)
            access_logger().info(json.dumps({"event": "cancelled_work_ended", "request_id": current_request_id(),
                                             "path": path, "after_s": round(late, 3)}))


async def _cancel(*tasks) -> None:
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(BaseException):
            await t
