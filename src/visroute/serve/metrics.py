"""Prometheus metrics of one service instance (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("visroute_requests", "HTTP requests answered", ["method", "path", "status"], registry=r)
        self.latency = Histogram("visroute_request_seconds", "Time to answer a request (to the first byte of a stream)",
                                 ["path"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("visroute_batch_size", "Images per forward pass of the micro-batcher", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.images = Counter("visroute_images_classified", "Images classified", ["model"], registry=r)
        self.queue_depth = Gauge("visroute_queue_depth", "Requests admitted to the classify queue", ["model"],
                                 registry=r)
        self.rejected = Counter("visroute_rejected", "Requests refused before any work", ["reason"], registry=r)
        self.routed = Counter("visroute_routed", "Routing decisions", ["router", "model", "endpoint"], registry=r)
        self.cost = Counter("visroute_cost", "Cost of routed and proxied calls (price-table currency)", ["model"],
                            registry=r)
        self.upstream_errors = Counter("visroute_upstream_errors", "Failed calls to backend endpoints", ["model"],
                                       registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
