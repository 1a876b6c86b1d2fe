"""One HTTP POST to an OpenAI-compatible server, with limits no server can talk its way past.

- A total deadline per attempt: a watchdog shuts the socket down when ``timeout`` seconds have passed, whatever
  the server is doing (hanging before the headers, trickling a byte a second, streaming forever). A per-read
  timeout alone lets a trickling server hold a run for as long as it likes.
- A maximum answer size: the body is read in chunks and refused once it passes ``max_bytes``, so a 50 MB
  answer costs at most ``max_bytes`` of memory.
- A process-wide bound on requests in flight per endpoint (``EndpointLimiter``), whichever generators send them.

Only the standard library is used (``http.client``), so the socket is ours to close. Proxies from the usual
environment variables (``https_proxy``, ``http_proxy``, ``no_proxy``) are honoured.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

#: Largest answer body accepted (bytes); a chat answer is a few kB, an answer with images in it a few MB at most.
MAX_RESPONSE_BYTES = 8 * 2**20
_CHUNK = 64 * 1024


class HTTPFailure(Exception):
    """One attempt failed. ``reason`` is one line; ``retryable``: another attempt may succeed."""

    def __init__(self, reason: str, retryable: bool, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass
class HTTPAnswer:
    status: int
    content_type: str
    body: bytes
    retry_after: float | None = None


class EndpointLimiter:
    """At most ``limit`` requests in flight to one base URL from this process, across all generators.

    The limit is the largest any generator of that endpoint asked for, so two generators with concurrency 4
    together still send at most 4 requests at once.
    """

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
        with self._cond:
            while self.in_flight >= self.limit:
                self._cond.wait()
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        return self

    def __exit__(self, *exc) -> None:
        with self._cond:
            self.in_flight -= 1
            self._cond.notify()


class HTTPTransport:
    """POSTs JSON to one base URL; keeps idle keep-alive connections for reuse between requests."""

    def __init__(self, base_url: str, api_key: str, timeout: float = 60.0, max_bytes: int = MAX_RESPONSE_BYTES):
        parts = urlsplit(base_url)
        self.base_url = base_url
        self.api_key = api_key
        self.timeout = float(timeout)
        self.max_bytes = int(max_bytes)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.path = parts.path.rstrip("/")
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._proxy = _proxy_for(parts.scheme, self.host)

    # ----- connections -----

    def _new_connection(self) -> http.client.HTTPConnection:
        if self._proxy is None:
            if self.https:
                return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                                   context=ssl.create_default_context())
            return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        p = urlsplit(self._proxy)
        proxy_port = p.port or (443 if p.scheme == "https" else 80)
        if self.https:  # a CONNECT tunnel through the proxy, TLS with the endpoint itself
            conn = http.client.HTTPSConnection(p.hostname or "", proxy_port, timeout=self.timeout,
                                               context=ssl.create_default_context())
            conn.set_tunnel(self.host, self.port)
            return conn
        return http.client.HTTPConnection(p.hostname or "", proxy_port, timeout=self.timeout)

    def _take(self) -> http.client.HTTPConnection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._new_connection()

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < 32:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    # ----- one request -----

    def post(self, path: str, body: bytes) -> HTTPAnswer:
        """POST ``body`` (JSON) to ``base_url + path``; raise HTTPFailure on any transport failure."""
        conn = self._take()
        try:
            return self._post_on(conn, path, body)
        except _StaleConnection:
            # a kept-alive connection the server had already closed: not the server's answer, try once on a new one
            return self._post_on(self._new_connection(), path, body)

    def _post_on(self, conn: http.client.HTTPConnection, path: str, body: bytes) -> HTTPAnswer:
        fired = threading.Event()
        reused = conn.sock is not None

        def expire() -> None:
            fired.set()
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv/send in the requesting thread
                except OSError:
                    pass

        watchdog = threading.Timer(self.timeout, expire)
        watchdog.daemon = True
        watchdog.start()
        url = self.path + path if self._proxy is None or self.https else self.base_url + path
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "Authorization": f"Bearer {self.api_key}", "User-Agent": "visroute"}
        got_headers = False
        try:
            if conn.sock is None:
                conn.connect()
            if fired.is_set():
                raise TimeoutError
            conn.request("POST", url, body=body, headers=headers)
            resp = conn.getresponse()
            got_headers = True
            data = self._read_body(resp, fired)
            answer = HTTPAnswer(resp.status, resp.getheader("Content-Type", "") or "", data,
                                _retry_after(resp.getheader("Retry-After")))
        except HTTPFailure:
            conn.close()
            raise
        except (TimeoutError, socket.timeout) as e:
            conn.close()
            raise HTTPFailure(f"Timeout: no complete answer within {self.timeout:g} s", retryable=True) from e
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
            conn.close()
            if fired.is_set():
                raise HTTPFailure(f"Timeout: no complete answer within {self.timeout:g} s", retryable=True) from e
            if reused and not got_headers:
                raise _StaleConnection from e
            raise HTTPFailure(f"the server closed the connection ({type(e).__name__})", retryable=True) from e
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            if fired.is_set():
                raise HTTPFailure(f"Timeout: no complete answer within {self.timeout:g} s", retryable=True) from e
            what = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise HTTPFailure(f"cannot talk to {self.host}:{self.port} ({_one_line(what)})", retryable=True) from e
        finally:
            watchdog.cancel()
        if fired.is_set():  # the answer completed as the watchdog fired: the socket is gone, the answer is whole
            conn.close()
        elif resp.will_close:
            conn.close()
        else:
            self._give_back(conn)
        return answer

    def _read_body(self, resp: http.client.HTTPResponse, fired: threading.Event) -> bytes:
        declared = resp.getheader("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise HTTPFailure(f"answer of {int(declared) / 2**20:.1f} MiB refused (limit {self.max_bytes / 2**20:g} MiB)",
                              retryable=False)
        parts, size = [], 0
        while True:
            chunk = resp.read1(_CHUNK) if hasattr(resp, "read1") else resp.read(_CHUNK)
            if fired.is_set():
                raise TimeoutError
            if not chunk:
                resp.close()  # marks the response done, so the kept-alive connection can carry the next request
                return b"".join(parts)
            size += len(chunk)
            if size > self.max_bytes:
                raise HTTPFailure(f"answer larger than {self.max_bytes / 2**20:g} MiB refused", retryable=False)
            parts.append(chunk)


class _StaleConnection(Exception):
    pass


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare from LLM servers; the usual backoff applies


def _proxy_for(scheme: str, host: str) -> str | None:
    proxies = urllib.request.getproxies()
    proxy = proxies.get(scheme)
    if not proxy or host in ("127.0.0.1", "localhost", "::1") or urllib.request.proxy_bypass(host):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def _one_line(text: str, n: int = 200) -> str:
    line = " ".join(str(text).split())
    return line[:n] + ("..." if len(line) > n else "")
