"""The spool's drain past one bad entry: an entry that keeps failing goes to quarantine
(kept, counted, listed) and those after it drain on; an unavailable database is waited
out however long; what no longer reads or decodes is still kept; an operator replays;
`/readyz` says how many wait, and stays 200."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest

from receiver import spool as spool_module
from receiver.metrics import ReceiverMetrics
from receiver.spool import MAX_ATTEMPTS, Spool
from schemas.clock import utc_now
from schemas.errors import ConstraintViolation, StorageUnavailable, ValueRefused
from schemas.ledger import Delivery, Reader, Stored
from schemas.settings import SpoolSettings
from schemas.spool_file import SpoolFile, encode, quarantined, replay_quarantined, spool_directory
from schemas.store import LedgerStore, NewTask
from schemas.wire import Kind
from tests.receiver.test_spool import READER, Switched, delivery, keep, stored_keys
from tests.support.databases import migrated_engine, temporary_database
from tests.support.service import running_service, settings_for
from tests.support.waiting import until

READERS = {"apidot": READER}


class Flaky:
    """The real store behind faults: a batch holding a `poisoned` key fails with an error
    of the code's, not the database's; the next `fail_next` batches fail the same way;
    the next `refuse_next` batches are refused as by a database that takes no writes."""

    def __init__(self, store: LedgerStore) -> None:
        self.store = store
        self.poisoned: set[str] = set()
        self.poison: Exception = RuntimeError("poisoned")
        self.fail_next = 0
        self.refuse_next = 0
        self.tries = 0
        self.committed: list[str] = []

    async def ingest(self, deliveries: Sequence[Delivery]) -> list[Stored]:
        self.tries += 1
        if self.refuse_next:
            self.refuse_next -= 1
            raise StorageUnavailable("database error: ReadOnlySQLTransactionError")
        if self.fail_next or any(d.delivery_key in self.poisoned for d in deliveries):
            self.fail_next = max(0, self.fail_next - 1)
            raise self.poison
        stored = await self.store.ingest(deliveries)
        self.committed += [d.delivery_key for d in deliveries]
        return stored

    async def ping(self) -> str | None:
        return await self.store.ping()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries without the production pause (the tests wait on conditions, not on it)."""
    monkeypatch.setattr(spool_module, "RETRY_SECONDS", 0.01)


@pytest.fixture
async def postgres_url(tmp_path: Path) -> AsyncIterator[str]:
    """A PostgreSQL database: the one backend a receiver keeps a spool for."""
    async with temporary_database("postgresql", tmp_path) as url:
        yield url


async def set_aside(directory: Path, *sent: Delivery) -> None:
    """Put `sent` in quarantine in a spool file of `directory`, as a drain that gave up on
    each would (no receiver holds the file afterwards)."""
    os.makedirs(directory, exist_ok=True)
    file = await SpoolFile.hold(directory / "spool-0.sqlite")
    assert file is not None
    try:
        await file.append([encode(d) for d in sent])
        entries, _ = await file.oldest(len(sent), READERS)
        for entry in entries:
            await file.quarantine(entry, "RuntimeError: poisoned", MAX_ATTEMPTS, datetime.now(UTC))
    finally:
        await file.release()


def new_spool(directory: Path, metrics: ReceiverMetrics, readers: dict[str, Reader]) -> Spool:
    return Spool(directory, 1 << 20, readers, metrics, drain_batch_size=4)


async def drain(
    tmp_path: Path,
    ledger: Flaky | Switched,
    sent: list[Delivery],
    metrics: ReceiverMetrics | None = None,
    readers: dict[str, Reader] = READERS,
) -> Spool:
    """Spool `sent` while the ledger is thought down, then drain it to the end."""
    spool = new_spool(tmp_path, metrics or ReceiverMetrics(), readers)
    await spool.start(ledger, lambda _n: None)
    try:
        spool.note_down("test")
        await keep(spool, *sent)
        await until(lambda: spool.depth == 0)
    finally:
        await spool.stop()
    return spool


