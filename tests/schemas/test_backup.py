"""Online backups of the SQLite ledger: a consistent, checked copy while writers keep going."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ops.cli import main
from schemas.database import create_engine
from schemas.ledger import Auth, Delivery
from schemas.migrate import upgrade
from schemas.states import State
from schemas.store import BackupReport, LedgerStore, NewTask, backup_sqlite
from schemas.wire import Observation
from tests.conftest import FakeClock

MAX_WRITES = 2_000


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[tuple[Path, LedgerStore]]:
    """A migrated SQLite ledger file and a store writing to it."""
    path = tmp_path / "ledger.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    await upgrade(engine)
    yield path, LedgerStore(engine, FakeClock())
    await engine.dispose()


async def write_one(store: LedgerStore, n: int) -> None:
    """Register a task and fold in one callback for it."""
    row = await store.register(NewTask(provider="apidot", provider_task_id=f"t-{n}"))
    delivery = Delivery(
        provider="apidot",
        delivery_key=f"k-{n}",
        body=b'{"status": "running"}',
        headers={},
        auth=Auth.TOKEN,
        observation=Observation(f"t-{n}", State.RUNNING, 10),
        received_at=store.clock(),
        task_ref=str(row.ref),
    )
    await store.ingest([delivery])


def printed_counts(out: str) -> dict[str, str]:
    """What `db backup` printed beside each name, its checks and its tables."""
    lines = [line.split() for line in out.splitlines() if line.startswith("  ")]
    return {words[0]: " ".join(words[1:]) for words in lines}


def tables_of(path: Path) -> set[str]:
    """The tables in a SQLite file, the migrations' bookkeeping aside."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        names = {
            name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
    return names - {"alembic_version", "sqlite_sequence"}


async def backup_while_writing(store: LedgerStore, source: Path, target: Path) -> BackupReport:
    """Start the copy after some writes, keep writing until it is done (bounded)."""
    for n in range(20):
        await write_one(store, n)
    copy = asyncio.create_task(asyncio.to_thread(backup_sqlite, source, target))
    n = 20
    while not copy.done() and n < MAX_WRITES:
        await write_one(store, n)
        n += 1
    return await copy


async def test_backup_while_writing_is_a_checked_consistent_copy(
    live: tuple[Path, LedgerStore], tmp_path: Path
) -> None:
    source, store = live
    report = await backup_while_writing(store, source, tmp_path / "copy.db")
    assert (report.integrity, report.foreign_key_faults) == ("ok", 0)
    counts = report.counts
    assert 20 <= counts["task"] == counts["delivery"] <= MAX_WRITES
    # Each write appends two transitions: submitted, then running.
    assert counts["transition"] == 2 * counts["task"]


async def test_backup_copy_opens_with_the_store_and_every_transition_has_its_task(
    live: tuple[Path, LedgerStore], tmp_path: Path
) -> None:
    source, store = live
    report = await backup_while_writing(store, source, tmp_path / "copy.db")
    engine = create_engine(f"sqlite+aiosqlite:///{report.path}")
    try:
        copy = LedgerStore(engine, FakeClock())
        summary = await copy.summary()
        feed = await copy.changes(after=0, limit=MAX_WRITES * 3)
    finally:
        await engine.dispose()
    assert summary["tasks"] == report.counts["task"]
    assert len(feed) == report.counts["transition"]


async def test_backup_command_prints_the_foreign_key_check_and_every_tables_count(
    live: tuple[Path, LedgerStore],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source, store = live
    await write_one(store, 1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TASKLEDGER_DATABASE_URL", f"sqlite:///{source}")
    code = await asyncio.to_thread(main, ["db", "backup", str(tmp_path / "copy.db")])
    printed = printed_counts(capsys.readouterr().out)
    assert code == 0
    assert printed.pop("integrity_check") == "ok"
    assert printed.pop("foreign_key_check") == "ok"
    assert set(printed) == tables_of(tmp_path / "copy.db")
    assert (printed["task"], printed["delivery"], printed["transition"]) == ("1", "1", "2")
    assert (printed["observation"], printed["api_key"], printed["idempotency_key"]) == ("0",) * 3


async def test_backup_of_a_ledger_at_an_older_migration_names_the_tables_it_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "ledger.db"
    engine = create_engine(f"sqlite+aiosqlite:///{source}")
    await upgrade(engine, "0006")  # before API keys and idempotency keys
    await engine.dispose()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TASKLEDGER_DATABASE_URL", f"sqlite:///{source}")
    code = await asyncio.to_thread(main, ["db", "backup", str(tmp_path / "copy.db")])
    printed = printed_counts(capsys.readouterr().out)
    assert code == 0
    assert (printed["task"], printed["api_key"], printed["idempotency_key"]) == (
        "0",
        "absent",
        "absent",
    )


def test_backup_command_refuses_an_existing_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "copy.db").write_bytes(b"keep me")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TASKLEDGER_DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    assert main(["db", "backup", str(tmp_path / "copy.db")]) == 1
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "copy.db").read_bytes() == b"keep me"


def test_backup_command_refuses_postgresql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TASKLEDGER_DATABASE_URL", "postgresql://ledger:secret@db.internal/ledger")
    assert main(["db", "backup", str(tmp_path / "copy.db")]) == 2
    err = capsys.readouterr().err
    assert "use pg_dump" in err
    assert "secret" not in err
    assert not (tmp_path / "copy.db").exists()


def test_backup_of_a_missing_database_fails_without_creating_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TASKLEDGER_DATABASE_URL", f"sqlite:///{tmp_path / 'missing.db'}")
    assert main(["db", "backup", str(tmp_path / "copy.db")]) == 1
    assert "backup failed" in capsys.readouterr().err
    assert not (tmp_path / "missing.db").exists()
