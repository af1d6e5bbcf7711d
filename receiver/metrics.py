"""Prometheus metrics of the receiver, on a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ReceiverMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.deliveries = Counter(
            "taskledger_deliveries_total",
            "Callbacks stored, by provider and outcome.",
            ["provider", "outcome"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "taskledger_rejections_total",
            "Callbacks refused before storage, by provider and reason.",
            ["provider", "reason"],
            registry=self.registry,
        )
        self.unrecognized = Counter(
            "taskledger_unrecognized_deliveries_total",
            "Authenticated callbacks kept raw because their body could not be read.",
            ["provider", "reason"],
            registry=self.registry,
        )
        self.ingest_seconds = Histogram(
            "taskledger_ingest_seconds",
            "Time from request start to committed answer.",
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "taskledger_writer_batch_size",
            "Deliveries committed per transaction by the group-commit writer.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )

        self._delivered: dict[tuple[str, str], Counter] = {}

    def delivered(self, provider: str, outcome: str, seconds: float) -> None:
        """Count one stored delivery (label children are looked up once, then kept)."""
        child = self._delivered.get((provider, outcome))
        if child is None:
            child = self._delivered[provider, outcome] = self.deliveries.labels(provider, outcome)
        child.inc()
        self.ingest_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
