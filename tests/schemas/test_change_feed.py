"""The change feed on PostgreSQL: writers appending transitions commit side by side, and a
reader never passes a `seq` whose transaction is still open (it would skip it for good)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.states import Source, State
from schemas.store import FEED_LOCK_KEY, LedgerStore, NewTask
from schemas.store.locks import order_transitions
from schemas.tables import TRANSITION
from tests.conftest import FakeClock
from tests.schemas.test_store import callback
from tests.support.databases import migrated_engine

WAIT_SECONDS = 10.0


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with migrated_engine("postgresql", tmp_path) as engine:
        yield engine


async def _open_writer(
    engine: AsyncEngine, ref: str, appended: asyncio.Future[int], release: asyncio.Event
) -> None:
    """A writer as every writer of transitions does it: the feed lock, then a `seq`; its
    transaction stays open until `release`."""
    async with engine.begin() as conn:
        await conn.run_sync(order_transitions)
        inserted = await conn.execute(
            TRANSITION.insert()
            .values(
                task_ref=ref,
                from_state=State.SUBMITTED.value,
                to_state=State.QUEUED.value,
                source=Source.API.value,
                at=FakeClock().now,
            )
            .returning(TRANSITION.c.seq)
        )
        appended.set_result(int(inserted.scalar_one()))
        await release.wait()


async def _reader_waits_on_the_feed(engine: AsyncEngine) -> bool:
    """True once some session waits for the feed's advisory lock."""
    query = sa.text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = :key"
    )
    async with engine.connect() as conn:
        return bool((await conn.execute(query, {"key": FEED_LOCK_KEY})).scalar())


async def test_a_reader_waits_for_an_earlier_seq_still_open_and_writers_do_not(
    engine: AsyncEngine,
) -> None:
    store = LedgerStore(engine, FakeClock())
    first = await store.register(NewTask(provider="apidot", provider_task_id="t-1"))
    second = await store.register(NewTask(provider="apidot", provider_task_id="t-2"))
    registered = [row["seq"] for row in await store.changes(0, 100)]

    appended: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    release = asyncio.Event()
    writer = asyncio.create_task(_open_writer(engine, first.ref, appended, release))
    try:
        early = await asyncio.wait_for(asyncio.shield(appended), WAIT_SECONDS)
        # Another writer commits a later seq while the first is open: it does not wait for it.
        later = callback(second.ref, "k-1", State.RUNNING, FakeClock().now, "t-2")
        await asyncio.wait_for(store.ingest([later]), WAIT_SECONDS)
        reader = asyncio.create_task(store.changes(0, 100))
        loop = asyncio.get_running_loop()
        until = loop.time() + WAIT_SECONDS
        while not await _reader_waits_on_the_feed(engine):
            assert not reader.done(), "the reader went past a seq still being written"
            assert loop.time() < until, "the reader never waited for the open writer"
            await asyncio.sleep(0.01)
        assert not reader.done()
        release.set()
        await asyncio.wait_for(writer, WAIT_SECONDS)
        seqs = [row["seq"] for row in await asyncio.wait_for(reader, WAIT_SECONDS)]
    finally:
        release.set()
        await writer

    assert seqs[: len(registered)] == registered
    assert early in seqs
    assert seqs == sorted(seqs)
    assert len(seqs) == len(registered) + 2  # the open writer's, then the callback's
    assert seqs.index(early) < len(seqs) - 1


async def test_a_reader_with_no_writer_open_reads_at_once(engine: AsyncEngine) -> None:
    store = LedgerStore(engine, FakeClock())
    task = await store.register(NewTask(provider="apidot", provider_task_id="t-1"))
    changes = await asyncio.wait_for(store.changes(0, 100), WAIT_SECONDS)
    assert [(row["task_ref"], row["to_state"]) for row in changes] == [
        (task.ref, State.SUBMITTED.value)
    ]
    assert await store.changes(changes[-1]["seq"], 100) == []


async def test_an_empty_page_does_not_wait_for_open_writers(engine: AsyncEngine) -> None:
    """A long poll with nothing new answers at once, even while a writer is open."""
    store = LedgerStore(engine, FakeClock())
    task = await store.register(NewTask(provider="apidot", provider_task_id="t-1"))
    last = (await store.changes(0, 100))[-1]["seq"]
    appended: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    release = asyncio.Event()
    writer = asyncio.create_task(_open_writer(engine, task.ref, appended, release))
    try:
        await asyncio.wait_for(asyncio.shield(appended), WAIT_SECONDS)
        assert await asyncio.wait_for(store.changes(last, 100), WAIT_SECONDS) == []
    finally:
        release.set()
        await writer
    assert [row["seq"] for row in await store.changes(last, 100)] == [await appended]
