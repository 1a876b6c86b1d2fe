"""Prometheus metrics of one service instance (its own registry, so several apps can live in one process).

Under ``visroute serve --workers N`` every worker writes its values to ``$PROMETHEUS_MULTIPROC_DIR`` (prometheus
client's multiprocess mode, set by the command before the workers start) and ``/metrics`` on any worker renders the
sum over all of them."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()

        def hist(name: str, doc: str, labels: list[str], buckets=LATENCY_BUCKETS) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=r)

        self.requests = Counter("visroute_requests", "HTTP requests answered", ["method", "path", "status"], registry=r)
        self.latency = hist("visroute_request_seconds", "Time to answer a request (to the first byte of a stream)",
                            ["path"])
        self.batch_size = hist("visroute_batch_size", "Images per forward pass of the micro-batcher", ["model"],
                               BATCH_BUCKETS)
        self.queue_seconds = hist("visroute_queue_wait_seconds", "Time an image waited for its forward pass",
                                  ["model"])
        self.decode_seconds = hist("visroute_decode_seconds", "Time to decode and preprocess one image", ["model"])
        self.forward_seconds = hist("visroute_forward_seconds", "Time of one batched forward pass", ["model"])
        self.upstream_seconds = hist("visroute_upstream_seconds", "Time of one call to a backend endpoint "
                                     "(to the first byte of a stream)", ["model"])
        self.images = Counter("visroute_images_classified", "Images classified", ["model"], registry=r)
        self.queue_depth = Gauge("visroute_queue_depth", "Requests admitted to the classify queue", ["model"],
                                 registry=r, multiprocess_mode="livesum")
        self.rejected = Counter("visroute_rejected", "Requests refused before any work", ["reason"], registry=r)
        self.routed = Counter("visroute_routed", "Routing decisions", ["router", "model", "endpoint"], registry=r)
        self.cost = Counter("visroute_cost", "Cost of routed and proxied calls (price-table currency)", ["model"],
                            registry=r)
        self.upstream_errors = Counter("visroute_upstream_errors", "Failed calls to backend endpoints", ["model"],
                                       registry=r)
        self.cancelled = Counter("visroute_cancelled", "Requests answered early (504, client gone) whose work was "
                                 "cancelled", ["path", "reason"], registry=r)
        self.cancel_stop_seconds = hist("visroute_cancel_stop_seconds", "Time blocking work ran on after its request "
                                        "was answered early", ["path"])
        self.batch_dropped = Counter("visroute_batch_dropped", "Queued images dropped before their forward pass "
                                     "(their request was answered early)", ["model"], registry=r)

    def render(self) -> bytes:
        if not multiprocess():
            return generate_latest(self.registry)
        from prometheus_client import multiprocess as mp

        merged = CollectorRegistry()
        mp.MultiProcessCollector(merged)
        return generate_latest(merged)


def worker_exited(pid: int) -> None:
    """Drop a finished worker's live gauges (its counters and histograms keep counting in the sum)."""
    if multiprocess():
        from prometheus_client import multiprocess as mp

        mp.mark_process_dead(pid)
