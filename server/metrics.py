"""Prometheus metrics of one app instance (its own registry, so tests can run many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("speechssl_requests_total", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("speechssl_request_seconds", "request latency", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("speechssl_batch_size", "requests per device batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.batch_audio = Counter("speechssl_batch_audio_seconds_total", "audio seconds processed",
                                   registry=self.registry)
        self.batch_time = Histogram("speechssl_batch_seconds", "device time per batch",
                                    buckets=LATENCY_BUCKETS, registry=self.registry)
        self.body_bytes = Counter("speechssl_request_body_bytes_total", "request body bytes received (counted "
                                  "while streaming, cut at the upload limit)", registry=self.registry)
        self.queue_depth = Gauge("speechssl_queue_depth", "requests waiting for the device", registry=self.registry)

    def observe_batch(self, size: int, audio_seconds: float, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_audio.inc(audio_seconds)
        self.batch_time.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
