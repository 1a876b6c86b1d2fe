"""Work that ends with its request: a handler's work runs as a task raced against the client leaving and the
request deadline. When the client disconnects, or the deadline answers 504, the work task is cancelled at once, so
its admission slot is freed and no stage that has not started runs. (A stage already running in a worker thread
cannot be interrupted by Python; it finishes on its own, holding no slot, and its result is dropped.)"""

from __future__ import annotations

import asyncio
import contextlib
import json

from starlette.exceptions import HTTPException
from starlette.responses import Response

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
    499 when the client leaves first. Either way ``work`` is cancelled, and waited for, before this returns."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_client_gone(request.receive))
    try:
        done, _ = await asyncio.wait({task, watch}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # the handler itself was cancelled (server shutdown): take the work with it
        await _cancel(task, watch)
        raise
    if task in done:
        await _cancel(watch)
        return task.result()
    await _cancel(task, watch)
    from visroute.serve.middleware import access_logger, current_request_id

    if watch in done:
        access_logger().info(json.dumps({"event": "client_gone", "request_id": current_request_id(),
                                         "path": request.url.path}))
        return Response(status_code=CLIENT_GONE)  # uvicorn drops it: nobody is listening
    raise HTTPException(504, f"the request took longer than its deadline of {timeout:g} s")


async def _cancel(*tasks) -> None:
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(BaseException):
            await t
