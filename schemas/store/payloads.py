"""What the dashboard shows an admin beyond the timeline: one delivery as kept (its body
and headers), and each provider's newest failed poll."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from schemas.store.rows import PollEntry
from schemas.store.transactions import Database
from schemas.tables import DELIVERY, OBSERVATION, TASK


async def delivery(db: Database, ref: str, delivery_id: int) -> dict[str, Any] | None:
    """A task's delivery as kept, its body (bytes) and headers included."""
    async with db.read() as conn:
        row = (
            (
                await conn.execute(
                    sa.select(DELIVERY).where(
                        DELIVERY.c.id == delivery_id, DELIVERY.c.task_ref == ref
                    )
                )
            )
            .mappings()
            .first()
        )
    return dict(row) if row else None


async def last_poll_errors(db: Database) -> dict[str, PollEntry]:
    """By provider, the newest poll of its tasks that ended in an error."""
    newest = (
        sa.select(sa.func.max(OBSERVATION.c.id))
        .select_from(OBSERVATION.join(TASK, TASK.c.ref == OBSERVATION.c.task_ref))
        .where(OBSERVATION.c.error.is_not(None))
        .group_by(TASK.c.provider)
    )
    query = (
        sa.select(TASK.c.provider, OBSERVATION)
        .select_from(OBSERVATION.join(TASK, TASK.c.ref == OBSERVATION.c.task_ref))
        .where(OBSERVATION.c.id.in_(newest))
    )
    async with db.read() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return {
        row["provider"]: PollEntry(**{k: v for k, v in row.items() if k != "provider"})
        for row in rows
    }
