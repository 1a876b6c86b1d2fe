"""A bounded load generator for the service (used by the load test and ``benchmarks/bench_serve.py``).

It sends exactly ``n`` requests with at most ``concurrency`` in flight over one HTTP/1.1 connection pool, to a
server on this machine, and stops by itself (an overall time limit cancels whatever is left).

Like the ``openai`` client, it sends a request again (once, on a new connection) when the connection closed before
any byte of an answer came back: a server that stops (a worker told to drain) closes its idle keep-alive
connections, and a request written into one at that instant was never read. HTTP/1.1 has no way to close such a
connection without that race, so clients retry; the count is reported as ``retried``, never hidden.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    n: int
    concurrency: int
    wall_s: float
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    timings: list[dict] = field(default_factory=list)      # the server's timings per request, with the client's
    retried: int = 0                                       # requests sent again after a close without an answer

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def throughput(self) -> float:
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> dict:
        return {"n": self.n, "concurrency": self.concurrency, "ok": self.ok, "errors": self.n - self.ok,
                "statuses": {str(k): v for k, v in sorted(self.statuses.items(), key=lambda kv: str(kv[0]))},
                "wall_s": round(self.wall_s, 3), "throughput_rps": round(self.throughput, 2),
                "p50_ms": round(self.percentile(50), 2), "p95_ms": round(self.percentile(95), 2),
                "p99_ms": round(self.percentile(99), 2), "retried": self.retried}

    def line(self) -> str:
        s = self.summary()
        return (f"c={s['concurrency']:>3} n={s['n']:>4} ok={s['ok']:>4} errors={s['errors']} "
                f"{s['throughput_rps']:8.1f} req/s  p50 {s['p50_ms']:7.1f} ms  p95 {s['p95_ms']:7.1f} ms  "
                f"p99 {s['p99_ms']:7.1f} ms")


async def _run(base_url: str, request: Callable[[int], dict], n: int, concurrency: int, headers: dict,
               time_limit_s: float) -> LoadResult:
    import httpx2

    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    result = LoadResult(n, concurrency, 0.0)
    next_i = iter(range(n))

    unanswered = (httpx2.ReadError, httpx2.RemoteProtocolError, httpx2.WriteError)

    async def send(client, kw):
        method, path = kw.pop("method", "POST"), kw.pop("path")
        try:
            return await client.request(method, path, **kw)
        except unanswered:  # closed before any answer: the server never read it (see the module docstring)
            result.retried += 1
            # a client of its own, so the retry cannot land on another pooled connection to the same stopping worker
            async with httpx2.AsyncClient(base_url=base_url, headers=headers, timeout=60.0) as fresh:
                return await fresh.request(method, path, **kw)

    async def worker(client):
        for i in next_i:
            kw = request(i)
            t = time.perf_counter()
            try:
                r = await send(client, kw)
                result.statuses[r.status_code] += 1
                if r.status_code == 200:
                    took = (time.perf_counter() - t) * 1000
                    result.latencies_ms.append(took)
                    doc = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                    if isinstance(doc, dict) and isinstance(doc.get("timings"), dict):
                        result.timings.append({**doc["timings"], "client_ms": took,
                                               "batch_size": doc.get("batch_size")})
                else:
                    result.errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
            except Exception as e:  # counted, never raised: a load test reports failures
                result.statuses[type(e).__name__] += 1
                result.errors.append(f"{type(e).__name__}: {e}")

    async with httpx2.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=60.0) as client:
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(worker(client)) for _ in range(concurrency)]
        done, pending = await asyncio.wait(tasks, timeout=time_limit_s)
        for t in pending:
            t.cancel()
        result.wall_s = time.perf_counter() - t0
        if pending:
            result.errors.append(f"stopped at the time limit of {time_limit_s:g} s")
    return result


def run_load(base_url: str, request: Callable[[int], dict], n: int, concurrency: int, headers: dict | None = None,
             time_limit_s: float = 120.0) -> LoadResult:
    """Send ``n`` requests (``request(i)`` gives httpx keyword arguments plus ``path`` and ``method``)."""
    return asyncio.run(_run(base_url, request, n, concurrency, headers or {}, time_limit_s))
