"""`taskledger db refold`: an upgrade that learns a provider's new status word recovers
the deliveries an older version kept as unrecognized, once, however often it runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from ops import cli
from schemas.database import create_engine
from schemas.ledger import Auth, Delivery, Reader, read_delivery
from schemas.migrate import upgrade
from schemas.states import Outcome, State
from schemas.store import LedgerStore, NewTask
from schemas.tables import TRANSITION
from schemas.wire import WireFormat, registry
from tests.conftest import FakeClock
from tests.support.senders import apidot_body

READERS = {"apidot": Reader(WireFormat.APIDOT)}
NEW_WORD = "rendering"


def _callback(ref: str, body: bytes, clock: FakeClock) -> Delivery:
    raw = Delivery(
        "apidot", f"k-{len(body)}-{hash(body)}", body, {}, Auth.TOKEN, None, clock(), ref
    )
    return read_delivery(raw, READERS["apidot"])


async def _kept_unrecognized(engine: AsyncEngine, clock: FakeClock) -> str:
    """What the old version did: the new word could not be read, so it was kept raw."""
    store = LedgerStore(engine, clock, READERS)
    try:
        row = await store.register(NewTask("apidot", provider_task_id="t-1"))
        results = await store.ingest([_callback(row.ref, apidot_body("t-1", NEW_WORD, 40), clock)])
    finally:
        await store.close()
    assert [r.outcome for r in results] == [Outcome.UNRECOGNIZED]
    return str(row.ref)


def _upgrade_learns_the_word(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.DEFINITIONS[WireFormat.APIDOT].states, NEW_WORD, State.RUNNING)


async def _transitions(engine: AsyncEngine, ref: str) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.scalars(
            sa.select(TRANSITION.c.to_state).where(TRANSITION.c.task_ref == ref)
        )
        return list(rows)


async def test_refold_after_an_upgrade_recovers_the_kept_delivery_once(
    engine: AsyncEngine, database_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = await _kept_unrecognized(engine, clock)
    _upgrade_learns_the_word(monkeypatch)
    environ = {"TASKLEDGER_DATABASE_URL": database_url, "TASKLEDGER_PROVIDERS": "apidot"}
    first = await cli._refold(environ, None, None, dry_run=False)
    again = await cli._refold(environ, None, None, dry_run=False)
    assert first == {"seen": 1, "applied": 1}
    assert again == {"seen": 0}
    store = LedgerStore(engine, clock, READERS)
    task = await store.get(ref)
    timeline = await store.timeline(ref)
    await store.close()
    assert task is not None
    assert (task.state, task.progress) == (State.RUNNING.value, 40)
    assert [d.outcome for d in timeline.deliveries] == [Outcome.APPLIED.value]
    assert await _transitions(engine, ref) == ["submitted", "running"]


async def test_refold_dry_run_reports_and_changes_nothing(
    engine: AsyncEngine, database_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = await _kept_unrecognized(engine, clock)
    _upgrade_learns_the_word(monkeypatch)
    environ = {"TASKLEDGER_DATABASE_URL": database_url, "TASKLEDGER_PROVIDERS": "apidot"}
    assert await cli._refold(environ, None, None, dry_run=True) == {"seen": 1, "applied": 1}
    assert await _transitions(engine, ref) == ["submitted"]
    # Another configured provider's deliveries only: this one's are left alone.
    both = environ | {"TASKLEDGER_PROVIDERS": "apidot,vidgo"}
    assert await cli._refold(both, "vidgo", None, dry_run=False) == {"seen": 0}


async def test_refold_without_an_upgrade_keeps_them_unrecognized(
    engine: AsyncEngine, database_url: str, clock: FakeClock
) -> None:
    ref = await _kept_unrecognized(engine, clock)
    environ = {"TASKLEDGER_DATABASE_URL": database_url, "TASKLEDGER_PROVIDERS": "apidot"}
    assert await cli._refold(environ, None, None, dry_run=False) == {
        "seen": 1,
        "unrecognized": 1,
    }
    assert await _transitions(engine, ref) == ["submitted"]


def test_db_refold_command_prints_what_it_did(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"

    async def prepare() -> None:
        engine = create_engine(url)
        await upgrade(engine)
        await _kept_unrecognized(engine, FakeClock())
        await engine.dispose()

    asyncio.run(prepare())
    _upgrade_learns_the_word(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TASKLEDGER_DATABASE_URL", url)
    monkeypatch.setenv("TASKLEDGER_PROVIDERS", "apidot")
    assert cli.main(["db", "refold"]) == 0
    out = capsys.readouterr().out
    assert "refolded 1 unrecognized deliveries; 1 now read" in out
