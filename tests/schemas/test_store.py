"""The ledger store's one write path, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from schemas.database import SqliteFile, create_engine
from schemas.ledger import Auth, Delivery, Expiry, Poll
from schemas.migrate import upgrade
from schemas.states import Outcome, State
from schemas.store import POSTGRES_INGEST_WRITERS, LedgerStore, NewTask
from schemas.store.ingest import CoreSession
from schemas.tables import DELIVERY
from schemas.wire import Observation
from tests.conftest import FakeClock
from tests.support.databases import temporary_database


def callback(ref: str, key: str, state: State, now: datetime, task_id: str = "t-1") -> Delivery:
    return Delivery(
        provider="apidot",
        delivery_key=key,
        body=b"{}",
        headers={},
        auth=Auth.TOKEN,
        observation=Observation(task_id, state, 50),
        received_at=now,
        task_ref=ref,
    )


def poll(ref: str, state: State, now: datetime) -> Poll:
    return Poll(
        task_ref=ref,
        observed_at=now,
        next_poll_at=None,
        http_status=200,
        observation=Observation("t-1", state, 100),
        body="{}",
    )


def traced_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement the SQLite direct writer runs from now on, in order."""
    statements: list[str] = []
    connect = SqliteFile.connect

    def traced(file: SqliteFile, busy_timeout_ms: int | None = None) -> sqlite3.Connection:
        conn = connect(file, busy_timeout_ms)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(SqliteFile, "connect", traced)
    return statements


async def registered(store: LedgerStore) -> str:
    row = await store.register(NewTask(provider="apidot", provider_task_id="t-1"))
    return str(row.ref)


async def test_one_batch_counts_repeats_of_a_key_as_duplicates(
    store: LedgerStore, clock: FakeClock
) -> None:
    ref = await registered(store)
    same = callback(ref, "k", State.RUNNING, clock())
    results = await store.ingest([same, same, same])
    assert [r.outcome for r in results] == [Outcome.APPLIED, Outcome.DUPLICATE, Outcome.DUPLICATE]
    deliveries = (await store.timeline(ref)).deliveries
    assert [(d.outcome, d.duplicate_count) for d in deliveries] == [("applied", 2)]


async def test_a_message_key_is_unique_within_a_provider_task_not_across_tasks(
    store: LedgerStore, clock: FakeClock
) -> None:
    """A delivery is keyed by the provider's task id: one key reused for another task is
    that task's delivery, while a resend for the same task, in a later batch, is counted."""
    first = await registered(store)
    second = (await store.register(NewTask(provider="apidot", provider_task_id="t-2"))).ref
    results = await store.ingest(
        [
            callback(first, "same", State.RUNNING, clock()),
            callback(second, "same", State.RUNNING, clock(), "t-2"),
        ]
    )
    assert [r.outcome for r in results] == [Outcome.APPLIED, Outcome.APPLIED]
    (again,) = await store.ingest([callback(second, "same", State.RUNNING, clock(), "t-2")])
    assert (again.outcome, again.task_ref) == (Outcome.DUPLICATE, second)
    counts = []
    for ref in (first, second):
        deliveries = (await store.timeline(ref)).deliveries
        counts.append([(d.provider_task_id, d.duplicate_count) for d in deliveries])
    assert counts == [[("t-1", 0)], [("t-2", 1)]]


async def test_the_core_session_finds_stored_deliveries_by_their_identity(
    store: LedgerStore, clock: FakeClock
) -> None:
    """The SQLAlchemy session's duplicate check (PostgreSQL's path; SQLite's too, should
    anything take it there) finds exactly the stored keys among those it is given."""
    ref = await registered(store)
    stored = callback(ref, "k-1", State.RUNNING, clock())
    await store.ingest([stored])
    absent = {("apidot", "t-1", "k-2"), ("apidot", "t-2", "k-1"), ("evolink", "t-1", "k-1")}
    async with store.engine.connect() as conn:
        found = await conn.run_sync(
            lambda sync: CoreSession(sync).deliveries({stored.identity, *absent})
        )
    assert list(found) == [stored.identity]
    assert (found[stored.identity]["task_ref"], found[stored.identity]["state"]) == (
        ref,
        "running",
    )


async def test_each_change_bumps_the_version_once_per_batch(
    store: LedgerStore, clock: FakeClock
) -> None:
    ref = await registered(store)
    await store.ingest([callback(ref, "a", State.RUNNING, clock())])
    await store.ingest([callback(ref, "b", State.SUCCEEDED, clock())])
    task = await store.get(ref)
    assert task is not None
    assert (task.version, task.state) == (3, "succeeded")


