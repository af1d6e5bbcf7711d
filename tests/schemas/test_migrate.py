"""Schema migrations: a database made at the first revision comes up to head with its rows."""

from __future__ import annotations

import sqlalchemy as sa

from schemas.database import create_engine
from schemas.migrate import current_revision, head_revision, upgrade
from schemas.tables import DELIVERY
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


async def test_unmatched_deliveries_are_found_by_their_partial_index(database_url: str) -> None:
    """Only deliveries without a task are in `ix_delivery_unmatched`, and the lookup uses it."""
    engine = create_engine(database_url)
    try:
        await upgrade(engine)
        query = (
            sa.select(DELIVERY.c.id)
            .where(DELIVERY.c.provider == "openai")
            .where(DELIVERY.c.provider_task_id == "video_1")
            .where(DELIVERY.c.task_ref.is_(None))
        )
        compiled = str(query.compile(engine.sync_engine, compile_kwargs={"literal_binds": True}))
        async with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                rows = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + compiled)
                plan = " ".join(str(row[-1]) for row in rows)
            else:
                await conn.exec_driver_sql("SET enable_seqscan = off")
                rows = await conn.exec_driver_sql("EXPLAIN " + compiled)
                plan = " ".join(str(row[0]) for row in rows)
        assert "ix_delivery_unmatched" in plan
    finally:
        await engine.dispose()
