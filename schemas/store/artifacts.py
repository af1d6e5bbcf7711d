"""The archive's rows: leasing pending artifacts to archivers, recording what came of each,
and reading them back (a task's outputs, the queue, the audit's share, prunable files).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from schemas import events
from schemas.store.locks import id_keys, take_turns_settling
from schemas.store.outbox import message_id
from schemas.store.rows import ArchiveJob, Artifact
from schemas.store.transactions import Database
from schemas.tables import ARTIFACT, MESSAGE, REASON_MAX_CHARS, TASK

_ARTIFACT_COLUMNS = [ARTIFACT.c[f.name] for f in fields(Artifact)]
# Outputs settled at once without a fetch (expired, or past their task's limit): one short
# hold of the write lock settles this many, however many there are.
SETTLE_BATCH = 500
EXPIRED = "the source expired before it was archived"


class ArtifactState(StrEnum):
    PENDING = "pending"  # waiting for (or leased to) an archiver
    ARCHIVED = "archived"  # in the archive, verified
    FAILED = "failed"  # refused for good: not what it claimed, too big, a forbidden address
    MISSED = "missed"  # its source expired (or vanished) before it could be copied
    PRUNED = "pruned"  # archived, then removed past the archive's retention


@dataclass(frozen=True, slots=True)
class ArchivedFile:
    """Where an output went in the archive, and what it is."""

    storage_key: str
    size: int
    sha256: str
    content_type: str


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one archiving attempt came to. `state` PENDING with `retry_at`: try again then."""

    state: ArtifactState
    source_host: str | None = None
    stored: ArchivedFile | None = None
    error: str | None = None
    retry_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class OutputLimit:
    """How many of a task's outputs are archived (the first, in the order they were
    planned), and the reason recorded on each of the others."""

    count: int
    reason: str


@dataclass(frozen=True, slots=True)
class Settled:
    """Outputs of one task that a claim settled without fetching them, all in one state."""

    task_ref: str
    provider: str
    state: ArtifactState
    count: int


@dataclass(frozen=True, slots=True)
class Claimed:
    """What a claim leased, and what it settled on the way."""

    jobs: list[ArchiveJob]
    settled: list[Settled]


async def claim_due(db: Database, owner: str, limit: int, lease_seconds: float) -> list[ArchiveJob]:
    """Lease up to `limit` pending artifacts that are due, earliest expiry first (those whose
    source expired are settled `missed` on the way: `claim`)."""
    return (await claim(db, owner, limit, lease_seconds)).jobs


async def claim(
    db: Database,
    owner: str,
    limit: int,
    lease_seconds: float,
    outputs: OutputLimit | None = None,
) -> Claimed:
    """In one transaction, settle in bulk what no fetch is for, then lease up to `limit`
    due artifacts, earliest expiry first. Settled: up to `SETTLE_BATCH` whose source expired
    (`missed`) and, with `outputs`, up to as many past their task's limit (`failed`, with
    its reason), however many of them the claim meets."""
    now = db.clock()
    until = now + timedelta(seconds=lease_seconds)
    if not await _any_due(db, now):
        return Claimed([], [])  # an idle archiver never takes the write lock
    async with db.write() as conn:
        expired = await _expired(conn, now, db.locks_rows)
        due = (await conn.execute(_due(now, limit, db.locks_rows))).mappings().all()
        over: set[int] = set()
        refused: list[Any] = []
        if outputs is not None:
            candidates = [(row.id, row.task_ref) for row in expired]
            candidates += [(row["id"], row["task_ref"]) for row in due]
            over, refused = await _refuse_past(conn, outputs, candidates, now, db.locks_rows)
        missed = [row for row in expired if row.id not in over]
        await _miss(conn, [row.id for row in missed])
        leased = [row for row in due if row["id"] not in over]
        await _lease(conn, [row["id"] for row in leased], owner, until)
        refs = {row.task_ref for row in [*missed, *refused]}
        for task_ref in sorted(refs, key=lambda ref: id_keys({ref})):
            await _announce_if_settled(conn, task_ref, now)
    settled = _grouped(missed, ArtifactState.MISSED) + _grouped(refused, ArtifactState.FAILED)
    return Claimed([_job(row, owner, until) for row in leased], settled)


async def _any_due(db: Database, now: datetime) -> bool:
    """Whether any artifact is due (expired ones are), read without the write lock."""
    query = sa.select(ARTIFACT.c.id).where(_free(now), ARTIFACT.c.next_attempt_at <= now)
    async with db.read() as conn:
        return await conn.scalar(query.limit(1)) is not None


def _free(now: datetime) -> sa.ColumnElement[bool]:
    """Pending and leased to no one (or its lease lapsed)."""
    return sa.and_(
        ARTIFACT.c.state == ArtifactState.PENDING.value,
        sa.or_(ARTIFACT.c.lease_until.is_(None), ARTIFACT.c.lease_until < now),
    )


