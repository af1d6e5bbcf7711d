"""One contract, two ingest sessions: the SQLAlchemy Core one (PostgreSQL's, and SQLite's
refold) and the raw `sqlite3` one (SQLite's ingest) load and write the same rows."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.database import create_engine, sqlite_file
from schemas.ledger import Auth, Delivery, Evidence, Poll, Reader, Submission, SubmissionStatus
from schemas.migrate import upgrade
from schemas.states import State
from schemas.store import LedgerStore, NewTask, new_task_row
from schemas.store.ingest import TASK_FIELDS, CoreSession, IngestSession, fold_batch
from schemas.store.sqlite_ingest import SqliteSession
from schemas.tables import DELIVERY, OBSERVATION, TASK, TRANSITION
from schemas.wire import Observation, WireFormat
from tests.conftest import FakeClock
from tests.support.databases import migrated_engine
from tests.support.senders import apidot_body

T = TypeVar("T")
NOW = datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
KNOWN, HELD_FOR, ANSWERED = "tl_known", "tl_held_for", "tl_answered"
SESSIONS = ("core", "sqlite3")
# Each session on each backend it runs on: the raw-sqlite3 one exists only on SQLite.
SESSION_BACKENDS = [("sqlite", "core"), ("sqlite", "sqlite3"), ("postgresql", "core")]


@pytest.fixture(params=SESSION_BACKENDS, ids=["-".join(pair) for pair in SESSION_BACKENDS])
async def session_engine(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[AsyncEngine, str]]:
    backend, kind = request.param
    async with migrated_engine(backend, tmp_path) as engine:
        yield engine, kind


READERS = {"apidot": Reader(WireFormat.APIDOT)}
WORDS = {State.QUEUED: "not_started", State.RUNNING: "running"}


def callback(ref: str | None, key: str, task_id: str, state: State) -> Delivery:
    return Delivery(
        provider="apidot",
        delivery_key=key,
        body=apidot_body(task_id, WORDS[state], 30),
        headers={"content-type": "application/json"},
        auth=Auth.TOKEN,
        observation=Observation(task_id, state, 30),
        received_at=NOW,
        task_ref=ref,
    )


async def seeded(engine: AsyncEngine) -> None:
    """A known task with a delivery, a task whose callback is held for its submit answer,
    and one about to be answered with an id a delivery was kept under, unmatched."""
    tasks = [
        (KNOWN, NewTask("apidot", provider_task_id="t-1")),
        (HELD_FOR, NewTask("apidot", submit=True)),
        (ANSWERED, NewTask("apidot", submit=True)),
    ]
    async with engine.begin() as conn:
        for ref, new in tasks:
            await conn.execute(TASK.insert().values({**new_task_row(new, NOW), "ref": ref}))
    store = LedgerStore(engine, FakeClock(NOW), READERS)
    try:
        await store.ingest(
            [
                callback(KNOWN, "k-1", "t-1", State.QUEUED),
                callback(HELD_FOR, "h-1", "h-id", State.RUNNING),
                callback(None, "e-1", "early", State.RUNNING),
            ]
        )
    finally:
        await store.close()


async def in_session(engine: AsyncEngine, kind: str, work: Callable[[IngestSession], T]) -> T:
    """`work` on a session of `kind`, in one committed transaction."""
    if kind == "core":
        async with engine.begin() as conn:
            return await conn.run_sync(lambda sync: work(CoreSession(sync)))
    file = sqlite_file(engine)
    assert file is not None, "the sqlite3 session runs on SQLite only"
    conn = file.connect()
    try:
        conn.execute("BEGIN IMMEDIATE")
        result = work(SqliteSession(conn, TASK_FIELDS))
        conn.execute("COMMIT")
        return result
    finally:
        conn.close()


def reads(session: IngestSession) -> dict[str, Any]:
    """What an ingest loads, each read once, in an ingest's order."""
    session.lock_ids({"t-1", "early"})
    return {
        "tasks": session.tasks({HELD_FOR}, {("apidot", "t-1"), ("apidot", "nobody")}),
        "proposed": session.tasks(set(), {("apidot", "t-1")}, lock=False),
        "deliveries": session.deliveries({("apidot", "t-1", "k-1"), ("apidot", "t-1", "k-9")}),
        "held": session.held({HELD_FOR, KNOWN}),
        "unmatched": session.unmatched({("apidot", "early"), ("apidot", "t-2")}),
    }


def batch() -> list[Evidence]:
    later = NOW + timedelta(seconds=2)
    return [
        callback(KNOWN, "k-1", "t-1", State.QUEUED),  # a resend: counted
        callback(KNOWN, "k-2", "t-1", State.RUNNING),
        Poll(KNOWN, later, later + timedelta(seconds=60), Observation("t-1", State.RUNNING, 40)),
        Submission(HELD_FOR, later, SubmissionStatus.SENT, None, Observation("h-id", State.QUEUED)),
        Submission(
            ANSWERED, later, SubmissionStatus.SENT, None, Observation("early", State.QUEUED)
        ),
    ]