async def test_poll_that_contradicts_a_callback_wins_and_records_the_conflict(
    store: LedgerStore, clock: FakeClock
) -> None:
    ref = await registered(store)
    await store.ingest([callback(ref, "a", State.SUCCEEDED, clock())])
    clock.advance(5)
    [stored] = await store.ingest([poll(ref, State.FAILED, clock())])
    task = await store.get(ref)
    assert task is not None
    assert stored.outcome is Outcome.CONFLICT
    assert (task.state, task.conflict, task.confirmed) == ("failed", True, True)
    transitions = [(t.to_state, t.source) for t in (await store.timeline(ref)).transitions]
    assert transitions == [("submitted", "api"), ("succeeded", "webhook"), ("failed", "poll")]


async def test_unconfirmed_terminal_callback_is_due_for_a_poll_at_once(
    store: LedgerStore, clock: FakeClock
) -> None:
    ref = await registered(store)
    await store.ingest([callback(ref, "a", State.SUCCEEDED, clock())])
    task = await store.get(ref)
    assert task is not None
    assert (task.confirmed, task.next_poll_at) == (False, clock())


async def test_agreeing_poll_confirms_and_stops_polling(
    store: LedgerStore, clock: FakeClock
) -> None:
    ref = await registered(store)
    await store.ingest([callback(ref, "a", State.SUCCEEDED, clock())])
    [stored] = await store.ingest([poll(ref, State.SUCCEEDED, clock())])
    task = await store.get(ref)
    assert task is not None
    assert stored.outcome is Outcome.CONFIRMED
    assert (task.confirmed, task.next_poll_at, task.poll_attempts) == (True, None, 1)


async def test_expiry_marks_lost_and_a_late_callback_still_overrides(
    store: LedgerStore, clock: FakeClock
) -> None:
    ref = await registered(store)
    await store.ingest([Expiry(task_ref=ref, at=clock(), reason="no answer for 24 h")])
    lost = await store.get(ref)
    assert lost is not None
    assert (lost.state, lost.result) == ("lost", {"lost_reason": "no answer for 24 h"})
    await store.ingest([callback(ref, "late", State.SUCCEEDED, clock())])
    task = await store.get(ref)
    assert task is not None
    assert task.state == "succeeded"


async def test_failed_poll_is_recorded_without_touching_the_state(
    store: LedgerStore, clock: FakeClock
) -> None:
    ref = await registered(store)
    later = clock()
    await store.ingest(
        [
            Poll(
                task_ref=ref,
                observed_at=later,
                next_poll_at=later,
                http_status=500,
                error="server error",
            )
        ]
    )
    timeline = await store.timeline(ref)
    assert [(p.outcome, p.http_status) for p in timeline.polls] == [("error", 500)]
    task = await store.get(ref)
    assert task is not None
    assert (task.state, task.poll_attempts) == ("submitted", 1)


async def test_ingest_reads_by_index_never_by_scanning_a_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ingest cost must not grow with the ledger: every lookup it makes is an index search."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    await upgrade(engine)
    statements = traced_statements(monkeypatch)
    store = LedgerStore(engine, FakeClock())
    ref = await registered(store)
    signed = Delivery(
        provider="openai",
        delivery_key="msg_1",
        body=b"{}",
        headers={},
        auth=Auth.SIGNATURE,
        observation=Observation("video_1", State.SUCCEEDED),
        received_at=store.clock(),
    )
    await store.ingest([callback(ref, "a", State.RUNNING, store.clock()), signed])
    await store.ingest([callback(ref, "a", State.RUNNING, store.clock())])  # a duplicate
    await store.close()
    lookups = [s for s in statements if s.lstrip().upper().startswith(("SELECT", "UPDATE"))]
    assert any(s.upper().startswith("UPDATE DELIVERY") for s in lookups)
    plans = []
    async with engine.connect() as conn:
        for statement in lookups:
            rows = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement)
            plans += [str(row[-1]) for row in rows]
    await engine.dispose()
    assert plans
    # Walking the batch's own keys (`json_each` of a parameter) is the only scan allowed.
    allowed = ("CONSTANT ROW", "VIRTUAL TABLE")
    assert [p for p in plans if p.startswith("SCAN") and not any(a in p for a in allowed)] == []
    assert any("VIRTUAL TABLE" in p for p in plans)


