"""How long the ledger keeps callback bodies, dedup keys and polls of finished tasks.

Pure policy: it turns "now" into cutoffs; the store applies them in bounded batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

RETENTION_DAYS = 30.0
# Providers retry a callback for up to a few days (Standard Webhooks: about 3);
# a dedup key kept a week outlives every retry, so a late resend stays a duplicate.
MIN_DEDUP_KEEP_DAYS = 7.0


@dataclass(frozen=True, slots=True)
class RetentionCutoffs:
    """Instants before which finished tasks' evidence goes.

    `bodies_before`: delivery bodies and headers are stripped, polls deleted.
    `keys_before`: delivery rows, dedup keys included, are deleted; so are the idempotency
    keys of registrations made before (kept a week at least, past the 24 h promised).
    """

    bodies_before: datetime
    keys_before: datetime


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Keep evidence `retention_days`, dedup keys at least `dedup_keep_days` (>= 7)."""

    retention_days: float = RETENTION_DAYS
    dedup_keep_days: float = MIN_DEDUP_KEEP_DAYS

    def __post_init__(self) -> None:
        if self.retention_days <= 0:
            raise ValueError(f"retention_days must be positive (got {self.retention_days})")
        if self.dedup_keep_days < MIN_DEDUP_KEEP_DAYS:
            raise ValueError(
                f"dedup_keep_days must be at least {MIN_DEDUP_KEEP_DAYS:g}"
                f" (got {self.dedup_keep_days})"
            )

    def cutoffs(self, now: datetime) -> RetentionCutoffs:
        keep_keys_days = max(self.retention_days, self.dedup_keep_days)
        return RetentionCutoffs(
            bodies_before=now - timedelta(days=self.retention_days),
            keys_before=now - timedelta(days=keep_keys_days),
        )


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What a prune removed (or, in a dry run, would remove), and in how many transactions."""

    bodies_stripped: int = 0
    deliveries_deleted: int = 0
    observations_deleted: int = 0
    batches: int = 0
    dry_run: bool = False
    # Archived outputs past TASKLEDGER_ARCHIVE_RETENTION_DAYS, and their files removed.
    artifacts_pruned: int = 0
    files_deleted: int = 0
    # Idempotency keys of registrations (and the answers kept with them).
    idempotency_keys_deleted: int = 0
