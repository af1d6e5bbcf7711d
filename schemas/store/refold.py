"""Deliveries kept as `unrecognized`, read again with the current code and folded in
where they can now be read.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from schemas.fold import Fold, reread
from schemas.ledger import Reader
from schemas.states import Outcome
from schemas.store.ingest import CoreSession
from schemas.store.transactions import Database, DryRun
from schemas.tables import DELIVERY


async def refold(
    db: Database,
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
        rows = await _unrecognized(db, provider, since, after, batch_size)
        if not rows:
            return counts
        after = rows[-1]["id"]
        outcomes = await _refold_batch(db, rows, dry_run)
        counts["seen"] += len(rows)
        for outcome in outcomes:
            counts[outcome.value] = counts.get(outcome.value, 0) + 1


async def _unrecognized(
    db: Database, provider: str | None, since: datetime | None, after: int, limit: int
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
    async with db.read() as conn:
        return [dict(row) for row in (await conn.execute(query)).mappings()]


async def _refold_batch(db: Database, rows: list[dict[str, Any]], dry_run: bool) -> list[Outcome]:
    outcomes: list[Outcome] = []
    try:
        async with db.write() as conn:
            outcomes = await conn.run_sync(_refold_sync, rows, db.clock(), db.readers)
            if dry_run:
                raise DryRun()
    except DryRun:
        pass
    return outcomes


def _refold_sync(
    conn: sa.Connection,
    rows: list[dict[str, Any]],
    now: datetime,
    readers: Mapping[str, Reader],
) -> list[Outcome]:
    items = [reread(row, readers) for row in rows]
    session = CoreSession(conn)
    refs = {item.task_ref for item in items if item.task_ref is not None}
    pairs = {(i.provider, i.provider_task_id) for i in items if i.provider_task_id}
    tasks = session.tasks(refs, pairs)
    fold = Fold(tasks, session.deliveries({i.identity for i in items}), now, readers=readers)
    outcomes = [fold.refold(row) for row in rows]
    fold.finish()
    session.flush(fold.writes, fold.changed_tasks(), now)
    return outcomes