async def test_a_progress_report_rewrites_only_the_task_columns_it_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Indexed columns left as they were (provider task id, next poll) are not written, so
    their indexes are not touched; what did change is stored."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    await upgrade(engine)
    statements = traced_statements(monkeypatch)
    store = LedgerStore(engine, FakeClock())
    ref = await registered(store)
    await store.ingest([callback(ref, "a", State.RUNNING, store.clock())])
    task = await store.get(ref)
    await store.close()
    await engine.dispose()
    (update,) = [s for s in statements if s.startswith("UPDATE task")]
    assigned = update.split(" SET ", 1)[1].split(" WHERE ", 1)[0]
    assert "provider_task_id" not in assigned
    assert '"progress"' in assigned or "progress =" in assigned
    assert task is not None
    assert (task.state, task.progress, task.version) == ("running", 50, 2)


async def test_what_ingest_writes_reads_back_the_same_through_sqlalchemy(
    store: LedgerStore, clock: FakeClock
) -> None:
    """SQLite's direct writer and SQLAlchemy agree on every stored form (times, JSON, flags)."""
    clock.now = clock.now.replace(microsecond=123456)
    ref = await registered(store)
    finished = Delivery(
        provider="apidot",
        delivery_key="k-done",
        body=b'{"done": true}',
        headers={"content-type": "application/json"},
        auth=Auth.TOKEN,
        observation=Observation("t-1", State.SUCCEEDED, 100, result_urls=("https://cdn/x.mp4",)),
        received_at=clock(),
        task_ref=ref,
    )
    clock.advance(1.5)
    await store.ingest([finished])
    task = await store.get(ref)
    assert task is not None
    assert task.state == "succeeded"
    assert (task.updated_at, task.terminal_at, task.last_event_at) == (clock(),) * 3
    assert task.updated_at.tzinfo is not None
    assert task.result["urls"] == ["https://cdn/x.mp4"]
    assert (task.confirmed, task.conflict, task.recovered) == (False, False, False)
    assert task.request is None
    assert task.version == 2
    (delivery,) = (await store.timeline(ref)).deliveries
    assert delivery.headers == {"content-type": "application/json"}
    assert delivery.received_at == clock() - timedelta(seconds=1.5)
    assert (delivery.outcome, delivery.auth) == ("applied", "token")
    # A second batch reads the first one's row back through the direct path and merges on it.
    await store.ingest([poll(ref, State.SUCCEEDED, clock())])
    again = await store.get(ref)
    assert again is not None
    assert (again.confirmed, again.result) == (True, task.result)


async def test_concurrent_ingests_on_one_store_all_commit(
    store: LedgerStore, clock: FakeClock
) -> None:
    """Batches from several callers at once take turns on the one write connection."""
    ref = await registered(store)
    batches = [[callback(ref, f"k{i}", State.RUNNING, clock())] for i in range(6)]
    results = await asyncio.gather(*(store.ingest(batch) for batch in batches))
    outcomes = sorted(r.outcome.value for (r,) in results)
    assert outcomes == ["applied"] + ["duplicate"] * 5  # the same report five more times
    assert len((await store.timeline(ref)).deliveries) == 6


async def test_an_ingest_cancelled_anywhere_commits_all_of_its_batch_or_none(
    store: LedgerStore, clock: FakeClock
) -> None:
    """Cancelled before, during or after its commit, a batch is whole or absent; the store
    goes on working, and a resend of every batch stores each delivery exactly once."""
    ref = await registered(store)
    batches = [
        [callback(ref, f"c{turns}-{i}", State.RUNNING, clock()) for i in range(3)]
        for turns in range(12)
    ]
    for turns, batch in enumerate(batches):
        ingest = asyncio.ensure_future(store.ingest(batch))
        for _ in range(turns):
            await asyncio.sleep(0)
        ingest.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ingest
    keys = [d.delivery_key for d in (await store.timeline(ref)).deliveries]
    by_batch = [sum(key.startswith(f"c{turns}-") for key in keys) for turns in range(12)]
    assert set(by_batch) <= {0, 3}
    for batch in batches:
        await store.ingest(batch)
    stored = (await store.timeline(ref)).deliveries
    assert sorted(d.delivery_key for d in stored) == sorted(
        item.delivery_key for batch in batches for item in batch
    )


