"""Prometheus metrics of the receiver, on a registry of its own (one per app). With several
workers (`uvicorn --workers N`), each writes its values to files in a directory they share,
`PROMETHEUS_MULTIPROC_DIR`, and `/metrics` on any of them shows the totals of all."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from schemas.settings import MULTIPROCESS_DIR_VARIABLE, given_multiprocess_dir

# prometheus_client's own variable, read when it is imported: set before the workers start
# (by `taskledger run`, or the environment), naming a directory that is empty then.

log = structlog.get_logger("taskledger.receiver")

LATENCY_BUCKETS_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ReceiverMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.registry = CollectorRegistry()
        self._multiprocess_dir = multiprocess_dir
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
        # The local spool (`receiver.spool`): what waits in it for PostgreSQL, and its flow.
        self.spool_depth = Gauge(
            "taskledger_spool_depth",
            "Callbacks kept in the local spool, waiting for the database.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.spool_bytes = Gauge(
            "taskledger_spool_bytes",
            "Bytes the spooled callbacks count against the spool's cap.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.spooled = Counter(
            "taskledger_spooled_total",
            "Callbacks kept in the local spool while the database could not take them.",
            ["provider"],
            registry=self.registry,
        )
        self.spool_drained = Counter(
            "taskledger_spool_drained_total",
            "Spooled callbacks replayed into the database, by outcome (or refusal).",
            ["outcome"],
            registry=self.registry,
        )
        self.spool_quarantined = Counter(
            "taskledger_spool_quarantined_total",
            "Spooled callbacks set aside in quarantine after failing to drain, by provider.",
            ["provider"],
            registry=self.registry,
        )
        # Every worker counts the same directory's files: the largest count is the count.
        self.spool_quarantine_depth = Gauge(
            "taskledger_spool_quarantine_depth",
            "Spooled callbacks in quarantine, waiting for an operator's replay.",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        # One per worker while it serves; a stopping worker takes itself out (`close`).
        self.workers = Gauge(
            "taskledger_receiver_workers",
            "Receiver worker processes serving.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.workers.set(1)

        self._delivered: dict[tuple[str, str], Counter] = {}
        self._exposed = self.registry
        if multiprocess_dir is not None:
            self._exposed = CollectorRegistry()
            self._exposed.register(_Workers(multiprocess_dir, self._names()))

    def delivered(self, provider: str, outcome: str, seconds: float) -> None:
        """Count one stored delivery (label children are looked up once, then kept)."""
        child = self._delivered.get((provider, outcome))
        if child is None:
            child = self._delivered[provider, outcome] = self.deliveries.labels(provider, outcome)
        child.inc()
        self.ingest_seconds.observe(seconds)

    def render(self) -> bytes:
        """The exposition: this process's values, or with several workers the totals of all."""
        return generate_latest(self._exposed)

    def close(self) -> None:
        """This worker stops: its live gauges leave the totals (counters and histograms stay,
        as what it counted still happened)."""
        if self._multiprocess_dir is not None:
            mark_process_dead(os.getpid(), self._multiprocess_dir)  # type: ignore[no-untyped-call]

    def _names(self) -> frozenset[str]:
        return frozenset(metric.name for metric in self.registry.collect())


class _Workers(Collector):
    """The receiver's metrics as summed over the files of every worker; values other
    processes left in the directory (a reconciler that was given it too) are not ours."""

    def __init__(self, path: str, names: frozenset[str]) -> None:
        self._path = path
        self._files = MultiProcessCollector(None, path)  # type: ignore[no-untyped-call]
        self._names = names

    def collect(self) -> Iterable[Metric]:
        self._forget_the_dead()
        found = self._files.collect()  # type: ignore[no-untyped-call]
        return [metric for metric in found if metric.name in self._names]

    def _forget_the_dead(self) -> None:
        """The live gauges of workers that ended without stopping (killed, or replaced by
        uvicorn after a missed health check) leave the totals too."""
        for file in Path(self._path).glob("gauge_live*_*.db"):
            pid = file.stem.rpartition("_")[2]
            if pid.isdigit() and not _alive(int(pid)):
                mark_process_dead(int(pid), self._path)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def multiprocess_dir(environ: Mapping[str, str]) -> str | None:
    """`PROMETHEUS_MULTIPROC_DIR` when set (`given_multiprocess_dir`). Several workers
    without it each count alone: said at start-up, as a warning."""
    path = given_multiprocess_dir(environ)
    if path is None and environ.get("WEB_CONCURRENCY", "1").strip() not in {"", "0", "1"}:
        log.warning(
            "metrics_of_one_worker",
            detail=f"several workers, no {MULTIPROCESS_DIR_VARIABLE}: /metrics shows"
            " the counts of whichever worker answers (`taskledger run` sets it)",
        )
    return path
