"""The task rows the SQLite ingest keeps between batches (`KeptTasks`): taken instead of a
read only while nothing else has written, exactly as committed, and forgotten on failure."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.database import sqlite_file
from schemas.errors import StorageUnavailable
from schemas.ledger import Auth, Delivery, Poll
from schemas.states import Outcome, State
from schemas.store import LedgerStore
from schemas.store.ingest import TASK_FIELDS
from schemas.store.sqlite_ingest import (
    Committer,
    KeptTasks,
    LedgerWriter,
    SqliteSession,
    _task_reader,
)
from schemas.tables import TASK
from schemas.wire import Observation
from tests.conftest import FakeClock
from tests.schemas import test_ingest_sessions as sessions
from tests.support.databases import migrated_engine
from tests.support.senders import apidot_body

KNOWN, HELD_FOR, ANSWERED, NOW = sessions.KNOWN, sessions.HELD_FOR, sessions.ANSWERED, sessions.NOW
WORDS = {State.RUNNING: "running", State.SUCCEEDED: "finished"}


def report(ref: str | None, key: str, state: State, progress: int) -> Delivery:
    """A callback for the known task ("t-1"), by its token's task (`ref`) or by its id."""
    return Delivery(
        provider="apidot",
        delivery_key=key,
        body=apidot_body("t-1", WORDS[state], progress),
        headers={},
        auth=Auth.TOKEN,
        observation=Observation("t-1", state, progress),
        received_at=NOW,
        task_ref=ref,
    )


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with migrated_engine("sqlite", tmp_path) as migrated:
        await sessions.seeded(migrated)
        yield migrated


@pytest.fixture
async def store(engine: AsyncEngine) -> AsyncIterator[LedgerStore]:
    opened = LedgerStore(engine, FakeClock(NOW), sessions.READERS)
    yield opened
    await opened.close()


def writer(store: LedgerStore) -> LedgerWriter:
    ledger_writer = store._sqlite  # the store's own: what its batches keep
    assert ledger_writer is not None
    return ledger_writer


def db_path(engine: AsyncEngine) -> str:
    file = sqlite_file(engine)
    assert file is not None
    return file.path


def fresh_rows(engine: AsyncEngine) -> dict[str, dict[str, Any]]:
    """Every task as a batch would read it from the file now."""
    reader = _task_reader(TASK_FIELDS)
    with sqlite3.connect(db_path(engine)) as conn:
        rows = conn.execute(f"SELECT {reader.select} FROM task")
        return {row["ref"]: row for row in map(reader.decode, rows)}


@contextmanager
def task_reads(store: LedgerStore) -> Iterator[list[str]]:
    """The statements the store's writer connection reads tasks with, while inside."""
    seen: list[str] = []
    conn = writer(store).writer._conn
    assert conn is not None, "the writer has run a batch"
    conn.set_trace_callback(lambda sql: seen.append(sql) if "FROM task" in sql else None)
    try:
        yield seen
    finally:
        conn.set_trace_callback(None)


async def test_what_a_batch_keeps_is_every_task_it_touched_exactly_as_committed(
    engine: AsyncEngine, store: LedgerStore
) -> None:
    """Callbacks, a poll, submit answers that settle a held and an unmatched delivery: after
    each batch, every kept row is the row the file holds (no change made only in memory,
    none missed)."""
    later = NOW + timedelta(seconds=5)
    batches = [
        sessions.batch(),
        [
            sessions.callback(KNOWN, "k-3", "t-1", State.RUNNING),
            Poll(KNOWN, later, later + timedelta(seconds=60), Observation("t-1", State.SUCCEEDED)),
            sessions.callback(HELD_FOR, "h-2", "h-id", State.RUNNING),
        ],
        [sessions.callback(ANSWERED, "a-1", "early", State.RUNNING)],
    ]
    for evidence in batches:
        await store.ingest(evidence)
        kept = writer(store).kept
        fresh = fresh_rows(engine)
        assert len(kept) > 0
        for ref, row in fresh.items():
            if kept.get(ref) is not None:
                assert kept.get(ref) == row, ref
    assert {ref for ref in fresh if writer(store).kept.get(ref)} == {KNOWN, HELD_FOR, ANSWERED}


async def test_a_batch_takes_kept_tasks_without_reading_them(
    engine: AsyncEngine, store: LedgerStore
) -> None:
    await store.ingest([report(KNOWN, "k-2", State.RUNNING, 40)])

    with task_reads(store) as reads:
        [stored] = await store.ingest([report(KNOWN, "k-3", State.RUNNING, 50)])
        [by_id] = await store.ingest([report(None, "k-4", State.RUNNING, 60)])

    assert (stored.outcome, by_id.outcome) == (Outcome.APPLIED, Outcome.APPLIED)
    assert by_id.task_ref == KNOWN  # found by its provider id among the kept rows
    assert reads == []
    assert fresh_rows(engine)[KNOWN]["progress"] == 60