def sample(metrics: ReceiverMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(RuntimeError("poisoned"), id="bug"),
        pytest.param(ConstraintViolation("poisoned"), id="unique-key-every-try"),
        pytest.param(ValueRefused("poisoned"), id="a-value-the-database-refuses"),
    ],
)
async def test_a_delivery_that_keeps_failing_is_quarantined_and_the_rest_drain_in_order(
    store: LedgerStore, tmp_path: Path, error: Exception
) -> None:
    await store.register(NewTask(provider="apidot", provider_task_id="t-1"))
    sent = [delivery("t-1", "running", p) for p in (10, 20, 30, 40, 50)]
    ledger, metrics = Flaky(store), ReceiverMetrics()
    ledger.poisoned.add(sent[1].delivery_key)
    ledger.poison = error
    spool = await drain(tmp_path, ledger, sent, metrics)
    assert ledger.committed == [d.delivery_key for d in sent if d is not sent[1]]
    assert sorted(await stored_keys(store)) == sorted(ledger.committed)
    [kept] = await quarantined(tmp_path)
    assert (kept.delivery_key, kept.attempts) == (sent[1].delivery_key, MAX_ATTEMPTS)
    assert kept.error == f"{type(error).__name__}: poisoned"
    assert spool.quarantined == 1
    assert sample(metrics, "taskledger_spool_quarantined_total", provider="apidot") == 1
    assert sample(metrics, "taskledger_spool_quarantine_depth") == 1


async def test_a_quarantined_delivery_is_kept_whole(store: LedgerStore, tmp_path: Path) -> None:
    sent = delivery("t-1", "running", 10)
    ledger = Flaky(store)
    ledger.poisoned.add(sent.delivery_key)
    await drain(tmp_path, ledger, [sent])
    with sqlite3.connect(tmp_path / "spool-0.sqlite") as file:
        row = file.execute("SELECT body, received_at FROM quarantined").fetchone()
        assert file.execute("SELECT count(*) FROM spooled").fetchone() == (0,)
    assert row == (sent.body, sent.received_at.isoformat())


async def test_an_error_that_passes_is_retried_and_nothing_is_quarantined(
    store: LedgerStore, tmp_path: Path
) -> None:
    await store.register(NewTask(provider="apidot", provider_task_id="t-1"))
    sent = [delivery("t-1", "running", p) for p in (10, 20, 30)]
    ledger = Flaky(store)
    ledger.fail_next = MAX_ATTEMPTS - 1
    spool = await drain(tmp_path, ledger, sent)
    assert ledger.committed == [d.delivery_key for d in sent]
    assert sorted(await stored_keys(store)) == sorted(ledger.committed)
    assert await quarantined(tmp_path) == []
    assert spool.quarantined == 0


async def test_a_database_refusing_writes_is_waited_out_and_counts_no_attempt(
    store: LedgerStore, tmp_path: Path
) -> None:
    await store.register(NewTask(provider="apidot", provider_task_id="t-1"))
    sent = [delivery("t-1", "running", p) for p in (10, 20, 30)]
    ledger = Flaky(store)
    ledger.refuse_next = 3 * MAX_ATTEMPTS
    await drain(tmp_path, ledger, sent)
    assert ledger.tries > 3 * MAX_ATTEMPTS
    assert ledger.committed == [d.delivery_key for d in sent]
    assert sorted(await stored_keys(store)) == sorted(ledger.committed)
    assert await quarantined(tmp_path) == []


async def test_a_row_that_no_longer_decodes_is_quarantined_untried(
    store: LedgerStore, tmp_path: Path
) -> None:
    await store.register(NewTask(provider="apidot", provider_task_id="t-1"))
    sent = [delivery("t-1", "running", p) for p in (10, 20, 30)]
    gone = new_spool(tmp_path, ReceiverMetrics(), READERS)
    await gone.start(Switched(), lambda _n: None)
    await keep(gone, *sent)
    await gone.stop()
    with sqlite3.connect(tmp_path / "spool-0.sqlite") as file:  # as another version wrote it
        file.execute(
            "UPDATE spooled SET auth = 'retired' WHERE delivery_key = ?", (sent[1].delivery_key,)
        )
    ledger = Flaky(store)
    spool = new_spool(tmp_path, ReceiverMetrics(), READERS)
    await spool.start(ledger, lambda _n: None)
    try:
        await until(lambda: spool.depth == 0)
    finally:
        await spool.stop()
    assert ledger.committed == [sent[0].delivery_key, sent[2].delivery_key]
    assert sorted(await stored_keys(store)) == sorted(ledger.committed)
    [kept] = await quarantined(tmp_path)
    assert (kept.delivery_key, kept.attempts) == (sent[1].delivery_key, 0)
    assert kept.error.startswith("ValueError: 'retired'")


@pytest.mark.parametrize(
    "readers",
    [
        pytest.param({}, id="provider-gone"),
        pytest.param({"apidot": Reader(cast(Kind, "retired-format"))}, id="reader-fails"),
    ],
)
async def test_a_delivery_that_can_no_longer_be_read_is_stored_raw(
    store: LedgerStore, tmp_path: Path, readers: dict[str, Reader]
) -> None:
    await store.register(NewTask(provider="apidot", provider_task_id="t-1"))
    sent = delivery("t-1", "finished", 100)
    metrics = ReceiverMetrics()
    await drain(tmp_path, Switched(store, down=False), [sent], metrics, readers)
    assert await stored_keys(store) == [sent.delivery_key]
    assert sample(metrics, "taskledger_spool_drained_total", outcome="unrecognized") == 1
    assert await quarantined(tmp_path) == []


