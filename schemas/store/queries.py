"""The ledger's reads: a task, its timeline, pages of tasks, the change feed, the audit,
the ledger-wide counts and the deliveries that belong to no task, each in a read-only
transaction.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncConnection

from schemas.audit import ProviderAudit, histogram, hour_buckets
from schemas.fold import POLL_FLAGS
from schemas.states import REAL_TERMINAL, TERMINAL, Outcome, Source
from schemas.store import artifacts
from schemas.store.ingest import UNFOLDED
from schemas.store.locks import FEED_HORIZON, FEED_LOCK_KEY
from schemas.store.rows import (
    Artifact,
    DeliveryEntry,
    PollEntry,
    Task,
    Timeline,
    TransitionEntry,
)
from schemas.store.transactions import Database
from schemas.tables import ARTIFACT, DELIVERY, OBSERVATION, TASK, TRANSITION

Cursor = tuple[datetime, str]  # (created_at, ref) of the last task of a page
DeliveryCursor = tuple[datetime, int]  # (received_at, id) of the last delivery of a page
# What a delivery kept with no task can have become: no task has its provider id yet
# (`unmatched`), its body could not be read or speaks of no task (`unrecognized`,
# `ignored`), or, read again (`refold`), it turned out to repeat one already stored.
TASKLESS_OUTCOMES = tuple(
    outcome.value
    for outcome in (Outcome.UNMATCHED, Outcome.UNRECOGNIZED, Outcome.IGNORED, Outcome.DUPLICATE)
)
_same_provider_task = sa.and_(
    DELIVERY.c.provider == TASK.c.provider,
    DELIVERY.c.provider_task_id == TASK.c.provider_task_id,
)
_TIMELINE_DELIVERY = [c for c in DELIVERY.c if c.name != "body"]
# A task's timeline shows the newest this many of its deliveries, polls and transitions.
TIMELINE_MAX = 500


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


@dataclass(frozen=True, slots=True)
class DeliveryFilter:
    """Which deliveries with no task to list: `since` and `until` bound `received_at`."""

    provider: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None


async def get(db: Database, ref: str) -> Task | None:
    async with db.read() as conn:
        row = (await conn.execute(sa.select(TASK).where(TASK.c.ref == ref))).mappings().first()
    return Task(**row) if row else None


async def timeline(db: Database, ref: str) -> Timeline:
    """A task's deliveries, polls and transitions, each in the order they happened: the
    newest `TIMELINE_MAX` of each. A provider that calls back without end (or a sender
    holding the task's callback URL) must not make one task's page unbounded."""
    async with db.read() as conn:
        # Through the task: its provider id leads to its deliveries by the unique index;
        # those kept without being folded in are found by the small partial index.
        ids = sa.union(
            sa.select(DELIVERY.c.id)
            .select_from(DELIVERY.join(TASK, _same_provider_task))
            .where(TASK.c.ref == ref, DELIVERY.c.task_ref == ref),
            sa.select(DELIVERY.c.id).where(DELIVERY.c.task_ref == ref, UNFOLDED),
        )
        deliveries, omitted_deliveries = await _newest(
            conn, sa.select(*_TIMELINE_DELIVERY).where(DELIVERY.c.id.in_(ids)), "id"
        )
        polls, omitted_polls = await _newest(
            conn, sa.select(OBSERVATION).where(OBSERVATION.c.task_ref == ref), "id"
        )
        transitions, omitted_transitions = await _newest(
            conn, sa.select(TRANSITION).where(TRANSITION.c.task_ref == ref), "seq"
        )
        outputs = await conn.execute(
            sa.select(ARTIFACT).where(ARTIFACT.c.task_ref == ref).order_by(ARTIFACT.c.id)
        )
        return Timeline(
            deliveries=[DeliveryEntry(**row) for row in deliveries],
            polls=[PollEntry(**row) for row in polls],
            transitions=[TransitionEntry(**row) for row in transitions],
            artifacts=[Artifact(**row) for row in outputs.mappings()],
            omitted={
                "deliveries": omitted_deliveries,
                "polls": omitted_polls,
                "transitions": omitted_transitions,
            },
        )


async def poll(db: Database, ref: str, poll_id: int) -> PollEntry | None:
    async with db.read() as conn:
        found = await conn.execute(
            sa.select(OBSERVATION).where(OBSERVATION.c.id == poll_id, OBSERVATION.c.task_ref == ref)
        )
        row = found.mappings().first()
        return None if row is None else PollEntry(**row)


async def _newest(
    conn: AsyncConnection, query: sa.Select[Any], key: str
) -> tuple[list[dict[str, Any]], int]:
    """The newest `TIMELINE_MAX` rows of `query` by its column `key`, oldest first, and how
    many older ones it has (counted only when there are any)."""
    rows = query.subquery()
    found = await conn.execute(sa.select(rows).order_by(rows.c[key].desc()).limit(TIMELINE_MAX + 1))
    newest = [dict(row) for row in found.mappings()]
    if len(newest) <= TIMELINE_MAX:
        return list(reversed(newest)), 0
    total = await conn.scalar(sa.select(sa.func.count()).select_from(rows))
    return list(reversed(newest[:TIMELINE_MAX])), int(total or 0) - TIMELINE_MAX


async def summary(db: Database) -> dict[str, Any]:
    """Ledger-wide counts: tasks by state, open, duplicates, conflicts, poll recoveries."""
    terminal = [s.value for s in REAL_TERMINAL]
    async with db.read() as conn:
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
    db: Database, where: TaskFilter, limit: int, after: Cursor | None = None
) -> tuple[list[Task], Cursor | None]:
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
    async with db.read() as conn:
        tasks = [Task(**row) for row in (await conn.execute(query)).mappings()]
    more = len(tasks) > limit
    tasks = tasks[:limit]
    return tasks, ((tasks[-1].created_at, tasks[-1].ref) if more else None)


async def taskless_deliveries(
    db: Database, where: DeliveryFilter, limit: int, after: DeliveryCursor | None = None
) -> tuple[list[DeliveryEntry], DeliveryCursor | None]:
    """One page of the deliveries kept with no task, newest received first, keyset-paginated
    like the tasks; without their bodies."""
    query = taskless_query(where, limit + 1, after)
    async with db.read() as conn:
        found = [DeliveryEntry(**row) for row in (await conn.execute(query)).mappings()]
    more = len(found) > limit
    found = found[:limit]
    return found, ((found[-1].received_at, found[-1].id) if more else None)


def taskless_query(
    where: DeliveryFilter, limit: int, after: DeliveryCursor | None
) -> sa.Select[Any]:
    """The statement of a page of `taskless_deliveries` (its own index walks it)."""
    key = (DELIVERY.c.received_at, DELIVERY.c.id)
    query = (
        sa.select(*_TIMELINE_DELIVERY)
        .where(*_taskless_conditions(where))
        .order_by(*(column.desc() for column in key))
        .limit(limit)
    )
    return query.where(sa.tuple_(*key) < after) if after else query


async def taskless_delivery(db: Database, delivery_id: int) -> dict[str, Any] | None:
    """A delivery kept with no task, its body (bytes) and headers included; None when no
    delivery has the id, or it belongs to a task."""
    query = sa.select(DELIVERY).where(DELIVERY.c.id == delivery_id, DELIVERY.c.task_ref.is_(None))
    async with db.read() as conn:
        row = (await conn.execute(query)).mappings().first()
    return dict(row) if row else None


def _taskless_conditions(where: DeliveryFilter) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = [DELIVERY.c.task_ref.is_(None)]
    if where.provider is not None:
        conditions.append(DELIVERY.c.provider == where.provider)
    if where.outcome is not None:
        conditions.append(DELIVERY.c.outcome == where.outcome)
    if where.since:
        conditions.append(DELIVERY.c.received_at >= where.since)
    if where.until:
        conditions.append(DELIVERY.c.received_at < where.until)
    return conditions


async def changes(
    db: Database, after: int, limit: int, owner: str | None = None
) -> list[dict[str, Any]]:
    """Transitions after `after` in seq order, each with its task's current state (of
    `owner`'s tasks only, when given). On PostgreSQL a page with rows is read again below
    the feed's horizon, so a later call never finds one it should have given already; an
    empty page (a long poll's usual answer) costs no lock."""
    mine = [] if owner is None else [TASK.c.owner == owner]
    rows = await _changes(db, after, limit, mine)
    if not rows or not db.locks_rows:
        return rows
    return await _changes(db, after, limit, [*mine, TRANSITION.c.seq <= await feed_horizon(db)])


async def _changes(
    db: Database, after: int, limit: int, where: list[sa.ColumnElement[bool]]
) -> list[dict[str, Any]]:
    query = (
        sa.select(
            TRANSITION,
            TASK.c.provider,
            TASK.c.provider_task_id,
            TASK.c.state.label("task_state"),
            TASK.c.result,
        )
        .join(TASK, TASK.c.ref == TRANSITION.c.task_ref)
        .where(TRANSITION.c.seq > after, *where)
        .order_by(TRANSITION.c.seq)
        .limit(limit)
    )
    async with db.read() as conn:
        return [dict(r) for r in (await conn.execute(query)).mappings()]


async def feed_horizon(db: Database) -> int:
    """The last `seq` at or below which every transaction has ended (PostgreSQL): taken
    under the feed lock held exclusively for one statement, which waits for the writers
    appending transitions now to end (`schemas.store.locks.order_transitions`)."""
    async with db.read() as conn:
        horizon = (await conn.execute(sa.text(FEED_HORIZON), {"key": FEED_LOCK_KEY})).scalar()
    return int(horizon or 0)


async def pages(
    db: Database, where: TaskFilter, page_size: int = 1000
) -> AsyncIterator[list[Task]]:
    """Every task matching `where`, oldest first, a page (one short query) at a time."""
    after: Cursor | None = None
    key = (TASK.c.created_at, TASK.c.ref)
    while True:
        query = sa.select(TASK).where(*_task_conditions(where)).order_by(*key).limit(page_size)
        if after:
            query = query.where(sa.tuple_(*key) > after)
        async with db.read() as conn:
            tasks = [Task(**row) for row in (await conn.execute(query)).mappings()]
        if not tasks:
            return
        yield tasks
        after = (tasks[-1].created_at, tasks[-1].ref)


async def audit(
    db: Database,
    since: datetime | None,
    until: datetime | None,
    prices: Mapping[str, float | None],
    owner: str | None = None,
) -> dict[str, Any]:
    """Per provider: outcomes, missed callbacks, duplicates, conflicts, timings, cost; with
    `owner`, of that owner's tasks only: their deliveries and outputs, and no unmatched
    delivery (it belongs to no task, so to no owner)."""
    audits: dict[str, ProviderAudit] = {}
    buckets: list[dict[str, Any]] = []
    async for tasks in pages(db, TaskFilter(since=since, until=until, owner=owner)):
        for task in tasks:
            audits.setdefault(task.provider, ProviderAudit(task.provider)).add(task)
        buckets += hour_buckets(tasks)
    for provider, *counts in await _delivery_counts(db, since, until, owner):
        found = audits.setdefault(provider, ProviderAudit(provider))
        found.duplicates, found.unmatched, found.unrecognized, found.ignored = counts
    ordered = [audits[name] for name in sorted(audits)]
    archive = await artifacts.shares(db, since, until, owner)
    return {
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "providers": [
            a.summary(prices.get(a.provider)) | {"archive": archive.get(a.provider)}
            for a in ordered
        ],
        "buckets": _merge_buckets(buckets),
        "time_to_terminal_histogram": histogram(ordered),
    }


async def _delivery_counts(
    db: Database, since: datetime | None, until: datetime | None, owner: str | None
) -> list[tuple[str, int, int, int, int]]:
    """(provider, duplicate, unmatched, unrecognized and ignored deliveries) received in
    the window; with `owner`, those of its tasks (so none unmatched)."""
    source: sa.FromClause = DELIVERY
    window = []
    if owner is not None:
        source = DELIVERY.join(TASK, TASK.c.ref == DELIVERY.c.task_ref)
        window.append(TASK.c.owner == owner)
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
        .select_from(source)
        .where(*window)
        .group_by(DELIVERY.c.provider)
    )
    async with db.read() as conn:
        return [(p, int(d), int(u), int(r), int(i)) for p, d, u, r, i in await conn.execute(query)]


async def final_states(db: Database) -> list[tuple[str | None, str]]:
    """(provider task id, state) of every task: for audits against a provider's records."""
    async with db.read() as conn:
        rows = await conn.execute(sa.select(TASK.c.provider_task_id, TASK.c.state))
        return [(task_id, state) for task_id, state in rows]


async def ping(db: Database) -> str | None:
    """The schema's migration revision, read in a read-only transaction: it answers at
    once while another connection holds SQLite's write lock."""
    async with db.read() as conn:
        return await conn.run_sync(_schema_revision)


def _schema_revision(conn: sa.Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


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
        conditions.append(_stuck())
    return conditions


def _stuck() -> sa.ColumnElement[bool]:
    """Open tasks, ends only an unsigned callback reported (never confirmed), and tasks
    flagged for attention, but for a polling flag on an end confirmed since."""
    open_task = TASK.c.state.not_in([s.value for s in TERMINAL])
    polling = sa.or_(*(TASK.c.attention.startswith(flag, autoescape=True) for flag in POLL_FLAGS))
    settled = sa.and_(polling, TASK.c.state.in_([s.value for s in REAL_TERMINAL]))
    flagged = sa.and_(TASK.c.attention.is_not(None), sa.not_(settled))
    return sa.or_(open_task, sa.not_(TASK.c.confirmed), flagged)


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
