"""`taskledger spool list` and `taskledger spool replay`, run through the CLI's entry point:
the receiver's quarantine listed as a table or JSON lines, replayed into the ledger (exit 1
when a delivery fails again); on SQLite there is no spool; a bad setting is one line."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ops.cli import main
from schemas.database import create_engine
from schemas.migrate import upgrade
from schemas.settings import Settings
from schemas.spool_file import spool_directory
from schemas.store import LedgerStore, NewTask
from tests.conftest import FakeClock
from tests.receiver.test_spool import delivery
from tests.receiver.test_spool_quarantine import set_aside
from tests.support.databases import temporary_database

pytestmark = pytest.mark.usefixtures("receiver_environment")


@pytest.fixture
async def postgres_url(tmp_path: Path) -> AsyncIterator[str]:
    """A PostgreSQL database: the one backend a receiver keeps a spool for."""
    async with temporary_database("postgresql", tmp_path) as url:
        yield url


@pytest.fixture
def receiver_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A receiver's settings, as on its host (no `.env`: the directory is empty)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TASKLEDGER_ADMIN_TOKEN", "admin-token-for-tests")
    monkeypatch.setenv("TASKLEDGER_CALLBACK_SECRETS", "callback-secret")
    monkeypatch.setenv("TASKLEDGER_SPOOL_DIR", str(tmp_path / "spool"))


@pytest.fixture
def ledger_url(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The PostgreSQL ledger of the receiver's settings, migrated."""
    monkeypatch.setenv("TASKLEDGER_DATABASE_URL", postgres_url)
    asyncio.run(_migrated(postgres_url))
    return postgres_url


def spool() -> Path:
    """The receiver's spool directory, as its settings name it."""
    return spool_directory(Settings.from_environ(os.environ))


