"""The SQLite ingest's committer thread: each COMMIT answered on its caller's loop."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.store.sqlite_ingest import Committer


@pytest.fixture
def committer() -> Iterator[Committer]:
    running = Committer()
    yield running
    running.stop()


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
    return conn


def _count(path: Path) -> int:
    with sqlite3.connect(path) as reader:
        (count,) = reader.execute("SELECT count(*) FROM t").fetchone()
    return int(count)


async def test_committer_commits_the_transaction_off_the_loop_thread(
    committer: Committer, tmp_path: Path
) -> None:
    conn = _connect(tmp_path / "ledger.db")
    committed_on: list[str] = []
    conn.set_trace_callback(
        lambda sql: (
            committed_on.append(threading.current_thread().name) if sql == "COMMIT" else None
        )
    )
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t VALUES (1)")

    await committer.commit(conn)

    assert _count(tmp_path / "ledger.db") == 1
    assert committed_on == ["taskledger-commit"]


async def test_committer_hands_a_failed_commit_back_to_its_caller(
    committer: Committer, tmp_path: Path
) -> None:
    conn = _connect(tmp_path / "ledger.db")  # no transaction open: COMMIT fails

    with pytest.raises(sqlite3.OperationalError):
        await committer.commit(conn)


async def test_committer_serves_the_next_commit_after_a_failed_one(
    committer: Committer, tmp_path: Path
) -> None:
    conn = _connect(tmp_path / "ledger.db")
    with pytest.raises(sqlite3.OperationalError):
        await committer.commit(conn)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t VALUES (1)")

    await committer.commit(conn)

    assert _count(tmp_path / "ledger.db") == 1


async def test_committer_stops_after_the_commits_queued_before(tmp_path: Path) -> None:
    committer = Committer()
    conn = _connect(tmp_path / "ledger.db")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t VALUES (1)")
    done = committer.commit(conn)

    await asyncio.to_thread(committer.stop)

    await asyncio.wait_for(done, timeout=10)
    assert _count(tmp_path / "ledger.db") == 1
