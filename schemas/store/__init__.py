"""The ledger store: the only place that speaks SQL or opens a transaction.

`LedgerStore.ingest` is the one write path of both processes: it stores deliveries and
polls, merges them into their tasks and appends transitions, all in one transaction.
"""

from schemas.store.artifacts import ArchivedFile, ArtifactState, Attempt
from schemas.store.backup import BackupReport, backup_sqlite, check_sqlite
from schemas.store.ingest import INGEST_ATTEMPTS, RACE_BACKOFF_SECONDS
from schemas.store.ledger_store import POSTGRES_INGEST_WRITERS, LedgerStore
from schemas.store.locks import FEED_LOCK_KEY, TASK_ID_LOCK_NAMESPACE
from schemas.store.notifications import AttemptResult, DispatchJob, DispatchState, Endpoint
from schemas.store.queries import Cursor, TaskFilter
from schemas.store.registration import NewTask, new_ref, new_task_row
from schemas.store.rows import (
    ArchiveJob,
    Artifact,
    Claim,
    DeliveryEntry,
    PollEntry,
    Task,
    Timeline,
    TransitionEntry,
)

__all__ = [
    "FEED_LOCK_KEY",
    "INGEST_ATTEMPTS",
    "POSTGRES_INGEST_WRITERS",
    "RACE_BACKOFF_SECONDS",
    "TASK_ID_LOCK_NAMESPACE",
    "ArchiveJob",
    "ArchivedFile",
    "Artifact",
    "ArtifactState",
    "Attempt",
    "AttemptResult",
    "BackupReport",
    "Claim",
    "Cursor",
    "DeliveryEntry",
    "DispatchJob",
    "DispatchState",
    "Endpoint",
    "LedgerStore",
    "NewTask",
    "PollEntry",
    "Task",
    "TaskFilter",
    "Timeline",
    "TransitionEntry",
    "backup_sqlite",
    "check_sqlite",
    "new_ref",
    "new_task_row",
]
