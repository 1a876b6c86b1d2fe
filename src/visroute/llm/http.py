"""The limits an OpenAI-compatible request keeps that the ``openai`` client (and httpx under it) do not provide.

The client sends the request, handles proxies from the environment and pools connections; this module adds:

- a total deadline per attempt (``Attempt``). httpx has only per-operation timeouts, so a server trickling a byte
  every few seconds (of its status line, its headers or its body) would hold a run for as long as it likes. As soon
  as the connection is open (httpcore's ``trace`` hook reports the socket), a watchdog shuts the socket down when
  ``timeout`` seconds have passed since the attempt began, whatever the server is doing. Connections are not
  kept alive between requests, so every attempt's socket is seen opening; the connect itself is bounded by the
  client's connect timeout (at most ``timeout``).
- a maximum answer size: bodies are read in chunks and refused once past ``max_bytes`` (httpx would read any size
  into memory, the openai client does so for error bodies too).
- a process-wide bound on requests in flight per endpoint (``EndpointLimiter``), whichever generators send them;
  the client only bounds connections within one client.
- cancellation (``visroute.llm.cancel``): a served request's token, once set, shuts the attempt's socket down at
  once (``Attempt.abort``), and a request waiting for an endpoint slot stops waiting.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable

from visroute.llm.cancel import current as current_cancel

#: Largest answer body accepted (bytes); a chat answer is a few kB, an answer with images in it a few MB at most.
MAX_RESPONSE_BYTES = 8 * 2**20
#: Of an error answer, only this much is read: enough for its one-line reason.
ERROR_EXCERPT_BYTES = 4096


class HTTPFailure(Exception):
    """One attempt failed. ``reason`` is one line; ``retryable``: another attempt may succeed."""

    def __init__(self, reason: str, retryable: bool, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


class EndpointLimiter:
    """At most ``limit`` requests in flight to one base URL from this process, across all generators.

    The limit is the largest any generator of that endpoint asked for, so two generators with concurrency 4
    together still send at most 4 requests at once.
    """

    # process-wide cache keyed by base URL, on purpose: one endpoint's capacity is shared by every generator here
    _all: dict[str, "EndpointLimiter"] = {}
    _registry = threading.Lock()

    def __init__(self, limit: int):
        self.limit = max(1, int(limit))
        self.in_flight = 0
        self.peak = 0
        self._cond = threading.Condition()

    @classmethod
    def for_endpoint(cls, base_url: str, limit: int) -> "EndpointLimiter":
        with cls._registry:
            lim = cls._all.get(base_url)
            if lim is None:
                lim = cls._all[base_url] = cls(limit)
            elif limit > lim.limit:
                with lim._cond:
                    lim.limit = int(limit)
                    lim._cond.notify_all()
            return lim

    def __enter__(self) -> "EndpointLimiter":
        tok = current_cancel()  # a cancelled request stops waiting for a slot, and takes none
        with self._cond:
            while True:
                if tok is not None:
                    tok.check()
                if self.in_flight < self.limit:
                    break
                self._cond.wait(0.1 if tok is not None else None)
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        return self

    def __exit__(self, *exc) -> None:
        with self._cond:
            self.in_flight -= 1
            self._cond.notify()


class Attempt:
    """One attempt's deadline and size limit, applied to the httpx response the openai client received.

    ``watch(response)`` arms the watchdog as soon as the headers are in; ``read`` collects a body in chunks; leaving
    the ``with`` block disarms the watchdog.
    """

    def __init__(self, timeout: float, max_bytes: int = MAX_RESPONSE_BYTES):
        self.timeout = float(timeout)
        self.max_bytes = int(max_bytes)
        self.ends = time.monotonic() + self.timeout
        self.fired = threading.Event()
        self._timer: threading.Timer | None = None
        self._sock: socket.socket | None = None
        self._response = None
        self._lock = threading.Lock()
        self.aborted = False

    def __enter__(self) -> "Attempt":
        return self

    def __exit__(self, *exc) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def timed_out(self) -> HTTPFailure:
        return HTTPFailure(f"Timeout: no complete answer within {self.timeout:g} s", retryable=True)

    def trace(self, event: str, info: dict) -> None:
        """httpcore's ``trace`` extension: arm the watchdog on the socket as soon as the connection is open (and
        again on its TLS layer), so a server dribbling its status line or headers is cut at the deadline too."""
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if isinstance(sock, socket.socket):
                self._arm(sock)

    def watch(self, response) -> None:
        """Shut the response's socket down at the deadline (a blocked read then returns at once)."""
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        self._response = response
        if isinstance(sock, socket.socket):
            self._arm(sock)
        elif self.ends - time.monotonic() <= 0:
            self.fired.set()

    def abort(self) -> None:
        """Shut the attempt's socket down now (or as soon as it connects): its request was cancelled, so the blocked
        read returns at once and the server sees the connection close."""
        with self._lock:
            self.aborted = True
            sock = self._sock
        if sock is not None:
            _shutdown(sock)

    def _arm(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.aborted:
                _shutdown(sock)
            if self._timer is not None:
                return
            remaining = self.ends - time.monotonic()
            self._timer = threading.Timer(max(0.0, remaining), self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        self.fired.set()
        response, sock = self._response, self._sock
        if response is not None and response.is_closed:  # the answer completed in time
            return
        _shutdown(sock)

    def read(self, chunks: Iterable[bytes], declared: str | None = None, limit: int | None = None) -> bytes:
        """The body, or HTTPFailure once it passes the size limit or the deadline. With ``limit``, only the first
        ``limit`` bytes are wanted: reading stops there, no failure."""
        if limit is None and declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise HTTPFailure(f"answer of {int(declared) / 2**20:.1f} MiB refused "
                              f"(limit {self.max_bytes / 2**20:g} MiB)", retryable=False)
        parts, size = [], 0
        for chunk in chunks:
            if self.fired.is_set() or time.monotonic() > self.ends:
                raise self.timed_out()
            parts.append(chunk)
            size += len(chunk)
            if limit is not None and size >= limit:
                return b"".join(parts)[:limit]
            if size > self.max_bytes:
                raise HTTPFailure(f"answer larger than {self.max_bytes / 2**20:g} MiB refused", retryable=False)
        if self.fired.is_set():  # the watchdog's shutdown ends a body without a length as if it were whole
            raise self.timed_out()
        return b"".join(parts)


def _shutdown(sock) -> None:
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's, so a TLS one is not torn apart
    except (OSError, TypeError):
        pass


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header; None for an HTTP date (rare from LLM servers: the usual backoff applies)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def one_line(text: str, n: int = 200) -> str:
    line = " ".join(str(text).split())
    return line[:n] + ("..." if len(line) > n else "")


def content_text(content):
    """A chat message's ``content`` as the model's text: a string as it is, content parts as their text parts
    joined; anything else is returned unchanged, for the caller to judge."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return content


def answer_logprob(choice: dict) -> float | None:
    """The mean token log-probability of a chat completion choice (``logprobs.content[*].logprob``, as OpenAI, vLLM
    and llama.cpp report it when asked with ``logprobs: true``); None when absent or not all finite numbers <= 0."""
    from visroute.llm.base import mean_logprob

    reported = choice.get("logprobs")
    tokens = reported.get("content") if isinstance(reported, dict) else None
    if not isinstance(tokens, list):
        return None
    return mean_logprob(t.get("logprob") if isinstance(t, dict) else None for t in tokens)
