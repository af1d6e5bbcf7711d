"""Prometheus metrics of the relay, on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# From a change's commit to its delivery: tens of milliseconds when all is well, hours
# when an endpoint was down and its retries ran their schedule.
DELIVERY_BUCKETS_SECONDS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    5.0,
    30.0,
    300.0,
    3600.0,
    6 * 3600.0,
    86_400.0,
)
ATTEMPT_RESULTS = ("delivered", "retry", "failed", "gone")


class RelayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.pending = Gauge(
            "taskledger_notify_pending",
            "Dispatches waiting to be delivered (due now or at their next retry).",
            registry=self.registry,
        )
        self.oldest_pending_seconds = Gauge(
            "taskledger_notify_oldest_pending_seconds",
            "Age of the oldest dispatch still waiting to be delivered.",
            registry=self.registry,
        )
        self.attempts = Counter(
            "taskledger_notify_attempts_total",
            "Delivery attempts, by result (delivered, retry, failed, gone).",
            ["result"],
            registry=self.registry,
        )
        self.endpoints_disabled = Gauge(
            "taskledger_notify_endpoints_disabled",
            "Endpoints disabled (by a 410, failing too long, or an operator).",
            registry=self.registry,
        )
        self.delivery_seconds = Histogram(
            "taskledger_notify_delivery_seconds",
            "From a change's commit to its delivery to an endpoint.",
            buckets=DELIVERY_BUCKETS_SECONDS,
            registry=self.registry,
        )
        for result in ATTEMPT_RESULTS:
            self.attempts.labels(result)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)
