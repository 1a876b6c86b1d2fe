"""A loopback OpenAI-compatible chat server around local generators (the tiny random LLaVA / Llama at tiny scale).

At ``--scale tiny`` the VLM and LLM stages call this server through visroute's real HTTP client (retries, response
cache, token accounting), as they would call vLLM or ``transformers serve`` at full scale. It listens on
127.0.0.1 only, on a free port, for the duration of one recipe run; its URL is allowed for that run only
(``allow_endpoint``), because the runner itself started it: no URL is ever taken from a recipe file.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from visroute.llm.endpoints import ALLOW_ENV

MAX_BODY = 32 * 1024 * 1024


def _decode_image(url: str):
    from PIL import Image

    if not url.startswith("data:") or "," not in url:
        raise ValueError("only data: image URLs are accepted")
    raw = base64.b64decode(url.split(",", 1)[1], validate=False)
    return Image.open(io.BytesIO(raw)).convert("RGB")


def chat_request(body: dict):
    """An OpenAI chat body -> visroute ChatRequest (last user turn's text and images, the system prompt)."""
    from visroute.llm.base import ChatRequest

    system, prompt, images = None, "", []
    for msg in body.get("messages") or []:
        content = msg.get("content")
        if msg.get("role") == "system":
            system = content if isinstance(content, str) else None
            continue
        if isinstance(content, str):
            prompt = content
            continue
        texts = []
        for part in content or []:
            if part.get("type") == "text":
                texts.append(part.get("text", ""))
            elif part.get("type") == "image_url":
                images.append(_decode_image((part.get("image_url") or {}).get("url", "")))
        prompt = "\n".join(texts)
    return ChatRequest(prompt, images, system)


class LocalServer:
    """``with LocalServer({"random-tiny:llava": "random-tiny:llava"}) as url: ...`` serves each named generator."""

    def __init__(self, models: dict[str, str], max_tokens: int = 64, device: str = "cpu", port: int = 0):
        self.models = dict(models)
        self.port = port
        self.max_tokens, self.device = max_tokens, device
        self._gens: dict = {}
        self._lock = threading.Lock()
        self.requests = 0
        self.httpd: ThreadingHTTPServer | None = None

    def _generator(self, name: str):
        if name not in self._gens:
            from visroute.llm import load_generator

            self._gens[name] = load_generator(self.models[name], cache=None, max_tokens=self.max_tokens,
                                              device=self.device)
        return self._gens[name]

    def answer(self, body: dict) -> tuple[int, dict]:
        name = body.get("model")
        if name not in self.models:
            return 404, {"error": {"message": f"model '{name}' is not served here ({', '.join(self.models)})"}}
        try:
            req = chat_request(body)
        except (ValueError, OSError, AttributeError, TypeError) as e:
            return 400, {"error": {"message": f"bad request: {e}"}}
        try:
            asked = int(body.get("max_tokens") or self.max_tokens)
        except (TypeError, ValueError):
            return 400, {"error": {"message": "max_tokens must be an integer"}}
        with self._lock:  # one generation at a time: local models are not thread-safe
            gen = self._generator(name)
            gen.max_tokens = max(1, min(asked, self.max_tokens))
            res = gen.generate([req])[0]
            self.requests += 1
        if not res.ok:
            return 500, {"error": {"message": res.error}}
        usage = {"prompt_tokens": res.input_tokens or 0, "completion_tokens": res.output_tokens or 0}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return 200, {"id": f"local-{self.requests}", "object": "chat.completion", "created": int(time.time()),
                     "model": name, "usage": usage,
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": res.text}}]}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, doc: dict) -> None:
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/v1/models"):
                    return self._send(200, {"object": "list", "data": [{"id": m, "object": "model"}
                                                                       for m in server.models]})
                self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                if not self.path.rstrip("/").endswith("/v1/chat/completions"):
                    return self._send(404, {"error": {"message": "not found"}})
                n = int(self.headers.get("Content-Length") or 0)
                if n <= 0 or n > MAX_BODY:
                    return self._send(413 if n > MAX_BODY else 400, {"error": {"message": "bad body size"}})
                try:
                    body = json.loads(self.rfile.read(n))
                except (json.JSONDecodeError, UnicodeDecodeError):
                    return self._send(400, {"error": {"message": "body is not JSON"}})
                body = body if isinstance(body, dict) else {}
                status, doc = server.answer(body)
                if status != 200 or not body.get("stream"):
                    return self._send(status, doc)
                self.send_response(200)  # stream: true -> the answer as server-sent events, as OpenAI sends it
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for event in stream_events(doc):
                    self.wfile.write(f"data: {event}\n\n".encode())
                self.wfile.flush()
                self.close_connection = True

        return Handler

    def __enter__(self) -> str:
        for name in self.models:  # load first: a model that cannot load is one error now, not failed requests later
            self._generator(name)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, name="visroute-local-llm", daemon=True).start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __exit__(self, *exc) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()


def stream_events(doc: dict) -> list[str]:
    """A chat completion as OpenAI's stream: a role+content chunk, a finish chunk with the usage, then [DONE]."""
    base = {"id": doc["id"], "object": "chat.completion.chunk", "created": doc["created"], "model": doc["model"]}
    text = doc["choices"][0]["message"]["content"]
    return [json.dumps({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text},
                                             "finish_reason": None}]}),
            json.dumps({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                        "usage": doc["usage"]}),
            "[DONE]"]


@contextlib.contextmanager
def allow_endpoint(url: str):
    """Allow ``url`` (a server this process started) for the duration of the block, then restore the setting."""
    before = os.environ.get(ALLOW_ENV)
    os.environ[ALLOW_ENV] = ",".join(u for u in (before, url) if u)
    try:
        yield url
    finally:
        if before is None:
            os.environ.pop(ALLOW_ENV, None)
        else:
            os.environ[ALLOW_ENV] = before
