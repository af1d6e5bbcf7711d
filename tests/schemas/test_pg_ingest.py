"""PostgreSQL's asyncpg ingest session against the SQLAlchemy Core one it replaced on the
hot path: the same reads, the same rows written, column for column."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.database import create_engine
from schemas.ledger import Delivery, DeliveryId, Evidence, Stored
from schemas.migrate import upgrade
from schemas.states import State
from schemas.store.ingest import TASK_FIELDS, CoreSession, fold_batch, fold_batch_async
from schemas.store.pg_ingest import PgSession, _decode_json, _task_columns, _task_update
from schemas.store.transactions import driver_write
from schemas.tables import DELIVERY, MESSAGE, TASK
from tests.schemas.test_ingest_sessions import (
    HELD_FOR,
    KNOWN,
    NOW,
    READERS,
    batch,
    callback,
    in_session,
    loaded_shape,
    seeded,
    tables,
)
from tests.schemas.test_ingest_sessions import reads as core_reads
from tests.support.databases import PG_HOST, PG_PORT, PG_USER, migrated_engine, temporary_database

T = TypeVar("T")


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with migrated_engine("postgresql", tmp_path) as engine:
        yield engine


async def in_pg_session(
    engine: AsyncEngine,
    work: Callable[[PgSession], Awaitable[T]],
    keys: set[DeliveryId] | None = None,
) -> T:
    async with driver_write(engine) as conn:
        return await work(PgSession(conn, TASK_FIELDS, keys))


async def reads(session: PgSession) -> dict[str, Any]:
    """`test_ingest_sessions.reads`, awaited."""
    await session.lock_ids({"t-1", "early"})
    return {
        "tasks": await session.tasks({HELD_FOR}, {("apidot", "t-1"), ("apidot", "nobody")}),
        "proposed": await session.tasks(set(), {("apidot", "t-1")}, lock=False),
        "deliveries": await session.deliveries(
            {("apidot", "t-1", "k-1"), ("apidot", "t-1", "k-9")}
        ),
        "held": await session.held({HELD_FOR, KNOWN}),
        "unmatched": await session.unmatched({("apidot", "early"), ("apidot", "t-2")}),
    }


async def test_asyncpg_session_loads_what_the_core_session_loads(engine: AsyncEngine) -> None:
    await seeded(engine)
    found = await in_pg_session(engine, reads)
    assert loaded_shape(found) == loaded_shape(await in_session(engine, "core", core_reads))
    assert found["tasks"] == [
        {name: row[name] for name in found["tasks"][0]}
        for row in (await in_session(engine, "core", core_reads))["tasks"]
    ]


def _with_resends(items: list[Evidence]) -> list[Evidence]:
    """The batch, plus a new delivery sent twice in it and a stored one sent again: resends
    of a row the batch itself inserts are counted in that row."""
    fresh = callback(KNOWN, "k-3", "t-1", State.RUNNING)
    return [*items, fresh, fresh, callback(KNOWN, "k-1", "t-1", State.QUEUED)]


def _with_odd_values(items: list[Evidence]) -> list[Evidence]:
    """The batch, plus a delivery whose body is not text and whose headers need escaping in
    JSON: the rows travel to PostgreSQL as JSON, the bodies as bytes beside it."""
    odd = replace(
        callback(KNOWN, "k-4", "t-1", State.RUNNING),
        body=b'\x00\xff\xfe{"quote": "\\"", "nul": "\\u0000"}\n',
        headers={"content-type": "text/plain", "x-note": 'a "quote", a \\ and \u2028 \u2603'},
        received_at=NOW.replace(microsecond=123456),
    )
    return [*items, odd]


async def test_asyncpg_session_writes_what_core_writes(tmp_path: Path) -> None:
    """Column for column (ids, `seq`s and event ids aside: sequences and randomness)."""
    seen = []
    for kind in ("core", "asyncpg"):
        async with temporary_database("postgresql", tmp_path / kind) as url:
            engine = create_engine(url)
            try:
                await upgrade(engine)
                await seeded(engine)
                stored = await _ingest(engine, kind, _with_odd_values(_with_resends(batch())))
                seen.append((stored, _comparable(await tables(engine)), await _json_nulls(url)))
            finally:
                await engine.dispose()
    (core_stored, core_tables, core_nulls), (pg_stored, pg_tables, pg_nulls) = seen
    assert pg_stored == core_stored
    assert pg_tables == core_tables
    assert pg_nulls == core_nulls  # None stored as JSON null, not SQL NULL, as SQLAlchemy does
    assert any(pg_nulls.values())
    odd = next(row for row in pg_tables["delivery"] if row["delivery_key"] == "k-4")
    assert odd["body"].startswith(b"\x00\xff\xfe")
    assert odd["headers"]["x-note"].endswith("\u2603")
    assert odd["received_at"].microsecond == 123456
    duplicates = {row["delivery_key"]: row["duplicate_count"] for row in pg_tables["delivery"]}
    assert (duplicates["k-3"], duplicates["k-1"]) == (1, 2)


async def _ingest(engine: AsyncEngine, kind: str, items: list[Evidence]) -> list[Stored]:
    if kind == "core":
        async with engine.begin() as conn:
            return await conn.run_sync(
                lambda sync: fold_batch(CoreSession(sync), items, NOW, READERS)
            )
    # As an ingest does: the batch's keys given up front, read with its tasks.
    keys = {item.identity for item in items if isinstance(item, Delivery)}
    return await in_pg_session(engine, lambda s: fold_batch_async(s, items, NOW, READERS), keys)


async def _json_nulls(url: str) -> dict[str, tuple[int, int]]:
    """Each JSON column of the tables ingest writes: its rows holding SQL NULL, and JSON null."""
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        found = {}
        for table in (TASK, DELIVERY, MESSAGE):
            for column in table.c:
                if isinstance(column.type, sa.JSON):
                    found[f"{table.name}.{column.name}"] = await conn.fetchrow(
                        f"SELECT count(*) FILTER (WHERE {column.name} IS NULL), "
                        f"count(*) FILTER (WHERE json_typeof({column.name}) = 'null') "
                        f"FROM {table.name}"
                    )
        return {name: tuple(counts) for name, counts in found.items()}
    finally:
        await conn.close()


def _comparable(found: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Rows without the numbers sequences hand out, in an order of their content."""
    generated = {"id", "seq", "source_id"}
    return {
        name: sorted(
            ({k: v for k, v in row.items() if k not in generated} for row in rows), key=repr
        )
        for name, rows in found.items()
    }


