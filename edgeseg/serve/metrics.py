"""Prometheus metrics of one server: requests, latency, batch sizes and queue depth."""

from __future__ import annotations

from collections.abc import Callable

from edgeseg.errors import require


class ServerMetrics:
    """A private registry (so several servers in one process do not collide) and its series."""

    def __init__(self, queue_depth: Callable[[], int]) -> None:
        prom = require("prometheus_client", "serve", "the /metrics endpoint")
        self._prom = prom
        self.registry = prom.CollectorRegistry()
        self.requests = prom.Counter("edgeseg_requests", "HTTP requests by endpoint and status code",
                                     ["endpoint", "code"], registry=self.registry)
        self.latency = prom.Histogram("edgeseg_request_latency_seconds", "Request latency by endpoint",
                                      ["endpoint"], registry=self.registry,
                                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.batch_size = prom.Histogram("edgeseg_batch_size", "Slices per model call", registry=self.registry,
                                         buckets=(1, 2, 4, 8, 16, 32, 64))
        self.queue_depth = prom.Gauge("edgeseg_queue_depth", "Requests waiting for the model", registry=self.registry)
        self.queue_depth.set_function(queue_depth)

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST
