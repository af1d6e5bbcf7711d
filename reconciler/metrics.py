"""Prometheus metrics of the reconciler, on a registry of its own. Label values are in one
style, lowercase snake_case (`ok`, `rate_limited`): `label_value` makes one of a name."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

PASS_BUCKETS_SECONDS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0)
# Time left before a source expires when it was archived: from seconds to a day.
EXPIRY_BUCKETS_SECONDS = (1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 4 * 3600.0, 86_400.0)

_WORD_START = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def label_value(name: str) -> str:
    """A name (an error's class, an enum's member) as a label value: `RateLimited` and
    `RATE_LIMITED` are `rate_limited`, `ProviderUnavailable` is `provider_unavailable`."""
    words = _WORD_START.sub("_", name.strip()).replace("-", "_").replace(" ", "_")
    return re.sub(r"_+", "_", words).lower().strip("_")


class ReconcilerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.polls = Counter(
            "taskledger_polls_total",
            "Status polls, by provider and result.",
            ["provider", "result"],
            registry=self.registry,
        )
        self.submits = Counter(
            "taskledger_submits_total",
            "Submissions to providers, by provider and result.",
            ["provider", "result"],
            registry=self.registry,
        )
        self.recoveries = Counter(
            "taskledger_recoveries_total",
            "Tasks whose terminal state came from a poll, not a callback.",
            ["provider"],
            registry=self.registry,
        )
        self.conflicts = Counter(
            "taskledger_conflicts_total",
            "Polls that contradicted a callback.",
            ["provider"],
            registry=self.registry,
        )
        self.lost = Counter(
            "taskledger_lost_total",
            "Tasks given up as lost after their maximum age.",
            ["provider"],
            registry=self.registry,
        )
        self.oldest_open_seconds = Gauge(
            "taskledger_oldest_open_task_age_seconds",
            "Age of the oldest task still waiting for an answer.",
            registry=self.registry,
        )
        self.pass_seconds = Histogram(
            "taskledger_reconciler_pass_seconds",
            "Duration of one reconciler pass.",
            buckets=PASS_BUCKETS_SECONDS,
            registry=self.registry,
        )

        self._archive_metrics()

    def _archive_metrics(self) -> None:
        self.archive_queue = Gauge(
            "taskledger_archive_queue",
            "Outputs waiting to be archived.",
            registry=self.registry,
        )
        self.archive_bytes = Counter(
            "taskledger_archive_bytes_total",
            "Bytes copied into the archive, by provider.",
            ["provider"],
            registry=self.registry,
        )
        self.archive_seconds_left = Histogram(
            "taskledger_archive_seconds_before_expiry",
            "Seconds left before the source expired, when an output was archived.",
            ["provider"],
            buckets=EXPIRY_BUCKETS_SECONDS,
            registry=self.registry,
        )
        self.archive_attempts = Counter(
            "taskledger_archive_attempts_total",
            "Archiving attempts, by provider and result (archived, retry, failed, missed).",
            ["provider", "result"],
            registry=self.registry,
        )
        self.archive_failures = Counter(
            "taskledger_archive_failures_total",
            "Failed fetches of outputs, by provider and reason.",
            ["provider", "reason"],
            registry=self.registry,
        )
        self.archive_missed = Counter(
            "taskledger_archive_missed_total",
            "Outputs whose source expired before they could be archived.",
            ["provider"],
            registry=self.registry,
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)
