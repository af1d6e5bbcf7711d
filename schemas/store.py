"""The ledger store: the only place that speaks SQL or opens a transaction.

`ingest` is the one write path of both processes: it stores deliveries and polls,
merges them into their tasks and appends transitions, all in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import secrets
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schemas.audit import ProviderAudit, histogram, hour_buckets
from schemas.clock import Clock
from schemas.database import READ_ONLY, sqlite_file
from schemas.errors import (
    ConstraintViolation,
    LedgerError,
    StorageUnavailable,
    TaskConflict,
    TaskNotFound,
)
from schemas.fold import Fold, TaskWork, Writes, reread
from schemas.ledger import (
    Delivery,
    DeliveryId,
    Evidence,
    Reader,
    Stored,
    Submission,
    SubmissionStatus,
)
from schemas.retention import PruneReport, RetentionCutoffs
from schemas.states import REAL_TERMINAL, TERMINAL, Outcome, Snapshot, Source, State
from schemas.store_sqlite import (
    STORED_DELIVERIES,
    SqliteSession,
    SqliteWriter,
    UniqueRace,
    keys_json,
)
from schemas.tables import DELIVERY, OBSERVATION, TASK, TRANSITION, UNFOLDED_OUTCOMES
from schemas.write_deadline import WriteBusy, take_turn
from schemas.write_deadline import current as current_deadline

INGEST_ATTEMPTS = 3
FEED_LOCK_KEY = 0x7A5C_1ED6  # "taskledger" change feed, for pg_advisory_xact_lock
# The two-key advisory locks (a key space apart from the one-key feed lock): provider ids.
TASK_ID_LOCK_NAMESPACE = 0x7A5C_1D00
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
_SENDING = sa.literal(SubmissionStatus.SENDING.value)


@dataclass(frozen=True, slots=True)
class NewTask:
    provider: str
    owner: str = ""
    model: str = ""
    request: dict[str, Any] | None = None
    provider_task_id: str | None = None
    expected_seconds: float = 300.0
    submit: bool = False


def new_ref(now: datetime) -> str:
    """A sortable task ref: 48 bits of milliseconds, then 60 random bits, in Crockford base32."""
    value = (int(now.timestamp() * 1000) << 60) | secrets.randbits(60)
    chars = []
    for _ in range(22):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return "tl_" + "".join(reversed(chars))


POSTGRES_INGEST_WRITERS = 4


class LedgerStore:
    def __init__(
        self, engine: AsyncEngine, clock: Clock, readers: Mapping[str, Reader] | None = None
    ) -> None:
        self.engine = engine
        self.clock = clock
        # How each provider's deliveries are read, for reading stored ones again.
        self.readers = dict(readers or {})
        self.locks_rows = engine.dialect.name == "postgresql"
        file = sqlite_file(engine)
        self._sqlite = SqliteWriter(file) if file is not None else None

    @property
    def ingest_writers(self) -> int:
        """How many ingest batches are worth committing at once. SQLite takes one writer at
        a time; on PostgreSQL a batch mostly waits on round trips and its commit, which
        other batches can overlap (tasks are locked in ref order, keys in key order)."""
        return POSTGRES_INGEST_WRITERS if self.locks_rows else 1

    # -- the write path --------------------------------------------------------

    async def ingest(self, evidence: Sequence[Evidence]) -> list[Stored]:
        """Store and merge a batch in one transaction; a lost unique race retries the batch."""
        items = list(evidence)
        for attempt in range(1, INGEST_ATTEMPTS + 1):
            try:
                return await self._ingest_once(items, self.clock())
            except UniqueRace:
                if attempt == INGEST_ATTEMPTS:
                    # Not the database's health: something in this batch breaks a unique key.
                    raise ConstraintViolation("the batch broke a unique key on every try") from None
                await asyncio.sleep(0.005 * attempt)
        raise AssertionError("unreachable")

    async def _ingest_once(self, items: list[Evidence], now: datetime) -> list[Stored]:
        if self._sqlite is not None:
            return await self._sqlite.run(
                lambda conn: _ingest(SqliteSession(conn, _TASK_FIELDS), items, now, self.readers)
            )
        async with self._write() as conn:
            return await conn.run_sync(
                lambda sync: _ingest(_AlchemySession(self, sync), items, now, self.readers)
            )

    async def close(self) -> None:
        """Stop the SQLite writer thread, if any (the engine is the caller's to dispose)."""
        if self._sqlite is not None:
            await self._sqlite.close()

    def order_transitions(self, conn: sa.Connection) -> None:
        """Make `seq` order commit order, so a change feed reader never skips a late commit.

        PostgreSQL hands out sequence numbers at insert time, not at commit: without this,
        seq 11 could become visible before seq 10, and a reader at `after=11` would never
        see 10. Transactions that append transitions take this lock before writing anything
        (no lock-order cycle with row or unique-key waits) and hold it to commit. SQLite
        already runs one writer at a time.
        """
        if self.locks_rows:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": FEED_LOCK_KEY})

    def lock_task_ids(self, conn: sa.Connection, task_ids: set[str]) -> None:
        """Serialize, per provider task id, the writers that may meet over it on PostgreSQL:
        one keeping a delivery for an id no task has yet (unmatched), and one giving a task
        that id (the submit answer, `PATCH`, a registration). Without it each could miss
        the other's uncommitted row and leave the delivery unmatched for good. Taken before
        any row lock, in key order (no cycles); SQLite runs one writer at a time already."""
        if self.locks_rows and task_ids:
            conn.execute(_LOCK_TASK_IDS, {"ns": TASK_ID_LOCK_NAMESPACE, "keys": _id_keys(task_ids)})

    # -- registration ----------------------------------------------------------

    async def register(self, new: NewTask) -> dict[str, Any]:
        """Create a task in `submitted`, with its first poll due after the expected duration;
        given its provider id, the deliveries that came for that id before are folded in."""
        now = self.clock()
        row = new_task_row(new, now)
        try:
            async with self._write() as conn:
                if new.provider_task_id is not None:
                    await conn.run_sync(self.lock_task_ids, {new.provider_task_id})
                await conn.run_sync(self.order_transitions)
                await conn.execute(TASK.insert().values(row))
                await conn.execute(
                    TRANSITION.insert().values(
                        task_ref=row["ref"],
                        from_state=None,
                        to_state=State.SUBMITTED.value,
                        source=Source.API.value,
                        source_id=None,
                        at=now,
                    )
                )
        except UniqueRace:
            raise TaskConflict(
                "another task already has this provider task id", provider=new.provider
            ) from None
        if new.provider_task_id is None or not await self._waiting(row, new.provider_task_id):
            return row
        async with self._write() as conn:
            await self._fold_in_waiting(conn, row["ref"], new.provider_task_id, self.clock())
        found = await self.get(row["ref"])
        return found or row

    async def _waiting(self, task: dict[str, Any], provider_task_id: str) -> bool:
        """Whether deliveries wait for this task's provider id (a read, no write lock)."""
        async with self._read() as conn:
            return bool(await conn.scalar(sa.select(_waiting_for(task, provider_task_id))))

    async def attach(self, ref: str, provider_task_id: str) -> dict[str, Any]:
        """Record the provider's task id (the user's word: an authority for it), then fold in
        the callbacks that arrived before it, in the same transaction."""
        try:
            async with self._write() as conn:
                await conn.run_sync(self.lock_task_ids, {provider_task_id})
                task = await self._task_for_update(conn, ref)
                known = task["provider_task_id"]
                if known not in (None, provider_task_id):
                    raise TaskConflict(
                        "the task already has another provider task id", task_ref=ref
                    )
                if known is None:
                    await conn.execute(
                        TASK.update()
                        .where(TASK.c.ref == ref)
                        .values(provider_task_id=provider_task_id, version=TASK.c.version + 1)
                    )
                await self._fold_in_waiting(conn, ref, provider_task_id, self.clock())
        except UniqueRace:
            raise TaskConflict(
                "another task already has this provider task id", task_ref=ref
            ) from None
        row = await self.get(ref)
        assert row is not None
        return row

    async def _task_for_update(self, conn: AsyncConnection, ref: str) -> dict[str, Any]:
        query = sa.select(TASK).where(TASK.c.ref == ref)
        if self.locks_rows:
            query = query.with_for_update()
        row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise TaskNotFound("no task has this ref", task_ref=ref)
        return dict(row)

    async def _fold_in_waiting(
        self, conn: AsyncConnection, ref: str, provider_task_id: str, now: datetime
    ) -> None:
        """Fold in what waited for this task's provider id, if anything did (one indexed
        probe each way; the fold itself runs only then)."""
        task = await self._task_for_update(conn, ref)
        if await conn.scalar(sa.select(_waiting_for(task, provider_task_id))):
            await conn.run_sync(self._fold_in, ref, provider_task_id, now)

    def _fold_in(self, conn: sa.Connection, ref: str, provider_task_id: str, now: datetime) -> None:
        """Give the task its provider id and fold in what waited for it: the deliveries kept
        as unmatched for that id, and those held for the task."""
        task = dict(conn.execute(sa.select(TASK).where(TASK.c.ref == ref)).mappings().one())
        early = conn.execute(
            sa.select(DELIVERY)
            .where(DELIVERY.c.provider == task["provider"])
            .where(DELIVERY.c.provider_task_id == provider_task_id)
            .where(DELIVERY.c.task_ref.is_(None))
            .order_by(DELIVERY.c.id)
        )
        session = _AlchemySession(self, conn)
        held = session.held({ref})
        fold = Fold([task], {}, now, held=held, readers=self.readers)
        fold.attach(ref, provider_task_id)
        for row in early.mappings():
            fold.refold(dict(row))
        fold.finish()
        session.flush(fold.writes, fold.changed_tasks(), now)

    # -- refold ----------------------------------------------------------------

    async def refold(
        self,
        *,
        provider: str | None = None,
        since: datetime | None = None,
        dry_run: bool = False,
        batch_size: int = 200,
    ) -> dict[str, int]:
        """Read the deliveries kept as `unrecognized` again with the current code and fold
        in those it can now read, `batch_size` at a time, each batch one transaction.

        Idempotent: a delivery folded in is no longer `unrecognized`, so no transition is
        written twice however often it runs. A dry run decides the same and writes nothing.
        Returns how many deliveries went each way (by their new outcome), and `seen`.
        """
        counts: dict[str, int] = {"seen": 0}
        after = 0
        while True:
            rows = await self._unrecognized(provider, since, after, batch_size)
            if not rows:
                return counts
            after = rows[-1]["id"]
            outcomes = await self._refold_batch(rows, dry_run)
            counts["seen"] += len(rows)
            for outcome in outcomes:
                counts[outcome.value] = counts.get(outcome.value, 0) + 1

    async def _unrecognized(
        self, provider: str | None, since: datetime | None, after: int, limit: int
    ) -> list[dict[str, Any]]:
        query = (
            sa.select(DELIVERY)
            .where(DELIVERY.c.outcome == Outcome.UNRECOGNIZED.value, DELIVERY.c.id > after)
            .order_by(DELIVERY.c.id)
            .limit(limit)
        )
        if provider is not None:
            query = query.where(DELIVERY.c.provider == provider)
        if since is not None:
            query = query.where(DELIVERY.c.received_at >= since)
        async with self._read() as conn:
            return [dict(row) for row in (await conn.execute(query)).mappings()]

    async def _refold_batch(self, rows: list[dict[str, Any]], dry_run: bool) -> list[Outcome]:
        outcomes: list[Outcome] = []
        try:
            async with self._write() as conn:
                outcomes = await conn.run_sync(self._refold_sync, rows, self.clock())
                if dry_run:
                    raise _DryRun()
        except _DryRun:
            pass
        return outcomes

    def _refold_sync(
        self, conn: sa.Connection, rows: list[dict[str, Any]], now: datetime
    ) -> list[Outcome]:
        items = [reread(row, self.readers) for row in rows]
        session = _AlchemySession(self, conn)
        refs = {item.task_ref for item in items if item.task_ref is not None}
        pairs = {(i.provider, i.provider_task_id) for i in items if i.provider_task_id}
        tasks = session.tasks(refs, pairs)
        fold = Fold(
            tasks, session.deliveries({i.identity for i in items}), now, readers=self.readers
        )
        outcomes = [fold.refold(row) for row in rows]
        fold.finish()
        session.flush(fold.writes, fold.changed_tasks(), now)
        return outcomes

    # -- claims (the reconciler) ----------------------------------------------

    async def claim_due(
        self, owner: str, provider: str, limit: int, lease_seconds: float
    ) -> list[dict[str, Any]]:
        """Lease up to `limit` of `provider`'s tasks whose poll is due, oldest due first.

        The partial index on (provider, next_poll_at) holds only tasks with a poll
        scheduled, so the cost follows the due tasks, not the ledger's size.
        """
        now = self.clock()
        async with self._write() as conn:
            query = _due_query(provider, now, limit)
            if self.locks_rows:
                query = query.with_for_update(skip_locked=True)
            rows = [dict(r) for r in (await conn.execute(query)).mappings()]
            if rows:
                until = now + timedelta(seconds=lease_seconds)
                # A submission claimed is a submission being sent: should this reconciler die
                # before recording the answer, it is never sent a second time.
                sending = sa.case(
                    (TASK.c.submission == SubmissionStatus.PENDING.value, _SENDING),
                    else_=TASK.c.submission,
                )
                await conn.execute(
                    TASK.update()
                    .where(TASK.c.ref.in_([r["ref"] for r in rows]))
                    .values(lease_owner=owner, lease_until=until, submission=sending)
                )
        return rows

    async def release(self, owner: str) -> int:
        """Give back every lease `owner` still holds (a clean shutdown)."""
        async with self._write() as conn:
            result = await conn.execute(
                TASK.update()
                .where(TASK.c.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            )
        return int(result.rowcount)

    async def explain_due(self, provider: str, limit: int) -> str:
        """The database's plan for the due-task query, for tests and operators."""
        query = _due_query(provider, self.clock(), limit)
        compiled = query.compile(self.engine.sync_engine, compile_kwargs={"literal_binds": True})
        prefix = "EXPLAIN QUERY PLAN " if self.engine.dialect.name == "sqlite" else "EXPLAIN "
        async with self._read() as conn:
            rows = await conn.exec_driver_sql(prefix + str(compiled))
            return "\n".join(" ".join(str(part) for part in row) for row in rows)

    async def oldest_open_since(self) -> datetime | None:
        """When the oldest task still waiting for a poll was created."""
        async with self._read() as conn:
            oldest = await conn.scalar(
                sa.select(sa.func.min(TASK.c.created_at)).where(TASK.c.next_poll_at.is_not(None))
            )
        return oldest if isinstance(oldest, datetime) else None

    # -- reads -----------------------------------------------------------------

    async def get(self, ref: str) -> dict[str, Any] | None:
        async with self._read() as conn:
            row = (await conn.execute(sa.select(TASK).where(TASK.c.ref == ref))).mappings().first()
        return dict(row) if row else None

    async def timeline(self, ref: str) -> dict[str, list[dict[str, Any]]]:
        """A task's deliveries, polls and transitions, each in the order they happened."""
        columns = [c for c in DELIVERY.c if c.name != "body"]
        async with self._read() as conn:
            # Through the task: its provider id leads to its deliveries by the unique index;
            # those kept without being folded in are found by the small partial index.
            folded = await conn.execute(
                sa.select(*columns)
                .select_from(DELIVERY.join(TASK, _same_provider_task))
                .where(TASK.c.ref == ref, DELIVERY.c.task_ref == ref)
            )
            unfolded = await conn.execute(
                sa.select(*columns).where(DELIVERY.c.task_ref == ref, _UNFOLDED)
            )
            deliveries = {row["id"]: dict(row) for row in folded.mappings()}
            deliveries.update((row["id"], dict(row)) for row in unfolded.mappings())
            polls = await conn.execute(
                sa.select(OBSERVATION)
                .where(OBSERVATION.c.task_ref == ref)
                .order_by(OBSERVATION.c.id)
            )
            transitions = await conn.execute(
                sa.select(TRANSITION).where(TRANSITION.c.task_ref == ref).order_by(TRANSITION.c.seq)
            )
            return {
                "deliveries": [deliveries[key] for key in sorted(deliveries)],
                "polls": [dict(r) for r in polls.mappings()],
                "transitions": [dict(r) for r in transitions.mappings()],
            }

    async def summary(self) -> dict[str, Any]:
        """Ledger-wide counts: tasks by state, open, duplicates, conflicts, poll recoveries."""
        terminal = [s.value for s in REAL_TERMINAL]
        async with self._read() as conn:
            by_state = await conn.execute(
                sa.select(TASK.c.state, sa.func.count()).group_by(TASK.c.state)
            )
            states = {state: int(n) for state, n in by_state}
            open_tasks = await conn.scalar(
                sa.select(sa.func.count()).where(TASK.c.next_poll_at.is_not(None))
            )
            duplicates = await conn.scalar(sa.select(sa.func.sum(DELIVERY.c.duplicate_count)))
            conflicts = await conn.scalar(sa.select(sa.func.count()).where(TASK.c.conflict))
            recovered = await conn.scalar(
                sa.select(sa.func.count(sa.distinct(TRANSITION.c.task_ref)))
                .where(TRANSITION.c.source == Source.POLL.value)
                .where(TRANSITION.c.to_state.in_(terminal))
            )
        return {
            "tasks": sum(states.values()),
            "by_state": states,
            "open": int(open_tasks or 0),
            "duplicates": int(duplicates or 0),
            "conflicts": int(conflicts or 0),
            "recovered_by_poll": int(recovered or 0),
        }

    async def list_tasks(
        self, where: TaskFilter, limit: int, after: tuple[datetime, str] | None = None
    ) -> tuple[list[dict[str, Any]], tuple[datetime, str] | None]:
        """One page of tasks, newest first (oldest first for `stuck`), keyset-paginated."""
        query = sa.select(TASK).where(*_task_conditions(where)).limit(limit + 1)
        key = (TASK.c.created_at, TASK.c.ref)
        if where.stuck:
            query = query.order_by(*key)
            if after:
                query = query.where(sa.tuple_(*key) > after)
        else:
            query = query.order_by(*(column.desc() for column in key))
            if after:
                query = query.where(sa.tuple_(*key) < after)
        async with self._read() as conn:
            rows = [dict(r) for r in (await conn.execute(query)).mappings()]
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, ((rows[-1]["created_at"], rows[-1]["ref"]) if more else None)

    async def changes(self, after: int, limit: int) -> list[dict[str, Any]]:
        """Transitions after `after` in seq order, each with its task's current state."""
        query = (
            sa.select(
                TRANSITION,
                TASK.c.provider,
                TASK.c.provider_task_id,
                TASK.c.state.label("task_state"),
                TASK.c.result,
            )
            .join(TASK, TASK.c.ref == TRANSITION.c.task_ref)
            .where(TRANSITION.c.seq > after)
            .order_by(TRANSITION.c.seq)
            .limit(limit)
        )
        async with self._read() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings()]

    async def pages(
        self, where: TaskFilter, page_size: int = 1000
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Every task matching `where`, oldest first, a page (one short query) at a time."""
        after: tuple[datetime, str] | None = None
        key = (TASK.c.created_at, TASK.c.ref)
        while True:
            query = sa.select(TASK).where(*_task_conditions(where)).order_by(*key).limit(page_size)
            if after:
                query = query.where(sa.tuple_(*key) > after)
            async with self._read() as conn:
                rows = [dict(r) for r in (await conn.execute(query)).mappings()]
            if not rows:
                return
            yield rows
            after = (rows[-1]["created_at"], rows[-1]["ref"])

    async def audit(
        self, since: datetime | None, until: datetime | None, prices: Mapping[str, float | None]
    ) -> dict[str, Any]:
        """Per provider: outcomes, missed callbacks, duplicates, conflicts, timings, cost."""
        where = TaskFilter(since=since, until=until)
        audits: dict[str, ProviderAudit] = {}
        buckets: list[dict[str, Any]] = []
        async for rows in self.pages(where):
            for row in rows:
                audits.setdefault(row["provider"], ProviderAudit(row["provider"])).add(row)
            buckets += hour_buckets(rows)
        for provider, *counts in await self._delivery_counts(since, until):
            audit = audits.setdefault(provider, ProviderAudit(provider))
            audit.duplicates, audit.unmatched, audit.unrecognized, audit.ignored = counts
        ordered = [audits[name] for name in sorted(audits)]
        return {
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
            "providers": [a.summary(prices.get(a.provider)) for a in ordered],
            "buckets": _merge_buckets(buckets),
            "time_to_terminal_histogram": histogram(ordered),
        }

    async def _delivery_counts(
        self, since: datetime | None, until: datetime | None
    ) -> list[tuple[str, int, int, int, int]]:
        """(provider, duplicate, unmatched, unrecognized and ignored deliveries) received in
        the window."""
        window = []
        if since:
            window.append(DELIVERY.c.received_at >= since)
        if until:
            window.append(DELIVERY.c.received_at < until)
        query = (
            sa.select(
                DELIVERY.c.provider,
                sa.func.coalesce(sa.func.sum(DELIVERY.c.duplicate_count), 0),
                sa.func.count().filter(DELIVERY.c.task_ref.is_(None)),
                sa.func.count().filter(DELIVERY.c.outcome == Outcome.UNRECOGNIZED.value),
                sa.func.count().filter(DELIVERY.c.outcome == Outcome.IGNORED.value),
            )
            .where(*window)
            .group_by(DELIVERY.c.provider)
        )
        async with self._read() as conn:
            return [
                (p, int(d), int(u), int(r), int(i)) for p, d, u, r, i in await conn.execute(query)
            ]

    async def final_states(self) -> list[tuple[str | None, str]]:
        """(provider task id, state) of every task: for audits against a provider's records."""
        async with self._read() as conn:
            rows = await conn.execute(sa.select(TASK.c.provider_task_id, TASK.c.state))
            return [(task_id, state) for task_id, state in rows]

    async def ping(self) -> str | None:
        """The schema's migration revision, read in a read-only transaction: it answers at
        once while another connection holds SQLite's write lock."""
        async with self._read() as conn:
            return await conn.run_sync(_schema_revision)

    # -- retention -------------------------------------------------------------

    async def prune(
        self, cutoffs: RetentionCutoffs, *, batch_size: int = 500, dry_run: bool = False
    ) -> PruneReport:
        """Remove finished tasks' old evidence, `batch_size` rows per short write transaction.

        Deliveries last seen before `cutoffs.keys_before` go (unmatched ones too); younger
        ones of tasks finished before `cutoffs.bodies_before` keep their dedup key and
        counters but lose body and headers; their polls go. Open tasks' evidence, tasks
        and transitions are never touched. A dry run counts and changes nothing.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive (got {batch_size})")
        stages = _prune_stages(cutoffs)
        if dry_run:
            counts = [await self._count_prunable(stage) for stage in stages]
            batches = sum(math.ceil(count / batch_size) for count in counts)
        else:
            done = [await self._prune_stage(stage, batch_size) for stage in stages]
            counts = [count for count, _ in done]
            batches = sum(stage_batches for _, stage_batches in done)
        deleted, stripped, polls = counts
        return PruneReport(
            bodies_stripped=stripped,
            deliveries_deleted=deleted,
            observations_deleted=polls,
            batches=batches,
            dry_run=dry_run,
        )

    async def _prune_stage(self, stage: _PruneStage, batch_size: int) -> tuple[int, int]:
        """(rows changed, write transactions): ids are read without a lock, then written."""
        changed = batches = after = 0
        while True:
            ids = await self._prunable_ids(stage, after, batch_size)
            if not ids:
                break
            async with self._write() as conn:
                result = await conn.execute(stage.statement(ids))
            changed += int(result.rowcount)
            batches += 1
            after = ids[-1]
            if len(ids) < batch_size:
                break
        return changed, batches

    async def _prunable_ids(self, stage: _PruneStage, after: int, limit: int) -> list[int]:
        id_column = stage.table.c.id
        query = (
            sa.select(id_column)
            .where(id_column > after, stage.where)
            .order_by(id_column)
            .limit(limit)
        )
        async with self._read() as conn:
            return [int(row_id) for row_id in (await conn.scalars(query))]

    async def _count_prunable(self, stage: _PruneStage) -> int:
        query = sa.select(sa.func.count()).select_from(stage.table).where(stage.where)
        async with self._read() as conn:
            return int(await conn.scalar(query) or 0)

    # -- transactions ----------------------------------------------------------

    def _write(self) -> _Transaction:
        return _Transaction(self.engine, read_only=False)

    def _read(self) -> _Transaction:
        return _Transaction(self.engine, read_only=True)


class _DryRun(Exception):
    """Raised inside a write transaction to roll it back on purpose."""


class _Transaction:
    """`async with`: a connection in a transaction, with database errors made ours."""

    def __init__(self, engine: AsyncEngine, *, read_only: bool) -> None:
        self._engine = engine
        self._read_only = read_only
        self._conn: AsyncConnection | None = None
        self._file = None if read_only else sqlite_file(engine)
        self._held: asyncio.Lock | None = None

    async def __aenter__(self) -> AsyncConnection:
        """A write waits for its turn, a connection and BEGIN until the write deadline, if
        there is one (`schemas.write_deadline`), then raises `WriteBusy`."""
        until = None if self._read_only else current_deadline()
        if self._file is not None:  # SQLite writers of this process take turns
            gate = self._file.write_gate()
            await take_turn(gate, until)
            self._held = gate
        try:
            return await self._open(until)
        except BaseException:
            self._release()
            raise

    async def _open(self, until: float | None) -> AsyncConnection:
        conn = await self._connect(until)
        try:
            if self._read_only:
                conn = await conn.execution_options(**READ_ONLY)
            await self._begin(conn, until)
        except BaseException as exc:
            # Failed or cancelled mid-BEGIN: a BEGIN IMMEDIATE may hold SQLite's write lock,
            # and a connection left open would keep it from every other writer.
            await _discard(conn)
            await _close(conn)
            error = _not_begun(exc)
            if error is exc:
                raise
            raise error from exc
        self._conn = conn
        return conn

    async def _connect(self, until: float | None) -> AsyncConnection:
        try:
            async with asyncio.timeout_at(until):
                return await self._engine.connect()
        except TimeoutError as exc:
            if until is not None and asyncio.get_running_loop().time() >= until:
                raise WriteBusy("database unavailable: no connection before the deadline") from exc
            raise StorageUnavailable(f"database unavailable: {type(exc).__name__}") from exc
        except (SQLAlchemyError, OSError) as exc:
            raise StorageUnavailable(f"database unavailable: {type(exc).__name__}") from exc

    async def _begin(self, conn: AsyncConnection, until: float | None) -> None:
        """BEGIN; on SQLite its wait for the write lock ends at `until`, for which the
        connection's busy timeout is shortened meanwhile (SQLite waits in the driver's
        thread, where a cancellation could not stop it)."""
        if self._file is None or until is None:
            await conn.begin()
            return
        usual = self._file.busy_timeout_ms
        left = int((until - asyncio.get_running_loop().time()) * 1000)
        if left <= 0:
            raise WriteBusy("database unavailable: the write lock stayed busy")
        if left < usual:
            await conn.run_sync(_set_busy_timeout, left)
        await conn.begin()
        if left < usual:
            await conn.run_sync(_set_busy_timeout, usual)

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        assert self._conn is not None
        conn, self._conn = self._conn, None
        try:
            if exc is None:
                await conn.commit()
            else:
                await conn.rollback()
        except (SQLAlchemyError, OSError) as error:
            await _discard(conn)
            if exc is None:
                raise StorageUnavailable(f"commit failed: {type(error).__name__}") from error
        finally:
            try:
                await _close(conn)
            finally:  # even when cancelled while closing: other writers wait on the gate
                self._release()
        _translate(exc)

    def _release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.release()


def _not_begun(exc: BaseException) -> BaseException:
    """What a failed BEGIN is in the store's terms (`exc` itself when it is not the database's)."""
    if isinstance(exc, LedgerError):
        return exc
    if isinstance(exc, SQLAlchemyError) and _lock_busy(exc):
        return WriteBusy("database unavailable: the write lock stayed busy")
    if isinstance(exc, SQLAlchemyError | OSError):
        return StorageUnavailable(f"database unavailable: {type(exc).__name__}")
    return exc


def _lock_busy(exc: SQLAlchemyError) -> bool:
    code = getattr(getattr(exc, "orig", None), "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _set_busy_timeout(conn: sa.Connection, milliseconds: int) -> None:
    """Straight on the driver's connection: a statement through `conn` would begin."""
    cursor = conn.connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={int(milliseconds)}")
    finally:
        cursor.close()