async def test_an_operator_replay_stores_a_quarantined_delivery_and_keeps_its_row(
    store: LedgerStore, tmp_path: Path
) -> None:
    task = await store.register(NewTask(provider="apidot", provider_task_id="t-1"))
    sent = delivery("t-1", "finished", 100)
    ledger = Flaky(store)
    ledger.poisoned.add(sent.delivery_key)
    spool = await drain(tmp_path, ledger, [sent])
    [replayed] = await replay_quarantined(tmp_path, store, READERS)
    assert (replayed.entry.delivery_key, replayed.outcome) == (sent.delivery_key, "applied")
    stored = await store.get(task.ref)
    assert stored is not None
    assert stored.state == "succeeded"
    assert await quarantined(tmp_path) == []
    with sqlite3.connect(tmp_path / "spool-0.sqlite") as file:
        assert file.execute("SELECT outcome FROM quarantined").fetchall() == [("applied",)]
    await spool.adopt()
    assert spool.quarantined == 0


async def test_a_replay_that_fails_again_leaves_the_delivery_in_quarantine(
    store: LedgerStore, tmp_path: Path
) -> None:
    sent = delivery("t-1", "running", 10)
    ledger = Flaky(store)
    ledger.poisoned.add(sent.delivery_key)
    await drain(tmp_path, ledger, [sent])
    [replayed] = await replay_quarantined(tmp_path, ledger, READERS)
    assert replayed.outcome is None
    [kept] = await quarantined(tmp_path)
    assert kept.attempts == MAX_ATTEMPTS + 1
    assert await stored_keys(store) == []


async def test_a_spool_file_sqlite_cannot_open_is_passed_over(tmp_path: Path) -> None:
    (tmp_path / "spool-0.sqlite").write_bytes(b"\x5a" * 8192)
    spool = new_spool(tmp_path, ReceiverMetrics(), READERS)
    await spool.start(Switched(), lambda _n: None)
    try:
        spool.note_down("test")
        await keep(spool, delivery("t-1", "running", 10))
        assert spool.depth == 1
    finally:
        await spool.stop()
    assert (tmp_path / "spool-1.sqlite").exists()
    assert (tmp_path / "spool-0.sqlite").read_bytes() == b"\x5a" * 8192


@pytest.mark.parametrize(
    ("waiting", "answer"),
    [
        pytest.param(0, {"status": "ready"}, id="none"),
        pytest.param(2, {"status": "ready", "quarantined": 2}, id="two"),
    ],
)
async def test_readiness_says_how_many_deliveries_wait_in_quarantine_and_stays_200(
    postgres_url: str, tmp_path: Path, waiting: int, answer: dict[str, object]
) -> None:
    settings = settings_for(postgres_url, spool=SpoolSettings(dir=str(tmp_path / "spool")))
    sent = [delivery(f"t-{i}", "running", 10) for i in range(waiting)]
    await set_aside(spool_directory(settings), *sent)
    async with running_service(settings, utc_now) as service:
        readiness = await service.http.get("/readyz")
    assert (readiness.status_code, readiness.json()) == (200, answer)


class Behind:
    """The real store, answering pings as a database at an older migration would until
    `migrated`: what a receiver started during an outage may find when it comes back."""

    def __init__(self, store: LedgerStore) -> None:
        self.store = store
        self.migrated = False
        self.pings = 0
        self.ingested = 0

    async def ingest(self, deliveries: Sequence[Delivery]) -> list[Stored]:
        self.ingested += len(deliveries)
        return await self.store.ingest(deliveries)

    async def ping(self) -> str | None:
        self.pings += 1
        return await self.store.ping() if self.migrated else "0001"


async def test_the_drain_replays_nothing_into_a_database_not_at_the_newest_migration(
    tmp_path: Path,
) -> None:
    async with migrated_engine("sqlite", tmp_path) as engine:
        ledger = Behind(LedgerStore(engine, utc_now))
        spool = new_spool(tmp_path / "spool", ReceiverMetrics(), READERS)
        await spool.start(ledger, lambda _n: None)
        try:
            spool.note_down("test")
            await keep(spool, delivery("t-1", "running", 10), delivery("t-1", "running", 20))
            await until(lambda: ledger.pings >= 3)
            assert (ledger.ingested, spool.depth) == (0, 2)
            ledger.migrated = True
            await until(lambda: spool.depth == 0)
            kept = await stored_keys(ledger.store)
        finally:
            await spool.stop()
            await ledger.store.close()
    assert ledger.ingested == 2
    assert len(kept) == 2
