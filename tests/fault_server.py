"""A fault-injecting OpenAI-compatible chat server on 127.0.0.1, for the bad-input tests.

Each request is answered in one ``mode``: the next one popped from ``script``, else ``mode_for(prompt)`` when
given (a mode per prompt, for CLI runs whose requests arrive in any order), else ``mode``. Modes:

    ok              a valid chat completion (``answer(prompt)``)
    500, 429, 400   that HTTP status with an OpenAI-style error body (429 also sends Retry-After: 0)
    malformed       200 with a body that is not JSON
    truncated       200 with a chat completion cut in the middle
    html            200 with an HTML page (a proxy's or a login portal's)
    empty_choices   ``"choices": []``
    null_content    ``"message": {"content": null}``
    empty_content   ``"message": {"content": ""}``
    not_object      a JSON list instead of an object
    error_200       ``{"error": {...}}`` with status 200
    huge            a 50 MB answer with its Content-Length
    huge_stream     a 50 MB answer without Content-Length (read until the connection closes)
    hang            accept the request, then send nothing (until the server stops)
    trickle         send the headers and a valid body one byte every 0.2 s
    close           close the connection without answering

The 50 MB bodies are streamed from one 64 kB block, so the server itself stays small. ``peak`` is the largest
number of requests it was answering at once; ``delay`` (seconds) is added before every answer.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler

from tests.openai_stub import LoopbackServer, QuietHandler

HUGE = 50 * 2**20
MODES = ("ok", "500", "429", "400", "malformed", "truncated", "html", "empty_choices", "null_content",
         "empty_content", "not_object", "error_200", "huge", "huge_stream", "hang", "trickle", "close")


def completion(model: str, content, usage: bool = True) -> dict:
    doc = {"id": "f", "object": "chat.completion", "created": 0, "model": model,
           "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]}
    if usage:
        doc["usage"] = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    return doc


def prompt_of(body: dict) -> str:
    try:
        content = body["messages"][-1]["content"]
        return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content if "text" in p)
    except (KeyError, IndexError, TypeError):
        return ""


class FaultServer(LoopbackServer):
    def __init__(self, mode: str = "ok", answer=None, delay: float = 0.0, mode_for=None):
        self.mode = mode
        self.mode_for = mode_for
        self.script: list[str] = []
        self.answer = answer or (lambda prompt: "- a visible feature\n- another feature")
        self.delay = delay
        self.requests: list[dict] = []
        self.modes_served: list[str] = []
        self.peak = 0
        self._active = 0
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        server = self

        class Handler(QuietHandler):
            def do_POST(self):
                body = self.json_body()
                with server._lock:
                    mode = server.script.pop(0) if server.script else \
                        (server.mode_for(prompt_of(body)) if server.mode_for else None) or server.mode
                    server.requests.append(body)
                    server.modes_served.append(mode)
                    server._active += 1
                    server.peak = max(server.peak, server._active)
                try:
                    if server.delay:
                        server.stopping.wait(server.delay)
                    server._answer(self, mode, body)
                except (BrokenPipeError, ConnectionResetError, OSError):
                    pass  # the client gave up (deadline, size limit): that is what is being tested
                finally:
                    with server._lock:
                        server._active -= 1

        self._listen(Handler)

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        super().__exit__(*exc)

    # ----- answers -----

    def _answer(self, h: BaseHTTPRequestHandler, mode: str, body: dict) -> None:
        model = str(body.get("model", "m"))
        if mode in ("500", "429", "400"):
            extra = {"Retry-After": "0"} if mode == "429" else {}
            return _send(h, int(mode), json.dumps({"error": {"message": f"injected {mode}"}}).encode(), extra=extra)
        if mode == "hang":
            self.stopping.wait(60)
            return None
        if mode == "close":
            h.close_connection = True
            h.connection.shutdown(2)
            return None
        if mode in ("huge", "huge_stream"):
            return self._huge(h, model, with_length=mode == "huge")
        if mode == "trickle":
            data = json.dumps(completion(model, self.answer(prompt_of(body)))).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            for i in range(len(data)):
                if self.stopping.wait(0.2):
                    return None
                h.wfile.write(data[i : i + 1])
                h.wfile.flush()
            return None
        bodies = {
            "malformed": b"{this is not json",
            "html": b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>",
            "empty_choices": json.dumps({**completion(model, "x"), "choices": []}).encode(),
            "null_content": json.dumps(completion(model, None)).encode(),
            "empty_content": json.dumps(completion(model, "")).encode(),
            "not_object": b"[1, 2, 3]",
            "error_200": json.dumps({"error": {"message": "model overloaded", "type": "server_error"}}).encode(),
        }
        if mode == "truncated":
            data = json.dumps(completion(model, self.answer(prompt_of(body)))).encode()
            return _send(h, 200, data[: len(data) // 2])
        if mode in bodies:
            ctype = "text/html" if mode == "html" else "application/json"
            return _send(h, 200, bodies[mode], ctype)
        if mode != "ok":
            raise ValueError(f"unknown mode {mode}")
        return _send(h, 200, json.dumps(completion(model, self.answer(prompt_of(body)))).encode())

    def _huge(self, h: BaseHTTPRequestHandler, model: str, with_length: bool) -> None:
        block = b"x" * 65536
        head = json.dumps(completion(model, "@"))
        pre, post = head.split('"@"')
        pre_b, post_b = (pre + '"').encode(), ('"' + post).encode()
        n_blocks = HUGE // len(block)
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        if with_length:
            h.send_header("Content-Length", str(len(pre_b) + n_blocks * len(block) + len(post_b)))
        else:
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        h.wfile.write(pre_b)
        for _ in range(n_blocks):
            if self.stopping.is_set():
                return
            h.wfile.write(block)
        h.wfile.write(post_b)


def _send(h: BaseHTTPRequestHandler, status: int, data: bytes, ctype: str = "application/json",
          extra: dict | None = None) -> None:
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(data)))
    for k, v in (extra or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(data)


if __name__ == "__main__":  # a fault server for trying the CLI by hand: python -m tests.fault_server MODE
    import sys

    with FaultServer(sys.argv[1] if len(sys.argv) > 1 else "ok") as srv:
        print(srv.base_url, flush=True)
        while True:
            time.sleep(3600)