def _schema_revision(conn: sa.Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _translate(exc: BaseException | None) -> None:
    if exc is None or isinstance(exc, LedgerError | UniqueRace):
        return
    if isinstance(exc, IntegrityError):
        raise UniqueRace() from exc
    if isinstance(exc, SQLAlchemyError | OSError):
        raise StorageUnavailable(f"database error: {type(exc).__name__}") from exc


async def _discard(conn: AsyncConnection) -> None:
    """Drop a connection whose state is unknown; it is broken already if this fails."""
    with contextlib.suppress(SQLAlchemyError, OSError):
        await conn.invalidate()


async def _close(conn: AsyncConnection) -> None:
    with contextlib.suppress(SQLAlchemyError, OSError):
        await conn.close()


def _delivery_id(row: dict[str, Any]) -> DeliveryId:
    return row["provider"], row["provider_task_id"], row["delivery_key"]


def _insert_returning_ids(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    statement = table.insert().returning(table.c.id, sort_by_parameter_order=True)
    params = [{k: v for k, v in row.items() if k != "id"} for row in rows]
    for row, (row_id,) in zip(rows, conn.execute(statement, params), strict=True):
        row["id"] = row_id


_TASK_FIELDS = (
    "submission",
    "attention",
    "provider_task_id",
    "state",
    "progress",
    "result",
    "state_source",
    "authority",
    "confirmed",
    "conflict",
    "recovered",
    "version",
    "updated_at",
    "last_event_at",
    "terminal_at",
    "next_poll_at",
    "poll_attempts",
    "lease_owner",
    "lease_until",
)
_UPDATE_TASK = (
    TASK.update()
    .where(TASK.c.ref == sa.bindparam("t_ref"))
    .values({name: sa.bindparam("t_" + name) for name in _TASK_FIELDS})
)
# The partial index's own condition, repeated so that both databases use it.
_UNFOLDED = DELIVERY.c.outcome.in_(UNFOLDED_OUTCOMES)


_LOCK_TASK_IDS = sa.text(
    "SELECT pg_advisory_xact_lock(:ns, k) FROM (SELECT unnest(CAST(:keys AS integer[])) AS k "
    "ORDER BY k) AS wanted"
)


def _id_keys(task_ids: set[str]) -> list[int]:
    """Each id as a 32-bit lock key, sorted and distinct (a collision only serializes)."""
    keys = {
        int.from_bytes(hashlib.blake2b(i.encode(), digest_size=4).digest(), "big", signed=True)
        for i in task_ids
    }
    return sorted(keys)


def _waiting_for(task: dict[str, Any], provider_task_id: str) -> sa.ColumnElement[bool]:
    """Deliveries kept for this provider id before a task had it, or held for the task."""
    return sa.or_(
        sa.exists().where(
            DELIVERY.c.provider == task["provider"],
            DELIVERY.c.provider_task_id == provider_task_id,
            DELIVERY.c.task_ref.is_(None),
        ),
        sa.exists().where(
            DELIVERY.c.task_ref == task["ref"],
            _UNFOLDED,
            DELIVERY.c.outcome == Outcome.HELD.value,
        ),
    )


def _delivery_updates(
    updates: list[dict[str, Any]],
) -> list[tuple[sa.Update, list[dict[str, Any]]]]:
    """Stored deliveries folded in again: one statement for each set of changed columns."""
    by_shape: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for change in updates:
        shape = tuple(sorted(name for name in change if name != "id"))
        by_shape.setdefault(shape, []).append(change)
    return [
        (
            DELIVERY.update()
            .where(DELIVERY.c.id == sa.bindparam("d_id"))
            .values({name: sa.bindparam("d_" + name) for name in shape}),
            [{"d_" + name: value for name, value in change.items()} for change in changes],
        )
        for shape, changes in by_shape.items()
    ]


_COUNT_DUPLICATE = (
    DELIVERY.update()
    .where(DELIVERY.c.provider == sa.bindparam("k_provider"))
    .where(DELIVERY.c.provider_task_id == sa.bindparam("k_task_id"))
    .where(DELIVERY.c.delivery_key == sa.bindparam("k_key"))
    .values(
        duplicate_count=DELIVERY.c.duplicate_count + sa.bindparam("k_count"),
        last_seen_at=sa.bindparam("k_now"),
    )
)


@dataclass(frozen=True, slots=True)
class TaskFilter:
    state: str | None = None
    provider: str | None = None
    owner: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    conflict: bool | None = None
    recovered: bool | None = None
    stuck: bool = False


def _task_conditions(where: TaskFilter) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = []
    for column, value in (
        (TASK.c.state, where.state),
        (TASK.c.provider, where.provider),
        (TASK.c.owner, where.owner),
        (TASK.c.conflict, where.conflict),
        (TASK.c.recovered, where.recovered),
    ):
        if value is not None:
            conditions.append(column == value)
    if where.since:
        conditions.append(TASK.c.created_at >= where.since)
    if where.until:
        conditions.append(TASK.c.created_at < where.until)
    if where.stuck:
        # Open tasks, and final ones an operator should look at (an end never confirmed).
        open_task = TASK.c.state.not_in([s.value for s in TERMINAL])
        conditions.append(sa.or_(open_task, TASK.c.attention.is_not(None)))
    return conditions


def _merge_buckets(buckets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pages may split one hour's counts; add them back together."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for bucket in buckets:
        key = (bucket["start"], bucket["provider"])
        if key in merged:
            for outcome in ("succeeded", "failed", "cancelled", "lost"):
                merged[key][outcome] += bucket[outcome]
        else:
            merged[key] = dict(bucket)
    return [merged[key] for key in sorted(merged)]


def _pair_in(
    conn: sa.Connection,
    first: sa.ColumnElement[Any],
    second: sa.ColumnElement[Any],
    pairs: set[tuple[str, str]],
) -> list[sa.ColumnElement[bool]]:
    """`first IN (...) AND second IN (...)`: both databases walk the two-column index.

    A row-value `(a, b) IN (VALUES ...)` reads the same, but SQLite answers it by
    scanning the whole table: ingest then slowed down as the ledger grew. The
    caller drops the few cross-product rows that are not among `pairs`.
    """
    return [
        _one_of(conn, first, {a for a, _ in pairs}),
        _one_of(conn, second, {b for _, b in pairs}),
    ]


def _one_of(
    conn: sa.Connection, column: sa.ColumnElement[Any], values: set[str]
) -> sa.ColumnElement[bool]:
    """`column IN (...)`; on PostgreSQL `column = ANY($1)`, one statement text whatever the
    number of values, so the server plans it once per connection rather than once for
    every batch size it meets."""
    if conn.dialect.name != "postgresql":
        return column.in_(values)
    array = sa.bindparam(None, sorted(values), type_=postgresql.ARRAY(sa.String()), unique=True)
    return column == sa.any_(array)


_same_provider_task = sa.and_(
    DELIVERY.c.provider == TASK.c.provider,
    DELIVERY.c.provider_task_id == TASK.c.provider_task_id,
)
_DELIVERY_SEEN = (
    DELIVERY.c.provider,
    DELIVERY.c.provider_task_id,
    DELIVERY.c.delivery_key,
    DELIVERY.c.task_ref,
    DELIVERY.c.state,
)


def _stored_deliveries(conn: sa.Connection, keys: set[DeliveryId]) -> sa.Executable:
    """The stored deliveries among `keys`, one index probe a key. On PostgreSQL the keys
    arrive as three arrays (one statement text for any number of them) and each row of
    their `unnest` probes the unique index; SQLite walks a JSON array of them."""
    if conn.dialect.name != "postgresql":
        return sa.text(STORED_DELIVERIES).bindparams(keys=keys_json(keys))
    columns = DELIVERY.c.provider, DELIVERY.c.provider_task_id, DELIVERY.c.delivery_key
    arrays = [
        sa.bindparam(None, list(values), type_=postgresql.ARRAY(sa.String()))
        for values in zip(*keys, strict=True)
    ]
    wanted = (
        sa.func.unnest(*arrays)
        .table_valued("provider", "provider_task_id", "delivery_key")
        .render_derived(name="wanted")
    )
    on = sa.and_(*(column == wanted.c[column.name] for column in columns))
    return sa.select(*_DELIVERY_SEEN).select_from(DELIVERY.join(wanted, on))


def _refs_of(conn: sa.Connection, pairs: set[tuple[str, str]]) -> set[str]:
    """The refs of the tasks known by (provider, provider task id)."""
    query = sa.select(TASK.c.ref, TASK.c.provider, TASK.c.provider_task_id).where(
        *_pair_in(conn, TASK.c.provider, TASK.c.provider_task_id, pairs)
    )
    return {ref for ref, provider, task_id in conn.execute(query) if (provider, task_id) in pairs}


def _due_query(provider: str, now: datetime, limit: int) -> sa.Select[Any]:
    return (
        sa.select(
            TASK.c.ref,
            TASK.c.provider,
            TASK.c.provider_task_id,
            TASK.c.state,
            TASK.c.confirmed,
            TASK.c.model,
            TASK.c.request,
            TASK.c.created_at,
            TASK.c.poll_attempts,
            TASK.c.submission,
            TASK.c.result,
            TASK.c.attention,
        )
        .where(TASK.c.provider == provider)
        .where(TASK.c.next_poll_at.is_not(None))
        .where(TASK.c.next_poll_at <= now)
        .where(sa.or_(TASK.c.lease_until.is_(None), TASK.c.lease_until < now))
        .order_by(TASK.c.next_poll_at)
        .limit(limit)
    )


def _task_params(row: dict[str, Any]) -> dict[str, Any]:
    params = {"t_" + name: row[name] for name in _TASK_FIELDS}
    params["t_ref"] = row["ref"]
    return params


def new_task_row(new: NewTask, now: datetime) -> dict[str, Any]:
    return {
        "ref": new_ref(now),
        "provider": new.provider,
        "provider_task_id": new.provider_task_id,
        "owner": new.owner,
        "model": new.model,
        "request": new.request,
        "state": State.SUBMITTED.value,
        "progress": 0,
        "result": None,
        "state_source": Source.API.value,
        "authority": Snapshot().authority,
        "confirmed": True,
        "conflict": False,
        "recovered": False,
        "version": 1,
        "created_at": now,
        "updated_at": now,
        "last_event_at": None,
        "terminal_at": None,
        "next_poll_at": now if new.submit else now + timedelta(seconds=new.expected_seconds),
        "poll_attempts": 0,
        "lease_owner": None,
        "lease_until": None,
        "submission": SubmissionStatus.PENDING.value if new.submit else None,
    }


# -- the ingest, on either session ---------------------------------------------


class _IngestSession(Protocol):
    """What an ingest asks of the database, inside its one transaction."""

    def tasks(
        self, refs: set[str], pairs: set[tuple[str, str]], *, lock: bool = True
    ) -> list[dict[str, Any]]: ...

    def deliveries(self, keys: set[DeliveryId]) -> dict[DeliveryId, dict[str, Any]]: ...

    def lock_ids(self, task_ids: set[str]) -> None: ...

    def held(self, refs: set[str]) -> dict[str, list[dict[str, Any]]]: ...

    def unmatched(
        self, pairs: set[tuple[str, str]]
    ) -> dict[tuple[str, str], list[dict[str, Any]]]: ...

    def flush(self, writes: Writes, tasks: list[TaskWork], now: datetime) -> None: ...


def _ingest(
    session: _IngestSession, items: list[Evidence], now: datetime, readers: Mapping[str, Reader]
) -> list[Stored]:
    """Load what the batch touches, fold it in memory, write every decision."""
    refs = {item.task_ref for item in items if item.task_ref is not None}
    pairs = {
        (item.provider, item.provider_task_id)
        for item in items
        if isinstance(item, Delivery) and item.task_ref is None and item.provider_task_id
    }
    keys = {item.identity for item in items if isinstance(item, Delivery)}
    session.lock_ids({task_id for _, task_id in pairs} | _answer_ids(items))
    # Tasks first, in ref order (one global lock order on PostgreSQL: no deadlocks).
    tasks = session.tasks(refs, pairs)
    submitted = {item.task_ref for item in items if isinstance(item, Submission)}
    held = session.held(submitted) if submitted else {}
    answered = _answered_ids(items, tasks)
    unmatched = session.unmatched(answered) if answered else {}
    proposed = _proposed_ids(items, tasks, held)
    if proposed:
        # Ids proposed to tasks without one: whoever holds them already must be known,
        # so that no id is adopted twice (read, not locked: they are not written).
        loaded = {row["ref"] for row in tasks}
        tasks += [
            row for row in session.tasks(set(), proposed, lock=False) if row["ref"] not in loaded
        ]
    fold = Fold(
        tasks, session.deliveries(keys), now, held=held, unmatched=unmatched, readers=readers
    )
    results = [fold.apply(item) for item in items]
    fold.finish()
    session.flush(fold.writes, fold.changed_tasks(), now)
    return results


def _answer_ids(items: list[Evidence]) -> set[str]:
    return {
        item.observation.provider_task_id
        for item in items
        if isinstance(item, Submission) and item.observation is not None
    }


def _answered_ids(items: list[Evidence], tasks: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(provider, id) pairs that submit answers give to tasks without an id yet: signed
    events may have come for them before the answer was recorded."""
    open_tasks = {row["ref"]: row["provider"] for row in tasks if row["provider_task_id"] is None}
    return {
        (open_tasks[item.task_ref], item.observation.provider_task_id)
        for item in items
        if isinstance(item, Submission)
        and item.observation is not None
        and item.task_ref in open_tasks
    }


def _proposed_ids(
    items: list[Evidence], tasks: list[dict[str, Any]], held: Mapping[str, list[dict[str, Any]]]
) -> set[tuple[str, str]]:
    """(provider, id) pairs that callbacks, submit answers or held deliveries propose to
    tasks that have no provider id yet."""
    open_tasks = {row["ref"]: row["provider"] for row in tasks if row["provider_task_id"] is None}
    proposed: set[tuple[str, str]] = set()
    for item in items:
        provider = open_tasks.get(item.task_ref or "")
        if provider is None:
            continue
        if isinstance(item, Delivery) and item.provider_task_id:
            proposed.add((provider, item.provider_task_id))
        elif isinstance(item, Submission) and item.observation is not None:
            proposed.add((provider, item.observation.provider_task_id))
    for ref, rows in held.items():
        if ref in open_tasks:
            proposed |= {(open_tasks[ref], row["provider_task_id"]) for row in rows}
    return proposed


class _AlchemySession:
    """The ingest's statements through SQLAlchemy Core (PostgreSQL, and replays)."""

    def __init__(self, store: LedgerStore, conn: sa.Connection) -> None:
        self._store = store
        self._conn = conn

    def tasks(
        self, refs: set[str], pairs: set[tuple[str, str]], *, lock: bool = True
    ) -> list[dict[str, Any]]:
        """The batch's tasks, locked in ref order on PostgreSQL (unless `lock` is false)."""
        if pairs:
            refs = refs | _refs_of(self._conn, pairs)
        if not refs:
            return []
        query = sa.select(TASK).where(_one_of(self._conn, TASK.c.ref, refs)).order_by(TASK.c.ref)
        if self._store.locks_rows and lock:
            query = query.with_for_update()
        return [dict(row) for row in self._conn.execute(query).mappings()]

    def lock_ids(self, task_ids: set[str]) -> None:
        self._store.lock_task_ids(self._conn, task_ids)

    def held(self, refs: set[str]) -> dict[str, list[dict[str, Any]]]:
        """The deliveries held for these tasks until their provider id is settled."""
        query = (
            sa.select(DELIVERY)
            .where(_one_of(self._conn, DELIVERY.c.task_ref, refs))
            .where(_UNFOLDED, DELIVERY.c.outcome == Outcome.HELD.value)
            .order_by(DELIVERY.c.id)
        )
        found: dict[str, list[dict[str, Any]]] = {}
        for row in self._conn.execute(query).mappings():
            found.setdefault(row["task_ref"], []).append(dict(row))
        return found

    def unmatched(self, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """Deliveries kept for these (provider, id) pairs before any task had the id."""
        found: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for provider, task_id in sorted(pairs):
            query = (
                sa.select(DELIVERY)
                .where(DELIVERY.c.provider == provider)
                .where(DELIVERY.c.provider_task_id == task_id)
                .where(DELIVERY.c.task_ref.is_(None))
                .order_by(DELIVERY.c.id)
            )
            rows = [dict(row) for row in self._conn.execute(query).mappings()]
            if rows:
                found[provider, task_id] = rows
        return found

    def deliveries(self, keys: set[DeliveryId]) -> dict[DeliveryId, dict[str, Any]]:
        if not keys:
            return {}
        rows = [
            dict(row) for row in self._conn.execute(_stored_deliveries(self._conn, keys)).mappings()
        ]
        return {_delivery_id(row): row for row in rows}

    def flush(self, writes: Writes, tasks: list[TaskWork], now: datetime) -> None:
        conn = self._conn
        if writes.transitions:
            self._store.order_transitions(conn)
        try:
            # Keys in key order: batches committing at once then wait on each other's new
            # or counted keys in one order, never in a cycle.
            _insert_returning_ids(conn, DELIVERY, sorted(writes.deliveries, key=_delivery_id))
            _insert_returning_ids(conn, OBSERVATION, writes.observations)
            for statement, params in _delivery_updates(writes.delivery_updates):
                conn.execute(statement, params)
            if writes.duplicates:
                conn.execute(
                    _COUNT_DUPLICATE,
                    [
                        {"k_provider": p, "k_task_id": t, "k_key": k, "k_count": n, "k_now": now}
                        for (p, t, k), n in sorted(writes.duplicates.items())
                    ],
                )
            if tasks:
                conn.execute(_UPDATE_TASK, [_task_params(work.row) for work in tasks])
            if writes.transitions:
                conn.execute(
                    TRANSITION.insert(),
                    [
                        {
                            "task_ref": t.task_ref,
                            "from_state": t.from_state,
                            "to_state": t.to_state,
                            "source": t.source,
                            "source_id": str(t.source_row["id"]) if t.source_row else None,
                            "at": t.at,
                        }
                        for t in writes.transitions
                    ],
                )
        except IntegrityError as exc:
            raise UniqueRace() from exc


# -- retention ----------------------------------------------------------------

_TERMINAL_STATES = sorted(state.value for state in TERMINAL)


@dataclass(frozen=True, slots=True)
class _PruneStage:
    """Rows of `table` matching `where` are deleted, or (`strip`) lose body and headers."""

    table: sa.Table
    where: sa.ColumnElement[bool]
    strip: bool = False

    def statement(self, ids: list[int]) -> sa.Update | sa.Delete:
        # The condition is checked again: a row may have changed since it was read.
        where = sa.and_(self.table.c.id.in_(ids), self.where)
        if self.strip:
            return self.table.update().where(where).values(body=b"", headers=sa.null())
        return self.table.delete().where(where)


def _prune_stages(cutoffs: RetentionCutoffs) -> tuple[_PruneStage, _PruneStage, _PruneStage]:
    """Delete old deliveries, then strip younger ones, then delete polls (in that order)."""
    keys_expired = sa.and_(
        DELIVERY.c.last_seen_at < cutoffs.keys_before,
        sa.or_(
            DELIVERY.c.task_ref.is_(None),
            _finished_before(DELIVERY.c.task_ref, cutoffs.keys_before),
        ),
    )
    body_expired = sa.and_(
        DELIVERY.c.last_seen_at < cutoffs.bodies_before,
        _finished_before(DELIVERY.c.task_ref, cutoffs.bodies_before),
        sa.or_(DELIVERY.c.body != b"", DELIVERY.c.headers.is_not(None)),
        sa.not_(keys_expired),
    )
    polls_expired = sa.and_(
        OBSERVATION.c.observed_at < cutoffs.bodies_before,
        _finished_before(OBSERVATION.c.task_ref, cutoffs.bodies_before),
    )
    return (
        _PruneStage(DELIVERY, keys_expired),
        _PruneStage(DELIVERY, body_expired, strip=True),
        _PruneStage(OBSERVATION, polls_expired),
    )


def _finished_before(task_ref: sa.Column[Any], cutoff: datetime) -> sa.ColumnElement[bool]:
    """The row's task reached a terminal state before `cutoff` and is still terminal."""
    return sa.exists().where(
        TASK.c.ref == task_ref,
        TASK.c.state.in_(_TERMINAL_STATES),
        TASK.c.terminal_at < cutoff,
    )


# -- backups (SQLite) ---------------------------------------------------------

_BACKUP_COUNTS = {
    "task": "SELECT count(*) FROM task",
    "delivery": "SELECT count(*) FROM delivery",
    "transition": "SELECT count(*) FROM transition",
}


@dataclass(frozen=True, slots=True)
class BackupReport:
    """A checked SQLite copy: `integrity_check`'s answer, foreign key faults, row counts."""

    path: Path
    integrity: str
    foreign_key_faults: int
    counts: dict[str, int]

    @property
    def ok(self) -> bool:
        return self.integrity == "ok" and self.foreign_key_faults == 0


def backup_sqlite(source: Path, target: Path) -> BackupReport:
    """Copy a live SQLite ledger to `target` as one consistent snapshot, then check the copy.

    Blocking: call it from a thread in async code. Under WAL the service keeps writing
    meanwhile. The copy is a single self-contained file (rollback journal mode); a copy
    that fails its check is left beside `target` as `*.partial` and reported.
    To restore: stop the service, replace the database file with the copy, delete any
    stale `-wal` and `-shm` files beside it, then start the service.
    """
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        _copy_sqlite(source, partial)
        report = check_sqlite(partial)
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise StorageUnavailable(f"backup failed: {exc}") from exc
    if not report.ok:
        raise StorageUnavailable(
            f"backup copy failed its check ({report.integrity}, "
            f"{report.foreign_key_faults} foreign key faults): left at {partial}"
        )
    partial.replace(target)
    return BackupReport(target, report.integrity, report.foreign_key_faults, report.counts)


def check_sqlite(path: Path) -> BackupReport:
    """`PRAGMA integrity_check`, `PRAGMA foreign_key_check` and row counts of a SQLite file."""
    try:
        with contextlib.closing(_open_sqlite(path, "ro")) as conn:
            integrity = "; ".join(str(row[0]) for row in conn.execute("PRAGMA integrity_check"))
            faults = len(conn.execute("PRAGMA foreign_key_check").fetchall())
            counts = {
                name: int(conn.execute(sql).fetchone()[0]) for name, sql in _BACKUP_COUNTS.items()
            }
    except sqlite3.Error as exc:
        raise StorageUnavailable(f"cannot check {path.name}: {exc}") from exc
    return BackupReport(path, integrity, faults, counts)


def _copy_sqlite(source: Path, target: Path) -> None:
    """One backup step (all pages): a single read snapshot, so a consistent copy."""
    with (
        contextlib.closing(_open_sqlite(source, "rw")) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")


def _open_sqlite(path: Path, mode: str) -> sqlite3.Connection:
    """Open an existing database file (`mode` "ro" or "rw"); never create one."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode={mode}", uri=True)
