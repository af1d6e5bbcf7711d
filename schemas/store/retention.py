"""Retention applied: finished tasks' old evidence removed or stripped in short batches,
by the cutoffs of `schemas.retention`'s policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from schemas.retention import PruneReport, RetentionCutoffs
from schemas.states import TERMINAL, Outcome
from schemas.store.transactions import Database
from schemas.tables import DELIVERY, IDEMPOTENCY, OBSERVATION, TASK

_TERMINAL_STATES = sorted(state.value for state in TERMINAL)
# A delivery kept `unrecognized` has not been read: its body is all there is of it, and
# `db refold` reads it again once a release understands it. Retention never takes it
# (neither its body nor its row) while it stays unread; once read, it goes as any other.
# That is bounded: only an authenticated callback no reader understood is kept so (a
# provider's new status word or shape, not its everyday traffic); each one is counted in
# `taskledger_unrecognized_deliveries_total` and `/v1/audit`, and the release that reads
# them, with `db refold`, hands them back to retention.
_UNREAD = DELIVERY.c.outcome == Outcome.UNRECOGNIZED.value


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


def _prune_stages(cutoffs: RetentionCutoffs) -> tuple[_PruneStage, ...]:
    """Delete old deliveries, then strip younger ones, then delete polls, then old
    idempotency keys (in that order)."""
    keys_expired = sa.and_(
        DELIVERY.c.last_seen_at < cutoffs.keys_before,
        sa.or_(
            DELIVERY.c.task_ref.is_(None),
            _finished_before(DELIVERY.c.task_ref, cutoffs.keys_before),
        ),
        sa.not_(_UNREAD),
    )
    body_expired = sa.and_(
        DELIVERY.c.last_seen_at < cutoffs.bodies_before,
        _finished_before(DELIVERY.c.task_ref, cutoffs.bodies_before),
        sa.or_(DELIVERY.c.body != b"", DELIVERY.c.headers.is_not(None)),
        sa.not_(_UNREAD),
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
        _PruneStage(IDEMPOTENCY, IDEMPOTENCY.c.created_at < cutoffs.keys_before),
    )


def _finished_before(task_ref: sa.Column[Any], cutoff: datetime) -> sa.ColumnElement[bool]:
    """The row's task reached a terminal state before `cutoff` and is still terminal."""
    return sa.exists().where(
        TASK.c.ref == task_ref,
        TASK.c.state.in_(_TERMINAL_STATES),
        TASK.c.terminal_at < cutoff,
    )


async def prune(
    db: Database, cutoffs: RetentionCutoffs, *, batch_size: int = 500, dry_run: bool = False
) -> PruneReport:
    """Remove finished tasks' old evidence, `batch_size` rows per short write transaction.

    Deliveries last seen before `cutoffs.keys_before` go (unmatched ones too); younger
    ones of tasks finished before `cutoffs.bodies_before` keep their dedup key and
    counters but lose body and headers; their polls go; so do idempotency keys made
    before `cutoffs.keys_before`. Open tasks' evidence, deliveries not read yet (kept
    `unrecognized`), tasks and transitions are never touched. A dry run counts and
    changes nothing.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive (got {batch_size})")
    stages = _prune_stages(cutoffs)
    if dry_run:
        counts = [await _count_prunable(db, stage) for stage in stages]
        batches = sum(math.ceil(count / batch_size) for count in counts)
    else:
        done = [await _prune_stage(db, stage, batch_size) for stage in stages]
        counts = [count for count, _ in done]
        batches = sum(stage_batches for _, stage_batches in done)
    deleted, stripped, polls, idempotency_keys = counts
    return PruneReport(
        bodies_stripped=stripped,
        deliveries_deleted=deleted,
        observations_deleted=polls,
        idempotency_keys_deleted=idempotency_keys,
        batches=batches,
        dry_run=dry_run,
    )


async def _prune_stage(db: Database, stage: _PruneStage, batch_size: int) -> tuple[int, int]:
    """(rows changed, write transactions): ids are read without a lock, then written."""
    changed = batches = after = 0
    while True:
        ids = await _prunable_ids(db, stage, after, batch_size)
        if not ids:
            break
        async with db.write() as conn:
            result = await conn.execute(stage.statement(ids))
        changed += int(result.rowcount)
        batches += 1
        after = ids[-1]
        if len(ids) < batch_size:
            break
    return changed, batches


async def _prunable_ids(db: Database, stage: _PruneStage, after: int, limit: int) -> list[int]:
    id_column = stage.table.c.id
    query = (
        sa.select(id_column).where(id_column > after, stage.where).order_by(id_column).limit(limit)
    )
    async with db.read() as conn:
        return [int(row_id) for row_id in (await conn.scalars(query))]


async def _count_prunable(db: Database, stage: _PruneStage) -> int:
    query = sa.select(sa.func.count()).select_from(stage.table).where(stage.where)
    async with db.read() as conn:
        return int(await conn.scalar(query) or 0)