async def test_a_connection_the_server_closed_is_replaced_before_a_write(
    engine: AsyncEngine,
) -> None:
    """Every backend killed between two writes (a restart, a failover, an idle timeout):
    the next write gets a live connection, with no pre-ping round trip at checkout."""
    async with driver_write(engine) as driver:
        assert await driver.fetchval("SELECT 1") == 1
    admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
            engine.url.database,
        )
    finally:
        await admin.close()
    assert killed >= 1
    for _ in range(3):  # the pool's connections, whether asyncpg has seen them close or not
        async with driver_write(engine) as driver:
            assert await driver.fetchval("SELECT 1") == 1


async def _settings(driver: Any) -> tuple[str, str]:
    return (
        await driver.fetchval("SHOW plan_cache_mode"),
        await driver.fetchval("SHOW enable_seqscan"),
    )


async def test_an_ingest_plans_its_statements_once_by_index_and_only_in_its_transaction(
    engine: AsyncEngine,
) -> None:
    """The ingest's transaction plans once per connection and never by sequential scan;
    every other transaction on the same connections keeps the session's own settings."""
    async with driver_write(engine) as driver:
        assert await _settings(driver) == ("force_generic_plan", "off")
    for _ in range(2):  # the pool's connection, then a new one
        async with engine.connect() as conn:
            raw: Any = (await conn.get_raw_connection()).driver_connection
            assert await _settings(raw) == ("force_custom_plan", "on")
            await conn.invalidate()


def _scans_of(plan: dict[str, Any], relation: str) -> list[dict[str, Any]]:
    scan = plan.get("Relation Name") == relation and "Scan" in plan["Node Type"]
    found = [plan] if scan else []
    for child in plan.get("Plans", []):
        found += _scans_of(child, relation)
    return found


def _keyed(scan: dict[str, Any]) -> bool:
    """A scan that reaches its rows through an index's condition (a bitmap scan through its
    index child's), not by reading the whole table or index."""
    if "Index Cond" in scan:
        return True
    return any(_keyed(child) for child in scan.get("Plans", []))


async def test_a_batch_updates_its_tasks_by_primary_key_on_a_ledger_of_thousands(
    engine: AsyncEngine,
) -> None:
    """Joined to `json_to_recordset` alone (which the planner takes for 100 rows), the
    update of a batch's tasks read the whole task table of a small ledger; it finds them
    by primary key, under the session's settings and under the ingest's."""
    await seeded(engine)
    columns = [c.name for c in TASK.c]
    copied = ", ".join(
        f"'{name[:2]}' || g || task.{name}" if name in ("ref", "provider_task_id") else name
        for name in columns
    )
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                f"INSERT INTO task ({', '.join(columns)}) SELECT {copied} "
                "FROM task, generate_series(1, 1500) AS g WHERE task.provider_task_id = 't-1'"
            )
        )
        await conn.execute(sa.text("ANALYZE task"))
    reader = _task_columns(TASK_FIELDS)
    update = _task_update(TASK_FIELDS, 1)
    for ingest_settings in (False, True):
        async with driver_write(engine) as driver:
            if not ingest_settings:
                await driver.execute("RESET plan_cache_mode; RESET enable_seqscan")
                assert await _settings(driver) == ("force_custom_plan", "on")
            records = await driver.fetch(
                f"SELECT {reader.select} FROM task ORDER BY ref DESC LIMIT 16"
            )
            rows = [reader.decode(record) for record in records]
            plan = await driver.fetchval(f"EXPLAIN (FORMAT JSON) {update}", *reader.params(rows))
            (scan,) = _scans_of(_decode_json(plan)[0]["Plan"], "task")
            assert _keyed(scan), scan
