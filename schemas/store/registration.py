"""Tasks entering the ledger: registration, the provider's task id attached later, and the
deliveries that waited for that id folded in.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from schemas.errors import TaskConflict, TaskNotFound
from schemas.fold import Fold
from schemas.ledger import Reader, SubmissionStatus
from schemas.states import Outcome, Snapshot, Source, State
from schemas.store.ingest import UNFOLDED, CoreSession
from schemas.store.locks import lock_task_ids, order_transitions
from schemas.store.queries import get
from schemas.store.rows import Task
from schemas.store.transactions import Database, UniqueRace
from schemas.tables import DELIVERY, TASK, TRANSITION

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


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
        "attention": None,
    }


async def register(db: Database, new: NewTask) -> Task:
    """Create a task in `submitted`, with its first poll due after the expected duration;
    given its provider id, the deliveries that came for that id before are folded in."""
    now = db.clock()
    row = new_task_row(new, now)
    try:
        async with db.write() as conn:
            await insert_task(conn, row, new.provider_task_id, now)
    except UniqueRace:
        raise TaskConflict(
            "another task already has this provider task id", provider=new.provider
        ) from None
    return await fold_in_waiting(db, row, new.provider_task_id)


async def insert_task(
    conn: AsyncConnection, row: dict[str, Any], provider_task_id: str | None, now: datetime
) -> None:
    """The task's row and its first transition, under the locks its writers take."""
    if provider_task_id is not None:
        await conn.run_sync(lock_task_ids, {provider_task_id})
    await conn.run_sync(order_transitions)
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


async def fold_in_waiting(db: Database, row: dict[str, Any], provider_task_id: str | None) -> Task:
    """The task just inserted as `row`, with the deliveries that came for its provider id
    before it was registered folded in (none to fold in: `row` as it is)."""
    if provider_task_id is None or not await _waiting(db, row, provider_task_id):
        return Task(**row)
    async with db.write() as conn:
        await _fold_in_waiting(db, conn, row["ref"], provider_task_id)
    return await get(db, row["ref"]) or Task(**row)


async def _waiting(db: Database, task: dict[str, Any], provider_task_id: str) -> bool:
    """Whether deliveries wait for this task's provider id (a read, no write lock)."""
    async with db.read() as conn:
        return bool(await conn.scalar(sa.select(_waiting_for(task, provider_task_id))))


async def attach(db: Database, ref: str, provider_task_id: str) -> Task:
    """Record the provider's task id (the user's word: an authority for it; the task's
    `updated_at` moves with it), then fold in the callbacks that arrived before it, in the
    same transaction."""
    try:
        async with db.write() as conn:
            await conn.run_sync(lock_task_ids, {provider_task_id})
            task = await _task_for_update(db, conn, ref)
            known = task["provider_task_id"]
            if known not in (None, provider_task_id):
                raise TaskConflict("the task already has another provider task id", task_ref=ref)
            if known is None:
                await conn.execute(
                    TASK.update()
                    .where(TASK.c.ref == ref)
                    .values(
                        provider_task_id=provider_task_id,
                        version=TASK.c.version + 1,
                        updated_at=db.clock(),
                    )
                )
            await _fold_in_waiting(db, conn, ref, provider_task_id)
    except UniqueRace:
        raise TaskConflict("another task already has this provider task id", task_ref=ref) from None
    row = await get(db, ref)
    assert row is not None
    return row


async def _task_for_update(db: Database, conn: AsyncConnection, ref: str) -> dict[str, Any]:
    query = sa.select(TASK).where(TASK.c.ref == ref)
    if db.locks_rows:
        query = query.with_for_update()
    row = (await conn.execute(query)).mappings().first()
    if row is None:
        raise TaskNotFound("no task has this ref", task_ref=ref)
    return dict(row)


async def _fold_in_waiting(
    db: Database, conn: AsyncConnection, ref: str, provider_task_id: str
) -> None:
    """Fold in what waited for this task's provider id, if anything did (one indexed
    probe each way; the fold itself runs only then)."""
    now = db.clock()
    task = await _task_for_update(db, conn, ref)
    if await conn.scalar(sa.select(_waiting_for(task, provider_task_id))):
        await conn.run_sync(_fold_in, ref, provider_task_id, now, db.readers)


def _fold_in(
    conn: sa.Connection,
    ref: str,
    provider_task_id: str,
    now: datetime,
    readers: Mapping[str, Reader],
) -> None:
    """Give the task its provider id and fold in what waited for it: the deliveries kept
    as unmatched for that id, and those held for the task."""
    task = dict(conn.execute(sa.select(TASK).where(TASK.c.ref == ref)).mappings().one())
    session = CoreSession(conn)
    early = session.unmatched({(task["provider"], provider_task_id)})
    fold = Fold([task], {}, now, held=session.held({ref}), unmatched=early, readers=readers)
    fold.attach(ref, provider_task_id)
    fold.finish()
    session.flush(fold.writes, fold.changed_tasks(), now)


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
            UNFOLDED,
            DELIVERY.c.outcome == Outcome.HELD.value,
        ),
    )