async def _migrated(url: str) -> None:
    engine = create_engine(url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


async def _registered(url: str, task_id: str) -> str:
    """The ref of a new apidot task with the provider's id `task_id`."""
    engine = create_engine(url)
    store = LedgerStore(engine, FakeClock())
    try:
        return (await store.register(NewTask(provider="apidot", provider_task_id=task_id))).ref
    finally:
        await store.close()
        await engine.dispose()


async def _state(url: str, ref: str) -> str | None:
    engine = create_engine(url)
    store = LedgerStore(engine, FakeClock())
    try:
        task = await store.get(ref)
        return task.state if task is not None else None
    finally:
        await store.close()
        await engine.dispose()


def retire(key: str) -> None:
    """Make a quarantined row one this version no longer reads (another version wrote it)."""
    with sqlite3.connect(spool() / "spool-0.sqlite") as file:
        file.execute("UPDATE quarantined SET auth = 'retired' WHERE delivery_key = ?", (key,))


def test_spool_list_prints_each_quarantined_delivery_as_a_row(
    ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sent = [delivery("t-1", "running", 10), delivery("t-2", "running", 20)]
    asyncio.run(set_aside(spool(), *sent))
    assert main(["spool", "list"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:4] == ["file", "seq", "provider", "task"]
    assert [row.split()[:3] for row in rows] == [
        ["spool-0.sqlite", "1", "apidot"],
        ["spool-0.sqlite", "2", "apidot"],
    ]
    assert [d.delivery_key in row for d, row in zip(sent, rows, strict=True)] == [True, True]
    assert all(row.endswith("RuntimeError: poisoned") for row in rows)


def test_spool_list_json_prints_one_object_per_line(
    ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sent = delivery("t-1", "running", 10)
    asyncio.run(set_aside(spool(), sent))
    assert main(["spool", "list", "--json"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    entry = json.loads(line)
    assert entry["file"] == str(spool() / "spool-0.sqlite")
    assert (entry["seq"], entry["provider"], entry["task_ref"]) == (1, "apidot", None)
    assert (entry["delivery_key"], entry["attempts"]) == (sent.delivery_key, 3)
    assert (entry["error"], entry["replayed_at"], entry["outcome"]) == (
        "RuntimeError: poisoned",
        None,
        None,
    )


def test_spool_replay_stores_each_delivery_and_marks_it_replayed(
    ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = asyncio.run(_registered(ledger_url, "t-1"))
    asyncio.run(set_aside(spool(), delivery("t-1", "finished", 100)))
    assert main(["spool", "replay"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "taskledger: replayed 1 of 1 deliveries from quarantine (applied 1)"
    assert asyncio.run(_state(ledger_url, ref)) == "succeeded"
    assert main(["spool", "list"]) == 0
    assert capsys.readouterr().err.startswith("taskledger: nothing in quarantine in ")
    assert main(["spool", "list", "--all", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["outcome"] == "applied"


def test_spool_replay_exits_1_and_keeps_a_delivery_that_fails_again(
    ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = asyncio.run(_registered(ledger_url, "t-1"))
    stale, good = delivery("t-2", "running", 10), delivery("t-1", "finished", 100)
    asyncio.run(set_aside(spool(), stale, good))
    retire(stale.delivery_key)
    assert main(["spool", "replay", "--json"]) == 1
    captured = capsys.readouterr()
    failed, stored = (json.loads(line) for line in captured.out.splitlines())
    assert (failed["delivery_key"], failed["outcome"]) == (stale.delivery_key, None)
    assert failed["replay_error"].startswith("ValueError: 'retired'")
    assert (stored["delivery_key"], stored["outcome"]) == (good.delivery_key, "applied")
    assert captured.err.splitlines() == [
        "taskledger: replayed 1 of 2 deliveries from quarantine (applied 1);"
        " 1 failed again and stay there"
    ]
    assert asyncio.run(_state(ledger_url, ref)) == "succeeded"
    assert main(["spool", "list", "--json"]) == 0
    [kept] = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert (kept["delivery_key"], kept["attempts"]) == (stale.delivery_key, 4)


def test_spool_replay_into_a_database_not_migrated_is_one_line_and_exit_3(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TASKLEDGER_DATABASE_URL", postgres_url)
    asyncio.run(set_aside(spool(), delivery("t-1", "running", 10)))
    assert main(["spool", "replay"]) == 3
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("taskledger: TASKLEDGER_DATABASE_URL: ")
    assert "is at migration none" in line
    assert line.endswith("run `taskledger db upgrade`")


@pytest.mark.parametrize("command", ["list", "replay"])
def test_spool_commands_on_sqlite_say_there_is_no_spool(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TASKLEDGER_DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    assert main(["spool", command]) == 0
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == (
        "",
        "taskledger: the ledger is SQLite, local already: it has no spool\n",
    )


@pytest.mark.parametrize(
    ("variable", "value", "line"),
    [
        pytest.param(
            "TASKLEDGER_CALLBACK_SECRETS",
            "",
            "taskledger: TASKLEDGER_CALLBACK_SECRETS is required and not set"
            " (comma-separated, newest first)",
            id="missing-secret",
        ),
        pytest.param(
            "TASKLEDGER_SPOOL_MAX_BYTES",
            "lots",
            "taskledger: TASKLEDGER_SPOOL_MAX_BYTES must be a number (got 'lots')",
            id="not-a-number",
        ),
        pytest.param(
            "TASKLEDGER_DATABASE_URL",
            "a database, please",
            "taskledger: TASKLEDGER_DATABASE_URL is not a database URL: use"
            " sqlite:///path/to/ledger.db or postgresql://user@host:5432/name",
            id="not-a-url",
        ),
    ],
)
@pytest.mark.parametrize("command", ["list", "replay"])
def test_a_bad_setting_is_one_line_naming_the_variable_and_exit_2(
    command: str,
    variable: str,
    value: str,
    line: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(variable, value)
    assert main(["spool", command]) == 2
    assert capsys.readouterr().err == line + "\n"
