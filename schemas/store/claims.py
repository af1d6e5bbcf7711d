"""The reconciler's leases: claiming due tasks, marking a claimed submission as it goes out,
giving them back, and what the due query costs and how far behind it is.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from schemas.ledger import SubmissionStatus
from schemas.store.rows import Claim
from schemas.store.transactions import Database
from schemas.tables import TASK

_CLAIM_COLUMNS = [TASK.c[field.name] for field in fields(Claim)]


async def claim_due(
    db: Database, owner: str, provider: str, limit: int, lease_seconds: float
) -> list[Claim]:
    """Lease up to `limit` of `provider`'s tasks whose poll is due, oldest due first.

    A submission claimed stays `pending`: only `mark_sending`, just before its request
    goes out, makes it `sending` (should this reconciler die, whoever takes the lease over
    sends the rest). The partial index on (provider, next_poll_at) holds only tasks with a
    poll scheduled, so the cost follows the due tasks, not the ledger's size.
    """
    now = db.clock()
    async with db.write() as conn:
        query = _due_query(provider, now, limit)
        if db.locks_rows:
            query = query.with_for_update(skip_locked=True)
        claims = [Claim(**row) for row in (await conn.execute(query)).mappings()]
        if claims:
            await conn.execute(
                TASK.update()
                .where(TASK.c.ref.in_([claim.ref for claim in claims]))
                .values(lease_owner=owner, lease_until=now + timedelta(seconds=lease_seconds))
            )
    return claims


async def mark_sending(db: Database, owner: str, ref: str) -> bool:
    """Mark the submission of `ref` `sending`, committed before its request goes out: from
    here on it is never sent a second time, should `owner` die before recording the answer.

    Only while `owner` still holds the task's lease and the submission is still `pending`;
    False otherwise (the lease has passed on, or the submission has moved on): then it
    must not be sent.
    """
    now = db.clock()
    async with db.write() as conn:
        result = await conn.execute(
            TASK.update()
            .where(TASK.c.ref == ref)
            .where(TASK.c.lease_owner == owner)
            .where(TASK.c.lease_until > now)
            .where(TASK.c.submission == SubmissionStatus.PENDING.value)
            .values(submission=SubmissionStatus.SENDING.value)
        )
    return int(result.rowcount) == 1


async def release(db: Database, owner: str) -> int:
    """Give back every lease `owner` still holds (a clean shutdown)."""
    async with db.write() as conn:
        result = await conn.execute(
            TASK.update()
            .where(TASK.c.lease_owner == owner)
            .values(lease_owner=None, lease_until=None)
        )
    return int(result.rowcount)


async def explain_due(db: Database, provider: str, limit: int) -> str:
    """The database's plan for the due-task query, for tests and operators."""
    query = _due_query(provider, db.clock(), limit)
    compiled = query.compile(db.engine.sync_engine, compile_kwargs={"literal_binds": True})
    prefix = "EXPLAIN QUERY PLAN " if db.engine.dialect.name == "sqlite" else "EXPLAIN "
    async with db.read() as conn:
        rows = await conn.exec_driver_sql(prefix + str(compiled))
        return "\n".join(" ".join(str(part) for part in row) for row in rows)


async def oldest_open_since(db: Database) -> datetime | None:
    """When the oldest task still waiting for a poll was created."""
    async with db.read() as conn:
        oldest = await conn.scalar(
            sa.select(sa.func.min(TASK.c.created_at)).where(TASK.c.next_poll_at.is_not(None))
        )
    return oldest if isinstance(oldest, datetime) else None


def _due_query(provider: str, now: datetime, limit: int) -> sa.Select[Any]:
    return (
        sa.select(*_CLAIM_COLUMNS)
        .where(TASK.c.provider == provider)
        .where(TASK.c.next_poll_at.is_not(None))
        .where(TASK.c.next_poll_at <= now)
        .where(sa.or_(TASK.c.lease_until.is_(None), TASK.c.lease_until < now))
        .order_by(TASK.c.next_poll_at)
        .limit(limit)
    )