def _locked(query: sa.Select[Any], locks_rows: bool) -> sa.Select[Any]:
    """`query` locking the artifacts it reads, skipping those another claim holds."""
    return query.with_for_update(skip_locked=True, of=ARTIFACT) if locks_rows else query


async def _expired(conn: Any, now: datetime, locks_rows: bool) -> list[Any]:
    query = (
        sa.select(ARTIFACT.c.id, ARTIFACT.c.task_ref, ARTIFACT.c.provider)
        .where(_free(now), ARTIFACT.c.expires_at <= now)
        .order_by(ARTIFACT.c.expires_at, ARTIFACT.c.id)
        .limit(SETTLE_BATCH)
    )
    return list((await conn.execute(_locked(query, locks_rows))).all())


def _due(now: datetime, limit: int, locks_rows: bool) -> sa.Select[Any]:
    query = (
        sa.select(*_ARTIFACT_COLUMNS, TASK.c.provider_task_id, TASK.c.result)
        .select_from(ARTIFACT.join(TASK, TASK.c.ref == ARTIFACT.c.task_ref))
        .where(_free(now), ARTIFACT.c.next_attempt_at <= now, ARTIFACT.c.expires_at > now)
        .order_by(ARTIFACT.c.expires_at, ARTIFACT.c.id)
        .limit(limit)
    )
    return _locked(query, locks_rows)


async def _refuse_past(
    conn: Any,
    outputs: OutputLimit,
    candidates: list[tuple[int, str]],
    now: datetime,
    locks_rows: bool,
) -> tuple[set[int], list[Any]]:
    """The candidates (id, task) past their task's limit, to be neither leased nor missed,
    and up to `SETTLE_BATCH` of those tasks' free outputs past it, now `failed`."""
    last = await _last_kept(conn, {task_ref for _, task_ref in candidates}, outputs.count)
    if not last:
        return set(), []
    over = {id_ for id_, task_ref in candidates if id_ > last.get(task_ref, id_)}
    past = sa.or_(
        *[sa.and_(ARTIFACT.c.task_ref == ref, ARTIFACT.c.id > kept) for ref, kept in last.items()]
    )
    query = (
        sa.select(ARTIFACT.c.id, ARTIFACT.c.task_ref, ARTIFACT.c.provider)
        .where(_free(now), past)
        .order_by(ARTIFACT.c.id)
        .limit(SETTLE_BATCH)
    )
    refused = list((await conn.execute(_locked(query, locks_rows))).all())
    if refused:
        await conn.execute(
            ARTIFACT.update()
            .where(ARTIFACT.c.id.in_([row.id for row in refused]))
            .values(
                state=ArtifactState.FAILED.value,
                last_error=outputs.reason[:REASON_MAX_CHARS],
                lease_owner=None,
                lease_until=None,
            )
        )
    return over, refused


async def _last_kept(conn: Any, task_refs: set[str], count: int) -> dict[str, int]:
    """For each of the tasks with more than `count` outputs, the id of its `count`th."""
    if not task_refs:
        return {}
    rank = sa.func.row_number().over(partition_by=ARTIFACT.c.task_ref, order_by=ARTIFACT.c.id)
    ranked = (
        sa.select(ARTIFACT.c.task_ref, ARTIFACT.c.id, rank.label("rank"))
        .where(ARTIFACT.c.task_ref.in_(sorted(task_refs)))
        .subquery()
    )
    query = sa.select(ranked.c.task_ref, ranked.c.id).where(ranked.c.rank == count)
    return {ref: kept for ref, kept in (await conn.execute(query)).all()}


async def _miss(conn: Any, ids: list[int]) -> None:
    """`missed`, the last error kept after the reason (as `Attempt`s of the archiver have it)."""
    if not ids:
        return
    prior = ARTIFACT.c.last_error
    joined = sa.func.substr(sa.literal(f"{EXPIRED}: ") + prior, 1, REASON_MAX_CHARS)
    await conn.execute(
        ARTIFACT.update()
        .where(ARTIFACT.c.id.in_(ids))
        .values(
            state=ArtifactState.MISSED.value,
            attempts=ARTIFACT.c.attempts + 1,
            last_error=sa.case((prior.is_(None), EXPIRED), else_=joined),
            lease_owner=None,
            lease_until=None,
        )
    )


async def _lease(conn: Any, ids: list[int], owner: str, until: datetime) -> None:
    if ids:
        await conn.execute(
            ARTIFACT.update()
            .where(ARTIFACT.c.id.in_(ids))
            .values(lease_owner=owner, lease_until=until)
        )


def _grouped(rows: list[Any], state: ArtifactState) -> list[Settled]:
    counts = Counter((row.task_ref, row.provider) for row in rows)
    return [Settled(ref, provider, state, n) for (ref, provider), n in sorted(counts.items())]


