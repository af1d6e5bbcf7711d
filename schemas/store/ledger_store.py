"""`LedgerStore`: the ledger's one entry point, each method handed to the module of the
store that owns its concern (ingest, registration, queries, claims, refold, retention).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.clock import Clock
from schemas.database import sqlite_file
from schemas.ledger import Evidence, Reader, Stored
from schemas.retention import PruneReport, RetentionCutoffs
from schemas.store import (
    artifacts,
    claims,
    idempotency,
    ingest,
    keys,
    notifications,
    payloads,
    queries,
    refold,
    registration,
    retention,
)
from schemas.store.artifacts import Attempt, Claimed, OutputLimit
from schemas.store.idempotency import IdempotencyKey, StoredAnswer
from schemas.store.keys import ApiKey, KeyScope
from schemas.store.notifications import AttemptResult, DispatchJob, Endpoint
from schemas.store.queries import Cursor, DeliveryCursor, DeliveryFilter, TaskFilter
from schemas.store.registration import NewTask
from schemas.store.rows import ArchiveJob, Artifact, Claim, DeliveryEntry, PollEntry, Task, Timeline
from schemas.store.sqlite_ingest import LedgerWriter
from schemas.store.transactions import Database

POSTGRES_INGEST_WRITERS = 4


class LedgerStore:
    """The only way into the ledger: every read and write, each in its own transaction."""

    def __init__(
        self, engine: AsyncEngine, clock: Clock, readers: Mapping[str, Reader] | None = None
    ) -> None:
        self._db = Database(engine, clock, dict(readers or {}))
        file = sqlite_file(engine)
        self._sqlite = LedgerWriter(file, ingest.TASK_FIELDS) if file is not None else None

    @property
    def engine(self) -> AsyncEngine:
        return self._db.engine

    @property
    def clock(self) -> Clock:
        return self._db.clock

    @property
    def ingest_writers(self) -> int:
        """How many ingest batches are worth committing at once. SQLite takes one writer at
        a time; on PostgreSQL a batch mostly waits on round trips and its commit, which
        other batches can overlap (tasks are locked in ref order, keys in key order)."""
        return POSTGRES_INGEST_WRITERS if self._db.locks_rows else 1

    async def close(self) -> None:
        """Stop the SQLite writer thread, if any (the engine is the caller's to dispose)."""
        if self._sqlite is not None:
            await self._sqlite.close()

    # -- writes ----------------------------------------------------------------

    async def ingest(self, evidence: Sequence[Evidence]) -> list[Stored]:
        """Store and merge a batch in one transaction: `ingest.ingest`."""
        return await ingest.ingest(self._db, self._sqlite, evidence)

    async def register(self, new: NewTask) -> Task:
        """Create a task: `registration.register`."""
        return await registration.register(self._db, new)

    async def attach(self, ref: str, provider_task_id: str) -> Task:
        """Record a task's provider id and fold in what waited for it: `registration.attach`."""
        return await registration.attach(self._db, ref, provider_task_id)

    async def refold(
        self,
        *,
        provider: str | None = None,
        since: datetime | None = None,
        dry_run: bool = False,
        batch_size: int = 200,
    ) -> dict[str, int]:
        """Read `unrecognized` deliveries again and fold them in: `refold.refold`."""
        return await refold.refold(
            self._db, provider=provider, since=since, dry_run=dry_run, batch_size=batch_size
        )

    async def prune(
        self, cutoffs: RetentionCutoffs, *, batch_size: int = 500, dry_run: bool = False
    ) -> PruneReport:
        """Remove finished tasks' old evidence: `retention.prune`."""
        return await retention.prune(self._db, cutoffs, batch_size=batch_size, dry_run=dry_run)

    # -- claims (the reconciler) -----------------------------------------------

    async def claim_due(
        self, owner: str, provider: str, limit: int, lease_seconds: float
    ) -> list[Claim]:
        """Lease `provider`'s due tasks, oldest due first: `claims.claim_due`."""
        return await claims.claim_due(self._db, owner, provider, limit, lease_seconds)

    async def mark_sending(self, owner: str, ref: str) -> bool:
        """Mark a leased submission `sending` just before it goes: `claims.mark_sending`."""
        return await claims.mark_sending(self._db, owner, ref)

    async def release(self, owner: str) -> int:
        """Give back every lease `owner` still holds (a clean shutdown)."""
        return await claims.release(self._db, owner)

    async def explain_due(self, provider: str, limit: int) -> str:
        """The database's plan for the due-task query, for tests and operators."""
        return await claims.explain_due(self._db, provider, limit)

    async def oldest_open_since(self) -> datetime | None:
        """When the oldest task still waiting for a poll was created."""
        return await claims.oldest_open_since(self._db)

    # -- the archive -------------------------------------------------------------

    async def claim_artifacts(
        self, owner: str, limit: int, lease_seconds: float
    ) -> list[ArchiveJob]:
        """Lease pending artifacts, earliest expiry first: `artifacts.claim_due`."""
        return await artifacts.claim_due(self._db, owner, limit, lease_seconds)

    async def claim_archive(
        self, owner: str, limit: int, lease_seconds: float, outputs: OutputLimit | None
    ) -> Claimed:
        """Settle in bulk the outputs no fetch is for, then lease: `artifacts.claim`."""
        return await artifacts.claim(self._db, owner, limit, lease_seconds, outputs)

    async def record_attempt(self, artifact_id: int, owner: str, attempt: Attempt) -> bool:
        """What an archiving attempt came to: `artifacts.record`."""
        return await artifacts.record(self._db, artifact_id, owner, attempt)

    async def release_artifacts(self, owner: str) -> int:
        """Give back every artifact lease `owner` still holds."""
        return await artifacts.release(self._db, owner)

    async def artifacts(self, ref: str) -> list[Artifact]:
        """A task's outputs and what became of each."""
        return await artifacts.of_task(self._db, ref)

    async def artifacts_of(self, refs: list[str]) -> dict[str, list[Artifact]]:
        """Several tasks' outputs, by task, in one query."""
        return await artifacts.of_tasks(self._db, refs)

    async def archive_backlog(self) -> tuple[int, datetime | None]:
        """Artifacts waiting for the archiver, and the earliest of their expiries."""
        return await artifacts.backlog(self._db)

    async def prune_artifacts(
        self, before: datetime, limit: int = 500, *, dry_run: bool = False
    ) -> tuple[int, list[str]]:
        """Mark artifacts archived before `before` pruned: how many, and the storage keys
        to delete (`artifacts.prune`)."""
        return await artifacts.prune(self._db, before, limit, dry_run=dry_run)

    # -- notifications -----------------------------------------------------------

    async def create_endpoint(self, values: dict[str, Any]) -> Endpoint:
        return await notifications.create_endpoint(self._db, values)

    async def endpoint(self, endpoint_id: str) -> Endpoint | None:
        return await notifications.get_endpoint(self._db, endpoint_id)

    async def endpoints(self) -> list[Endpoint]:
        return await notifications.list_endpoints(self._db)

    async def update_endpoint(self, endpoint_id: str, changes: dict[str, Any]) -> Endpoint | None:
        """Change an endpoint: `notifications.update_endpoint`."""
        return await notifications.update_endpoint(self._db, endpoint_id, changes)

    async def delete_endpoint(self, endpoint_id: str) -> bool:
        return await notifications.delete_endpoint(self._db, endpoint_id)

    async def fan_out(self, limit: int) -> int:
        """New outbox messages into dispatches: `notifications.fan_out`."""
        return await notifications.fan_out(self._db, limit)

    async def claim_dispatches(
        self,
        owner: str,
        limit: int,
        lease_seconds: float,
        skip_endpoints: frozenset[str] = frozenset(),
    ) -> list[DispatchJob]:
        """Lease due dispatches: `notifications.claim_dispatches`."""
        return await notifications.claim_dispatches(
            self._db, owner, limit, lease_seconds, skip_endpoints
        )

    async def record_dispatch(
        self, job: DispatchJob, owner: str, result: AttemptResult, disable_after: timedelta
    ) -> bool:
        """One delivery attempt: `notifications.record_attempt`."""
        return await notifications.record_attempt(self._db, job, owner, result, disable_after)

    async def record_dispatches(
        self,
        owner: str,
        results: list[tuple[DispatchJob, AttemptResult]],
        disable_after: timedelta,
    ) -> int:
        """A batch of delivery attempts in one transaction: `notifications.record_attempts`."""
        return await notifications.record_attempts(self._db, owner, results, disable_after)

    async def release_dispatches(self, owner: str) -> int:
        return await notifications.release(self._db, owner)

    async def retry_message(self, msg_id: str) -> int | None:
        return await notifications.retry_message(self._db, msg_id)

    async def recover_endpoint(self, endpoint_id: str, since: datetime) -> int:
        return await notifications.recover(self._db, endpoint_id, since)

    async def outbox_backlog(self) -> tuple[int, datetime | None, int]:
        """Pending dispatches, the oldest one's age, messages not fanned out."""
        return await notifications.backlog(self._db)

    async def messages_of_task(self, ref: str) -> list[dict[str, Any]]:
        return await notifications.messages_of_task(self._db, ref)

    async def endpoint_health(self, endpoint_id: str) -> dict[str, Any]:
        return await notifications.endpoint_health(self._db, endpoint_id)

    # -- reads -----------------------------------------------------------------

    async def get(self, ref: str) -> Task | None:
        return await queries.get(self._db, ref)

    async def timeline(self, ref: str) -> Timeline:
        """A task's deliveries, polls and transitions, each in the order they happened."""
        return await queries.timeline(self._db, ref)

    async def summary(self) -> dict[str, Any]:
        """Ledger-wide counts: `queries.summary`."""
        return await queries.summary(self._db)

    async def list_tasks(
        self, where: TaskFilter, limit: int, after: Cursor | None = None
    ) -> tuple[list[Task], Cursor | None]:
        """One page of tasks and the cursor of the next: `queries.list_tasks`."""
        return await queries.list_tasks(self._db, where, limit, after)

    async def changes(self, after: int, limit: int) -> list[dict[str, Any]]:
        """Transitions after `after` in seq order, each with its task's current state."""
        return await queries.changes(self._db, after, limit)

    def pages(self, where: TaskFilter, page_size: int = 1000) -> AsyncIterator[list[Task]]:
        """Every task matching `where`, oldest first, a page at a time."""
        return queries.pages(self._db, where, page_size)

    async def audit(
        self, since: datetime | None, until: datetime | None, prices: Mapping[str, float | None]
    ) -> dict[str, Any]:
        """Per provider: outcomes, missed callbacks, duplicates, conflicts, timings, cost."""
        return await queries.audit(self._db, since, until, prices)

    async def taskless_deliveries(
        self, where: DeliveryFilter, limit: int, after: DeliveryCursor | None = None
    ) -> tuple[list[DeliveryEntry], DeliveryCursor | None]:
        """A page of the deliveries kept with no task, newest first."""
        return await queries.taskless_deliveries(self._db, where, limit, after)

    async def poll(self, ref: str, poll_id: int) -> PollEntry | None:
        """One kept poll of the task `ref`; None if the task has no such poll."""
        return await queries.poll(self._db, ref, poll_id)

    async def taskless_delivery(self, delivery_id: int) -> dict[str, Any] | None:
        """A delivery kept with no task, with its body; None if none has the id."""
        return await queries.taskless_delivery(self._db, delivery_id)

    async def final_states(self) -> list[tuple[str | None, str]]:
        """(provider task id, state) of every task: for audits against a provider's records."""
        return await queries.final_states(self._db)

    async def delivery(self, ref: str, delivery_id: int) -> dict[str, Any] | None:
        """A task's delivery as kept, body and headers included (admins' dashboard)."""
        return await payloads.delivery(self._db, ref, delivery_id)

    async def last_poll_errors(self) -> dict[str, PollEntry]:
        """By provider, the newest poll of its tasks that ended in an error."""
        return await payloads.last_poll_errors(self._db)

    async def ping(self) -> str | None:
        """The schema's migration revision, read in a read-only transaction."""
        return await queries.ping(self._db)

    # -- API keys ----------------------------------------------------------------

    async def create_key(
        self, key_id: str, name: str, secret_sha256: str, scope: KeyScope, owner: str | None
    ) -> ApiKey:
        """Keep a new key by its id and its secret's SHA-256: `keys.create`."""
        return await keys.create(self._db, key_id, name, secret_sha256, scope, owner)

    async def api_key(self, key_id: str) -> ApiKey | None:
        return await keys.get(self._db, key_id)

    async def api_keys(self) -> list[ApiKey]:
        """Every key, revoked ones too, oldest first."""
        return await keys.list_all(self._db)

    async def revoke_key(self, key_id: str) -> ApiKey | None:
        """Revoke a key (revoking it again changes nothing); None if unknown."""
        return await keys.revoke(self._db, key_id)

    async def touch_key(self, key_id: str) -> None:
        """Record that a key was just used."""
        await keys.touch(self._db, key_id)

    async def owner_changes(self, owner: str, after: int, limit: int) -> list[dict[str, Any]]:
        """`changes`, of one owner's tasks only."""
        return await queries.changes(self._db, after, limit, owner)

    async def owner_audit(
        self,
        owner: str,
        since: datetime | None,
        until: datetime | None,
        prices: Mapping[str, float | None],
    ) -> dict[str, Any]:
        """`audit`, of one owner's tasks only."""
        return await queries.audit(self._db, since, until, prices, owner)

    # -- idempotent registration ------------------------------------------------------

    async def idempotent_answer(self, key: IdempotencyKey) -> StoredAnswer | None:
        """The answer the first request with `key` got: `idempotency.answered`."""
        return await idempotency.answered(self._db, key)

    async def register_once(
        self, new: NewTask, key: IdempotencyKey, answer: Callable[[Task], tuple[int, bytes]]
    ) -> StoredAnswer:
        """Register a task and keep its answer under `key`: `idempotency.register_once`."""
        return await idempotency.register_once(self._db, new, key, answer)
