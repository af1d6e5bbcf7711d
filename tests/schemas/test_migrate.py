"""Schema migrations: a database made at the first revision comes up to head with its rows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.database import create_engine
from schemas.migrate import current_revision, head_revision, upgrade
from schemas.store.ingest import UNFOLDED
from schemas.store.queries import DeliveryFilter, taskless_query
from schemas.tables import DELIVERY, METADATA, TASK, UNFOLDED_OUTCOMES
from tests.conftest import FakeClock

DELIVERY_ROW = {
    "provider": "openai",
    "body": b"{}",
    "auth": "signature",
    "outcome": "unmatched",
    "duplicate_count": 0,
}


async def test_upgrade_from_the_first_revision_keeps_deliveries_and_is_at_head(
    database_url: str, clock: FakeClock
) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade(engine, "0001")
        async with engine.begin() as conn:
            await conn.execute(
                DELIVERY.insert(),
                [
                    {
                        **DELIVERY_ROW,
                        "delivery_key": f"msg_{i}",
                        "provider_task_id": f"video_{i}",
                        "received_at": clock(),
                        "last_seen_at": clock(),
                    }
                    for i in range(3)
                ],
            )
        await upgrade(engine)
        assert await current_revision(engine) == head_revision()
        async with engine.connect() as conn:
            count = await conn.scalar(sa.select(sa.func.count()).select_from(DELIVERY))
        assert count == 3
    finally:
        await engine.dispose()


async def _plan(engine: AsyncEngine, query: sa.Select[Any]) -> str:
    """The database's plan for `query` (PostgreSQL told to avoid a sequential scan, which
    it prefers on a table this small)."""
    compiled = str(query.compile(engine.sync_engine, compile_kwargs={"literal_binds": True}))
    async with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + compiled)
            return " ".join(str(row[-1]) for row in rows)
        await conn.exec_driver_sql("SET enable_seqscan = off")
        rows = await conn.exec_driver_sql("EXPLAIN " + compiled)
        return " ".join(str(row[0]) for row in rows)


def _uses_the_delivery_key(engine: AsyncEngine, plan: str) -> bool:
    if engine.dialect.name == "sqlite":  # a unique constraint's index has SQLite's own name
        return "delivery USING INDEX sqlite_autoindex_delivery" in plan
    return "uq_delivery_task_key" in plan


async def test_a_tasks_deliveries_and_the_unmatched_ones_are_found_by_the_unique_key(
    database_url: str,
) -> None:
    """The one unique index serves the lookups the two dropped indexes served."""
    engine = create_engine(database_url)
    try:
        await upgrade(engine)
        unmatched = (
            sa.select(DELIVERY.c.id)
            .where(DELIVERY.c.provider == "openai")
            .where(DELIVERY.c.provider_task_id == "video_1")
            .where(DELIVERY.c.task_ref.is_(None))
        )
        timeline = (
            sa.select(DELIVERY.c.id)
            .select_from(
                DELIVERY.join(
                    TASK,
                    sa.and_(
                        DELIVERY.c.provider == TASK.c.provider,
                        DELIVERY.c.provider_task_id == TASK.c.provider_task_id,
                    ),
                )
            )
            .where(TASK.c.ref == "tl_1", DELIVERY.c.task_ref == "tl_1")
        )
        plan = await _plan(engine, timeline)
        assert _uses_the_delivery_key(engine, plan), plan
        # The unmatched ones: by the unique key, or among the deliveries with no task
        # (`ix_delivery_taskless`, which an empty table's planner may find cheaper).
        plan = await _plan(engine, unmatched)
        assert _uses_the_delivery_key(engine, plan) or "ix_delivery_taskless" in plan, plan
    finally:
        await engine.dispose()


async def test_upgrade_to_one_delivery_key_drops_the_old_indexes_and_keys_by_task(
    database_url: str, clock: FakeClock
) -> None:
    """0003: deliveries stored under 0002 keep their rows and their duplicate protection;
    the same message key now may recur for another task, never for the same one."""
    engine = create_engine(database_url)
    try:
        await upgrade(engine, "0002")
        row = {**DELIVERY_ROW, "received_at": clock(), "last_seen_at": clock()}
        async with engine.begin() as conn:
            await conn.execute(
                DELIVERY.insert(), [{**row, "delivery_key": "msg_1", "provider_task_id": "video_1"}]
            )
        await upgrade(engine, "0003")
        async with engine.connect() as conn:
            indexes = await conn.run_sync(
                lambda sync: {i["name"] for i in sa.inspect(sync).get_indexes("delivery")}
            )
        assert not indexes & {"ix_delivery_task_ref", "ix_delivery_unmatched"}
        async with engine.begin() as conn:
            await conn.execute(
                DELIVERY.insert(), [{**row, "delivery_key": "msg_1", "provider_task_id": "video_2"}]
            )
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(
                    DELIVERY.insert(),
                    [{**row, "delivery_key": "msg_1", "provider_task_id": "video_1"}],
                )
        async with engine.connect() as conn:
            count = await conn.scalar(sa.select(sa.func.count()).select_from(DELIVERY))
        assert count == 2
    finally:
        await engine.dispose()


async def test_the_migrations_build_exactly_the_tables_the_code_declares(
    database_url: str,
) -> None:
    """No drift: what `upgrade` makes compares equal to `schemas.tables`."""
    engine = create_engine(database_url)
    try:
        await upgrade(engine)
        async with engine.connect() as conn:
            differences = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), METADATA)
            )
        assert differences == []
    finally:
        await engine.dispose()


async def test_the_deliveries_with_no_task_are_listed_from_their_own_index(
    database_url: str,
) -> None:
    """`GET /v1/deliveries` walks `ix_delivery_taskless` newest first: no sort, and never
    the whole delivery table. (With a `provider` filter SQLite's planner prefers the
    unique key's prefix, and sorts what it finds.)"""
    engine = create_engine(database_url)
    try:
        await upgrade(engine)
        after = (datetime(2026, 12, 1, tzinfo=UTC), 10)
        where = DeliveryFilter(outcome="unmatched")
        for query in (taskless_query(where, 51, None), taskless_query(where, 51, after)):
            plan = await _plan(engine, query)
            assert "ix_delivery_taskless" in plan, plan
            assert "TEMP B-TREE" not in plan, plan
            assert "Sort" not in plan, plan
    finally:
        await engine.dispose()


async def test_the_unfolded_deliveries_index_has_no_in_list_and_serves_its_queries(
    database_url: str,
) -> None:
    """Migration 0010: the partial index's condition is three comparisons (SQLite evaluates
    it for every delivery written, and an IN list costs an ephemeral table each time), and
    the held and unfolded deliveries of a task are still found through it."""
    engine = create_engine(database_url)
    try:
        await upgrade(engine)
        if engine.dialect.name == "sqlite":
            query = "SELECT sql FROM sqlite_master WHERE name = 'ix_delivery_unfolded'"
        else:
            query = "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_delivery_unfolded'"
        async with engine.connect() as conn:
            definition = str((await conn.exec_driver_sql(query)).scalar_one())
        assert " IN (" not in definition.upper()
        assert "ANY (" not in definition.upper()
        assert all(f"'{word}'" in definition for word in UNFOLDED_OUTCOMES)
        held = (
            sa.select(DELIVERY.c.id)
            .where(DELIVERY.c.task_ref == "tl_a", UNFOLDED, DELIVERY.c.outcome == "held")
            .order_by(DELIVERY.c.id)
        )
        assert "ix_delivery_unfolded" in await _plan(engine, held)
    finally:
        await engine.dispose()