def _job(row: Any, owner: str, lease_until: datetime) -> ArchiveJob:
    values = {f.name: row[f.name] for f in fields(Artifact)}
    values.update(lease_owner=owner, lease_until=lease_until)
    return ArchiveJob(Artifact(**values), row["provider_task_id"], row["result"])


async def record(db: Database, artifact_id: int, owner: str, attempt: Attempt) -> bool:
    """Write what an attempt came to, if `owner` still holds the lease (False: it lapsed
    and another archiver has the artifact now)."""
    values: dict[str, Any] = {
        "state": attempt.state.value,
        "attempts": ARTIFACT.c.attempts + 1,
        "lease_owner": None,
        "lease_until": None,
        "last_error": attempt.error[:REASON_MAX_CHARS] if attempt.error else None,
    }
    if attempt.source_host is not None:
        values["source_host"] = attempt.source_host[:255]
    if attempt.retry_at is not None:
        values["next_attempt_at"] = attempt.retry_at
    if attempt.stored is not None:
        stored = attempt.stored
        values.update(
            storage_key=stored.storage_key,
            size=stored.size,
            sha256=stored.sha256,
            content_type=stored.content_type[:100],
            archived_at=db.clock(),
        )
    async with db.write() as conn:
        result = await conn.execute(
            ARTIFACT.update()
            .where(ARTIFACT.c.id == artifact_id)
            .where(ARTIFACT.c.lease_owner == owner)
            .where(ARTIFACT.c.state == ArtifactState.PENDING.value)
            .values(**values)
            .returning(ARTIFACT.c.task_ref)
        )
        task_ref = result.scalar()
        if task_ref is not None and attempt.state is not ArtifactState.PENDING:
            await _announce_if_settled(conn, task_ref, db.clock())
    return task_ref is not None


async def _announce_if_settled(conn: Any, task_ref: str, now: datetime) -> None:
    """Once none of a task's outputs is pending and one was archived: `task.archived` in
    the outbox, in the transaction that settled the last one, with every output's fate
    (such transactions take turns: `take_turns_settling`; `claim` sorts its tasks by key)."""
    await take_turns_settling(conn, task_ref)
    if await _has(conn, task_ref, ArtifactState.PENDING):
        return
    if not await _has(conn, task_ref, ArtifactState.ARCHIVED):
        return
    query = sa.select(*_ARTIFACT_COLUMNS).where(ARTIFACT.c.task_ref == task_ref)
    rows = (await conn.execute(query.order_by(ARTIFACT.c.id))).mappings().all()
    task = (await conn.execute(sa.select(TASK).where(TASK.c.ref == task_ref))).mappings().one()
    data = events.task_data(task) | {"seq": None, "artifacts": [_shown(row) for row in rows]}
    payload = events.envelope(events.ARCHIVED, data, now)
    message = {
        "msg_id": message_id(),
        "task_ref": task_ref,
        "seq": None,
        "event_type": events.ARCHIVED,
        "payload": payload,
        "unconfirmed": False,
        "fanned_out": False,
        "created_at": now,
    }
    await conn.execute(MESSAGE.insert().values(**message))


async def _has(conn: Any, task_ref: str, state: ArtifactState) -> bool:
    """Whether one of the task's outputs is in `state` (read up to the first found)."""
    query = sa.select(ARTIFACT.c.id).where(ARTIFACT.c.task_ref == task_ref)
    return await conn.scalar(query.where(ARTIFACT.c.state == state.value).limit(1)) is not None


def _shown(row: Any) -> dict[str, Any]:
    """An output as events carry it (where it is served, not where it came from)."""
    names = ("name", "state", "content_type", "size", "sha256", "archived_at", "last_error")
    return {name: events.jsonable(row[name]) for name in names}


async def release(db: Database, owner: str) -> int:
    """Give back every artifact lease `owner` still holds (a clean shutdown)."""
    async with db.write() as conn:
        result = await conn.execute(
            ARTIFACT.update()
            .where(ARTIFACT.c.lease_owner == owner)
            .values(lease_owner=None, lease_until=None)
        )
    return int(result.rowcount)


async def of_task(db: Database, ref: str) -> list[Artifact]:
    """A task's outputs, in the order they were planned."""
    async with db.read() as conn:
        rows = await conn.execute(
            sa.select(*_ARTIFACT_COLUMNS).where(ARTIFACT.c.task_ref == ref).order_by(ARTIFACT.c.id)
        )
        return [Artifact(**row) for row in rows.mappings()]