async def test_a_write_by_another_connection_is_seen_by_the_next_batch(
    engine: AsyncEngine, store: LedgerStore
) -> None:
    """Another process (here a plain connection) cancels the task between two batches: the
    next callback is merged into the cancelled task, not into the row kept before."""
    await store.ingest([sessions.callback(KNOWN, "k-2", "t-1", State.RUNNING)])
    assert writer(store).kept.get(KNOWN) is not None
    with sqlite3.connect(db_path(engine)) as other:
        other.execute(
            "UPDATE task SET state = 'cancelled', version = version + 1 WHERE ref = ?", (KNOWN,)
        )

    with task_reads(store) as reads:
        await store.ingest([sessions.callback(KNOWN, "k-3", "t-1", State.RUNNING)])

    assert reads, "the task was read again"
    row = fresh_rows(engine)[KNOWN]
    assert row["state"] == "cancelled"
    assert writer(store).kept.get(KNOWN) == row


async def test_a_write_through_the_stores_own_engine_is_seen_too(
    engine: AsyncEngine, store: LedgerStore
) -> None:
    await store.ingest([sessions.callback(KNOWN, "k-2", "t-1", State.RUNNING)])
    version = fresh_rows(engine)[KNOWN]["version"]
    async with engine.begin() as conn:
        await conn.execute(sa.update(TASK).where(TASK.c.ref == KNOWN).values(version=version + 7))

    await store.ingest([report(KNOWN, "k-3", State.SUCCEEDED, 100)])

    # The second batch changed the task, so its version moved on from the other write's.
    assert fresh_rows(engine)[KNOWN]["version"] > version + 7


async def test_a_failed_batch_forgets_every_kept_row(
    engine: AsyncEngine, store: LedgerStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.ingest([sessions.callback(KNOWN, "k-2", "t-1", State.RUNNING)])
    before = fresh_rows(engine)[KNOWN]

    def broken(self: SqliteSession, *args: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    with monkeypatch.context() as patched:
        patched.setattr(SqliteSession, "flush", broken)
        with pytest.raises(StorageUnavailable):
            await store.ingest([report(KNOWN, "k-3", State.SUCCEEDED, 100)])

    assert len(writer(store).kept) == 0
    assert fresh_rows(engine)[KNOWN] == before  # rolled back
    await store.ingest([report(KNOWN, "k-3", State.SUCCEEDED, 100)])
    assert fresh_rows(engine)[KNOWN]["state"] == "succeeded"


async def test_a_batch_whose_caller_is_cancelled_during_its_commit_forgets_the_kept_rows(
    engine: AsyncEngine, store: LedgerStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The COMMIT runs to its end (the connection is not touched meanwhile), but the caller
    is gone: the rows it would have kept are newer than the ones kept before, so neither
    may be trusted. A later callback is merged into the task as committed."""
    await store.ingest([report(KNOWN, "k-2", State.RUNNING, 40)])
    commit = Committer.commit

    def cancelled_meanwhile(self: Committer, conn: sqlite3.Connection) -> asyncio.Future[None]:
        running = asyncio.current_task()
        assert running is not None
        running.cancel()
        return commit(self, conn)

    with monkeypatch.context() as patched:
        patched.setattr(Committer, "commit", cancelled_meanwhile)
        with pytest.raises(asyncio.CancelledError):
            await store.ingest([report(KNOWN, "k-3", State.SUCCEEDED, 100)])
    assert fresh_rows(engine)[KNOWN]["state"] == "succeeded"  # committed all the same

    [late] = await store.ingest([report(KNOWN, "k-4", State.RUNNING, 50)])

    assert late.outcome is Outcome.STALE
    assert fresh_rows(engine)[KNOWN]["state"] == "succeeded"


def _row(ref: str, task_id: str | None) -> dict[str, Any]:
    return {"ref": ref, "provider": "apidot", "provider_task_id": task_id}


def test_kept_rows_are_bounded_and_the_oldest_go_first() -> None:
    kept = KeptTasks(size=2)
    kept.keep({"a": _row("a", "ta"), "b": _row("b", "tb")})
    kept.keep({"a": _row("a", "ta"), "c": _row("c", "tc")})  # a kept again: now the newest

    assert len(kept) == 2
    assert kept.get("b") is None
    assert kept.named(("apidot", "tb")) is None
    assert kept.named(("apidot", "ta")) == _row("a", "ta")


def test_a_task_is_not_found_by_a_provider_id_it_no_longer_has() -> None:
    kept = KeptTasks()
    kept.keep({"a": _row("a", "old")})
    kept.keep({"a": _row("a", "new")})

    assert kept.named(("apidot", "old")) is None
    assert kept.named(("apidot", "new")) == _row("a", "new")


async def test_two_writers_taking_turns_on_one_task_lose_no_change(
    engine: AsyncEngine, store: LedgerStore
) -> None:
    """Two stores on one file (two processes' writers, each with its own kept rows) take
    turns with progress reports for the same task: each sees the other's commits, so every
    report moves the task on from the last one, and its version counts every one of them."""
    other = LedgerStore(engine, FakeClock(NOW), sessions.READERS)
    try:
        before = fresh_rows(engine)[KNOWN]["version"]
        outcomes = []
        for n in range(40):
            writer_now = store if n % 3 else other  # uneven turns: runs of two, then one
            [stored] = await writer_now.ingest([report(KNOWN, f"turn-{n}", State.RUNNING, 31 + n)])
            outcomes.append(stored.outcome)
    finally:
        await other.close()

    row = fresh_rows(engine)[KNOWN]
    assert outcomes == [Outcome.APPLIED] * 40
    assert row["progress"] == 70  # the seeded callback said 30: each report is above it
    assert row["version"] == before + 40