async def test_writers_of_one_process_queue_for_sqlite_instead_of_timing_out(
    tmp_path: Path,
) -> None:
    """Two stores on one file (receiver and reconciler in one process), writing at once with
    a 1 ms busy timeout: every registration and ingest waits its turn and commits."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    engines = [create_engine(url, busy_timeout_ms=1) for _ in range(2)]
    await upgrade(engines[0])
    registrar, receiver = (LedgerStore(engine, FakeClock()) for engine in engines)
    try:
        ref = await registered(registrar)
        now = receiver.clock()
        registrations = [
            registrar.register(NewTask(provider="apidot", provider_task_id=f"r-{i}"))
            for i in range(30)
        ]
        ingests = [receiver.ingest([callback(ref, f"k{i}", State.RUNNING, now)]) for i in range(30)]
        results = await asyncio.gather(*registrations, *ingests, return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert len((await receiver.timeline(ref)).deliveries) == 30
    finally:
        for store, engine in zip((registrar, receiver), engines, strict=True):
            await store.close()
            await engine.dispose()


async def test_a_registration_cancelled_anywhere_leaves_writing_open_to_others(
    store: LedgerStore,
) -> None:
    """Cancelled at any point of its transaction (a reconciler killed mid-pass, a client
    gone), a writer gives back the write gate and its connection: the next writes commit."""
    committed = []
    for turns in range(40):
        doomed = asyncio.ensure_future(
            store.register(NewTask(provider="apidot", provider_task_id=f"doomed-{turns}"))
        )
        for _ in range(turns):
            await asyncio.sleep(0)
        doomed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await doomed
        async with asyncio.timeout(10):
            row = await store.register(NewTask(provider="apidot", provider_task_id=f"next-{turns}"))
        committed.append(row.ref)
    assert all([await store.get(ref) for ref in committed])


async def test_batches_committing_at_once_with_the_same_keys_in_any_order_never_deadlock(
    store: LedgerStore, clock: FakeClock
) -> None:
    """Two receivers (or one with several writers) may hold the same resent deliveries in
    opposite orders; each ends stored once, and neither batch fails on a lock cycle. Only
    deliveries for a task not known yet contend on keys alone: for a known task, the
    batches take its row lock first."""
    for round_ in range(2):  # 2,000 rows: each INSERT runs in parts, and the parts interleave
        keys = [f"r{round_}-k{i:04d}" for i in range(2000)]

        def early(key: str) -> Delivery:
            return replace(callback("", key, State.RUNNING, clock(), "t-early"), task_ref=None)

        ahead = [early(k) for k in keys]
        behind = [early(k) for k in reversed(keys)]
        await asyncio.wait_for(
            asyncio.gather(store.ingest(ahead), store.ingest(behind)), timeout=60
        )
        async with store.engine.connect() as conn:
            rows, repeats = (
                await conn.execute(
                    sa.select(sa.func.count(), sa.func.sum(DELIVERY.c.duplicate_count)).where(
                        DELIVERY.c.delivery_key.like(f"r{round_}-%")
                    )
                )
            ).one()
        assert (rows, repeats) == (len(keys), len(keys))


def test_postgresql_commits_several_ingest_batches_at_once_and_sqlite_one(
    store: LedgerStore,
) -> None:
    expected = 1 if store.engine.dialect.name == "sqlite" else POSTGRES_INGEST_WRITERS
    assert store.ingest_writers == expected


async def test_postgresql_ingest_reads_with_the_same_statements_whatever_the_batch_size(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The server plans a statement once per connection: batches of every size share them.
    (SQLite ingest runs statements of its own, in schemas/store/sqlite_ingest.py.)"""
    reads: set[str] = set()

    def seen(query: Any) -> None:
        statement = str(query.query)
        ledger = "FROM task" in statement or "JOIN delivery" in statement  # not asyncpg's own
        if statement.lstrip().upper().startswith("SELECT") and ledger:
            reads.add(statement)

    def log_queries(dbapi_connection: Any, *_: object) -> None:
        # Ingest runs on the pool's asyncpg connection, past SQLAlchemy's events.
        dbapi_connection.driver_connection.add_query_logger(seen)

    async with temporary_database("postgresql", tmp_path) as url:
        engine = create_engine(url)
        await upgrade(engine)
        store = LedgerStore(engine, clock)
        try:
            refs = [
                (await store.register(NewTask(provider="apidot", provider_task_id=f"t-{i}"))).ref
                for i in range(6)
            ]
            sa.event.listen(engine.sync_engine, "checkout", log_queries)
            for size in range(1, 7):
                batch = [
                    callback(refs[i], f"s{size}-{i}", State.RUNNING, clock(), f"t-{i}")
                    for i in range(size)
                ]
                await store.ingest(batch)
        finally:
            await store.close()
            await engine.dispose()
    assert len(reads) == 1  # one call: the batch's tasks, and its keys already stored


async def test_postgresql_connections_plan_every_statement_for_its_own_parameters(
    tmp_path: Path,
) -> None:
    """A generic plan costed while the ledger was empty read deliveries by sequential scan
    ever after (see `POSTGRES_SESSION`); every connection opts out of generic plans."""
    async with temporary_database("postgresql", tmp_path) as url:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                mode = (await conn.execute(sa.text("SHOW plan_cache_mode"))).scalar_one()
        finally:
            await engine.dispose()
    assert mode == "force_custom_plan"