async def of_tasks(db: Database, refs: list[str]) -> dict[str, list[Artifact]]:
    """Several tasks' outputs in one query, by task."""
    found: dict[str, list[Artifact]] = {}
    async with db.read() as conn:
        rows = await conn.execute(
            sa.select(*_ARTIFACT_COLUMNS)
            .where(ARTIFACT.c.task_ref.in_(refs))
            .order_by(ARTIFACT.c.task_ref, ARTIFACT.c.id)
        )
        for row in rows.mappings():
            found.setdefault(row["task_ref"], []).append(Artifact(**row))
    return found


async def backlog(db: Database) -> tuple[int, datetime | None]:
    """How many artifacts wait for the archiver, and the earliest of their expiries."""
    pending = ARTIFACT.c.state == ArtifactState.PENDING.value
    async with db.read() as conn:
        row = (
            await conn.execute(
                sa.select(sa.func.count(), sa.func.min(ARTIFACT.c.expires_at)).where(pending)
            )
        ).one()
    count, earliest = row
    return int(count), earliest if isinstance(earliest, datetime) else None


async def shares(
    db: Database, since: datetime | None, until: datetime | None, owner: str | None = None
) -> dict[str, Any]:
    """Per provider, the outputs of tasks created in the window (of `owner`'s tasks only,
    when given) by archive state, and how many were archived before their source expired."""
    window = [] if owner is None else [TASK.c.owner == owner]
    if since:
        window.append(TASK.c.created_at >= since)
    if until:
        window.append(TASK.c.created_at < until)
    in_time = sa.and_(
        ARTIFACT.c.archived_at.is_not(None), ARTIFACT.c.archived_at <= ARTIFACT.c.expires_at
    )
    query = (
        sa.select(
            ARTIFACT.c.provider,
            ARTIFACT.c.state,
            sa.func.count(),
            sa.func.count().filter(in_time),
            sa.func.coalesce(sa.func.sum(ARTIFACT.c.size), 0),
        )
        .select_from(ARTIFACT.join(TASK, TASK.c.ref == ARTIFACT.c.task_ref))
        .where(*window)
        .group_by(ARTIFACT.c.provider, ARTIFACT.c.state)
    )
    found: dict[str, dict[str, Any]] = {}
    async with db.read() as conn:
        for provider, state, count, before, size in await conn.execute(query):
            entry = found.setdefault(provider, _empty_share())
            entry[state] = entry.get(state, 0) + int(count)
            entry["archived_before_expiry"] += int(before)
            entry["bytes"] += int(size)
    for entry in found.values():
        total = sum(entry.get(state.value, 0) for state in ArtifactState)
        entry["outputs"] = total
        entry["share_archived_before_expiry"] = (
            round(entry["archived_before_expiry"] / total, 4) if total else None
        )
    return found


def _empty_share() -> dict[str, Any]:
    counts: dict[str, Any] = {state.value: 0 for state in ArtifactState}
    return counts | {"archived_before_expiry": 0, "bytes": 0}


async def prune(
    db: Database, before: datetime, limit: int = 500, *, dry_run: bool = False
) -> tuple[int, list[str]]:
    """Mark up to `limit` artifacts archived before `before` as pruned: how many, and the
    storage keys no archived artifact holds any more (content-addressed: equal outputs
    share one file), for the caller to delete. A dry run counts them all, and names the
    files a real run would delete (those no artifact archived since holds), changing
    nothing."""
    archived = ArtifactState.ARCHIVED.value
    old = sa.and_(ARTIFACT.c.state == archived, ARTIFACT.c.archived_at < before)
    if dry_run:
        holder = ARTIFACT.alias("holder")
        held_since = sa.exists().where(
            holder.c.storage_key == ARTIFACT.c.storage_key,
            holder.c.state == archived,
            sa.or_(holder.c.archived_at.is_(None), holder.c.archived_at >= before),
        )
        files = sa.select(ARTIFACT.c.storage_key).where(old, sa.not_(held_since)).distinct()
        async with db.read() as conn:
            count = int(await conn.scalar(sa.select(sa.func.count()).where(old)) or 0)
            unheld = [key for (key,) in await conn.execute(files) if key]
        return count, sorted(unheld)
    async with db.write() as conn:
        rows = (
            await conn.execute(
                sa.select(ARTIFACT.c.id, ARTIFACT.c.storage_key)
                .where(old)
                .order_by(ARTIFACT.c.id)
                .limit(limit)
            )
        ).all()
        if not rows:
            return 0, []
        await conn.execute(
            ARTIFACT.update()
            .where(ARTIFACT.c.id.in_([row.id for row in rows]))
            .values(state=ArtifactState.PRUNED.value)
        )
        keys = {row.storage_key for row in rows if row.storage_key}
        still = await conn.execute(
            sa.select(ARTIFACT.c.storage_key)
            .where(ARTIFACT.c.storage_key.in_(keys))
            .where(ARTIFACT.c.state == ArtifactState.ARCHIVED.value)
        )
        return len(rows), sorted(keys - {key for (key,) in still})
