"""Prometheus metrics of one server: requests, latency, batch sizes, queue depth, bytes in flight
and upload bytes on disk, and each model's inference requests as its statistics count them."""

from __future__ import annotations

from collections.abc import Callable

from edgeseg.errors import require


class ServerMetrics:
    """A private registry (so several servers in one process do not collide) and its series.

    ``models`` returns the served models by name at scrape time; their success and fail counts
    are read from the statistics extension's counters (``InferenceStats``), so ``/metrics`` and
    ``/v2/models/stats`` cannot disagree.
    """

    def __init__(self, queue_depth: Callable[[], int], inflight_bytes: Callable[[], int] = lambda: 0,
                 models: Callable[[], dict] = dict, upload_disk_bytes: Callable[[], int] = lambda: 0) -> None:
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
        self.inflight_bytes = prom.Gauge("edgeseg_inflight_bytes", "Bytes of decoded inputs held for requests in "
                                         "flight (bounded by --max-inflight-bytes)", registry=self.registry)
        self.inflight_bytes.set_function(inflight_bytes)
        self.upload_disk_bytes = prom.Gauge("edgeseg_upload_disk_bytes", "Bytes of /v1/segment upload bodies held "
                                            "on disk (bounded by --max-upload-disk-bytes)", registry=self.registry)
        self.upload_disk_bytes.set_function(upload_disk_bytes)
        self.registry.register(_InferenceCounts(prom, models))

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST


class _InferenceCounts:
    """``edgeseg_inference_request_success`` / ``_failure`` by model, as Triton's
    ``nv_inference_request_success`` / ``_failure``: read from each model's statistics."""

    def __init__(self, prom, models: Callable[[], dict]) -> None:
        self._families = require("prometheus_client.core", "serve", "the /metrics endpoint").CounterMetricFamily
        self._models = models

    def collect(self):
        success = self._families("edgeseg_inference_request_success", "Inference requests answered, by model "
                                 "(the statistics extension's success count)", labels=["model"])
        failure = self._families("edgeseg_inference_request_failure", "Inference requests accepted for the model "
                                 "that then failed or timed out (the statistics extension's fail count)",
                                 labels=["model"])
        for name, model in self._models().items():
            counts = model.stats.to_dict(name)["inference_stats"]
            success.add_metric([name], counts["success"]["count"])
            failure.add_metric([name], counts["fail"]["count"])
        return [success, failure]
