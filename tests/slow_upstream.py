"""A slow OpenAI-compatible chat server on 127.0.0.1 that notices when its client hangs up (for the cancellation
tests: what a 504 or a leaving client must do to the upstream call behind it).

Each request is answered in the next mode popped from ``script``, else ``mode``:

    hold    wait ``hold_s`` before answering (a JSON completion, or the events of a stream)
    drip    (streams) send the headers at once, then one event every 0.2 s for ``hold_s``, then [DONE]

While it waits or drips it watches its socket; a client that closes the connection is recorded as ``closed`` with
the time, so a test can assert the upstream call was aborted (and when), not merely that the client got an answer.
``calls`` lists (request number, model, time received); ``closed`` maps a request number to when its client left.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler

from tests.openai_stub import LoopbackServer, QuietHandler


def _peer_closed(conn: socket.socket) -> bool:
    """True once the client has closed its end (readable with nothing to read, or reset)."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        return bool(readable) and conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class SlowUpstream(LoopbackServer):
    def __init__(self, mode: str = "hold", hold_s: float = 15.0):
        self.mode, self.hold_s = mode, hold_s
        self.script: list[str] = []
        self.calls: list[tuple[int, str, float]] = []
        self.closed: dict[int, float] = {}
        self.answered: dict[int, float] = {}
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        up = self

        class Handler(QuietHandler):
            def do_POST(self):
                body = self.json_body()
                with up._lock:
                    n = len(up.calls)
                    up.calls.append((n, str(body.get("model")), time.monotonic()))
                    mode = up.script.pop(0) if up.script else up.mode
                try:
                    if up._serve(self, n, mode, body):
                        up.answered[n] = time.monotonic()
                    else:
                        up.closed[n] = time.monotonic()
                except OSError:
                    up.closed[n] = time.monotonic()

        self._listen(Handler)

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        super().__exit__(*exc)

    def _wait(self, conn: socket.socket, seconds: float) -> bool:
        """Wait ``seconds`` watching the socket: False as soon as the client hangs up."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self.stopping.is_set():
            if _peer_closed(conn):
                return False
            time.sleep(0.02)
        return True

    def _serve(self, h: BaseHTTPRequestHandler, n: int, mode: str, body: dict) -> bool:
        """Answer one request; False when the client left first."""
        model, stream = str(body.get("model", "m")), bool(body.get("stream"))
        if mode == "hold" and not self._wait(h.connection, self.hold_s):
            return False
        if not stream:
            doc = {"id": f"s{n}", "object": "chat.completion", "created": 0, "model": model,
                   "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "A"}}],
                   "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
            data = json.dumps(doc).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return True
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        end = time.monotonic() + (self.hold_s if mode == "drip" else 0.0)
        i = 0
        while True:
            chunk = {"id": f"s{n}", "object": "chat.completion.chunk", "created": 0, "model": model,
                     "choices": [{"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": None}]}
            h.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            h.wfile.flush()
            i += 1
            if time.monotonic() >= end:
                break
            if not self._wait(h.connection, 0.2):
                return False
        h.wfile.write(b"data: [DONE]\n\n")
        h.wfile.flush()
        return True

    def wait_for(self, cond, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return True
            time.sleep(0.02)
        return cond()