async def tables(engine: AsyncEngine) -> dict[str, list[dict[str, Any]]]:
    ordered = {TASK: TASK.c.ref, DELIVERY: DELIVERY.c.id, OBSERVATION: OBSERVATION.c.id}
    ordered[TRANSITION] = TRANSITION.c.seq
    async with engine.connect() as conn:
        return {
            table.name: [
                dict(row) for row in (await conn.execute(sa.select(table).order_by(key))).mappings()
            ]
            for table, key in ordered.items()
        }


def loaded_shape(found: dict[str, Any]) -> dict[str, Any]:
    """The reads, by what identifies each row and what the fold decides on."""
    return {
        "tasks": [(t["ref"], t["provider_task_id"], t["submission"]) for t in found["tasks"]],
        "proposed": [t["ref"] for t in found["proposed"]],
        "deliveries": {key: (d["task_ref"], d["state"]) for key, d in found["deliveries"].items()},
        "held": {
            ref: [(d["delivery_key"], d["outcome"]) for d in rows]
            for ref, rows in found["held"].items()
        },
        "unmatched": {
            pair: [(d["delivery_key"], d["task_ref"]) for d in rows]
            for pair, rows in found["unmatched"].items()
        },
    }


async def test_each_session_loads_what_an_ingest_needs(
    session_engine: tuple[AsyncEngine, str],
) -> None:
    engine, kind = session_engine
    await seeded(engine)
    found = await in_session(engine, kind, reads)
    assert loaded_shape(found) == {
        "tasks": [(HELD_FOR, None, "pending"), (KNOWN, "t-1", None)],
        "proposed": [KNOWN],
        "deliveries": {("apidot", "t-1", "k-1"): (KNOWN, "queued")},
        "held": {HELD_FOR: [("h-1", "held")]},
        "unmatched": {("apidot", "early"): [("e-1", None)]},
    }


async def test_each_session_writes_what_the_fold_decided(
    session_engine: tuple[AsyncEngine, str],
) -> None:
    engine, kind = session_engine
    await seeded(engine)
    stored = await in_session(engine, kind, lambda s: fold_batch(s, batch(), NOW, READERS))
    assert [s.outcome.value for s in stored] == [
        "duplicate",
        "applied",
        "applied",
        "applied",
        "applied",
    ]
    found = await tables(engine)
    tasks = {t["ref"]: (t["provider_task_id"], t["state"], t["progress"]) for t in found["task"]}
    assert tasks == {
        KNOWN: ("t-1", "running", 40),
        HELD_FOR: ("h-id", "running", 30),
        ANSWERED: ("early", "running", 30),
    }
    # Sorted by key: the Core session inserts in key order (PostgreSQL's lock order).
    deliveries = sorted(
        (d["delivery_key"], d["task_ref"], d["outcome"], d["duplicate_count"])
        for d in found["delivery"]
    )
    assert deliveries == [
        ("e-1", ANSWERED, "applied", 0),
        ("h-1", HELD_FOR, "applied", 0),
        ("k-1", KNOWN, "applied", 1),
        ("k-2", KNOWN, "applied", 0),
    ]
    assert [(p["task_ref"], p["outcome"]) for p in found["observation"]] == [(KNOWN, "applied")]
    # One seeded; then k-2 (running), and each answered task to queued then running.
    assert len(found["transition"]) == 1 + 5


async def test_both_sessions_read_and_write_identical_rows_on_sqlite(tmp_path: Path) -> None:
    """Column for column, times, JSON and flags included: the raw session's codecs agree
    with SQLAlchemy's."""
    seen = []
    for kind in SESSIONS:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / f'{kind}.db'}")
        try:
            await upgrade(engine)
            await seeded(engine)
            found = await in_session(engine, kind, reads)
            await in_session(engine, kind, lambda s: fold_batch(s, batch(), NOW, READERS))
            seen.append((found, await tables(engine)))
        finally:
            await engine.dispose()
    (core_reads, core_tables), (raw_reads, raw_tables) = seen
    assert raw_tables == core_tables
    assert raw_reads == {name: _only(rows, raw_reads[name]) for name, rows in core_reads.items()}


def _only(core: Any, raw: Any) -> Any:
    """The Core session's rows cut to the columns the raw one reads (it skips the task
    columns an ingest never changes: request, owner, model, times of creation)."""
    if isinstance(core, dict) and isinstance(raw, dict) and core.keys() == raw.keys():
        return {key: _only(core[key], raw[key]) for key in core}
    if isinstance(core, list) and isinstance(raw, list) and len(core) == len(raw):
        return [_only(c, r) for c, r in zip(core, raw, strict=True)]
    if isinstance(core, dict) and isinstance(raw, dict):
        return {key: core.get(key) for key in raw}
    return core
