"""A scriptable OpenAI-compatible chat server on loopback, for deterministic retry/timeout/parsing tests.

``script`` is a list of actions consumed one per request: ("status", 500), ("sleep", 2.0) (then answer),
("text", "..."); when it is empty, ``default(prompt)`` answers. A request with ``"stream": true`` is answered
with server-sent events, one chunk per word of the answer, then ``data: [DONE]`` (with
``stream_options.include_usage``, a last chunk carries the usage, as OpenAI's does).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class QuietHandler(BaseHTTPRequestHandler):
    """An HTTP/1.1 request handler that logs nothing and reads a JSON body (empty: ``{}``)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def json_body(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")


class LoopbackServer:
    """A threaded HTTP server for one handler class on 127.0.0.1 (a free port), used as a context manager."""

    def _listen(self, handler: type) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class StubServer(LoopbackServer):
    def __init__(self, default=None):
        self.script: list[tuple] = []
        self.requests: list[dict] = []
        self.headers: list[dict] = []  # request headers, in the order of ``requests``
        self.default = default or (lambda prompt: "- a generic feature")
        self.logprobs: list | None = None  # token log-probabilities sent when a request asks (``logprobs: true``)
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub._lock:
                    stub.requests.append(body)
                    stub.headers.append({k.lower(): v for k, v in self.headers.items()})
                    action = stub.script.pop(0) if stub.script else None
                if action and action[0] == "status":
                    self.send_response(action[1])
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(json.dumps({"error": {"message": "injected failure"}}).encode())
                    return
                if action and action[0] == "sleep":
                    time.sleep(action[1])
                try:
                    content = body["messages"][-1]["content"]
                    prompt = content if isinstance(content, str) else " ".join(
                        p.get("text", "") for p in content if p.get("type") == "text")
                except (KeyError, IndexError, TypeError, AttributeError):  # fuzzed requests: answer them all the same
                    prompt = ""
                text = action[1] if action and action[0] == "text" else stub.default(prompt)
                if body.get("stream"):
                    return self._stream(body, prompt, text)
                doc = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": text}}],
                       "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                                 "total_tokens": len(prompt.split()) + len(text.split())}}
                if body.get("logprobs") and stub.logprobs is not None:
                    doc["choices"][0]["logprobs"] = {"content": [{"token": "t", "logprob": v} for v in stub.logprobs]}
                data = json.dumps(doc).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _stream(self, body, prompt, text):
                base = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
                words = text.split(" ")
                chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                "finish_reason": None}]}]
                chunks += [{**base, "choices": [{"index": 0, "delta": {"content": w if i == 0 else " " + w},
                                                 "finish_reason": None}]} for i, w in enumerate(words)]
                chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                if (body.get("stream_options") or {}).get("include_usage"):
                    n_in, n_out = len(prompt.split()), len(text.split())
                    chunks.append({**base, "choices": [], "usage": {"prompt_tokens": n_in, "completion_tokens": n_out,
                                                                    "total_tokens": n_in + n_out}})
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for c in chunks:
                        self.wfile.write(f"data: {json.dumps(c)}\n\n".encode())
                        self.wfile.flush()
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self._listen(Handler)
