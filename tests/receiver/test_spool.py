"""The local spool: durable appends, the drain into the ledger (in order, idempotent, only
after the ledger committed), its cap, a torn tail, files left by a process that is gone."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import sqlite3
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from receiver.errors import Overloaded
from receiver.metrics import ReceiverMetrics
from receiver.spool import Spool, SpoolFull
from schemas.errors import StorageUnavailable
from schemas.ledger import Auth, Delivery, Stored, parse_payload, read_payload
from schemas.settings import ProviderSettings
from schemas.spool_file import SpoolFile, quarantined
from schemas.store import LedgerStore, NewTask
from schemas.tables import DELIVERY
from schemas.wire import WireFormat
from tests.e2e.test_spool_outage import receiver_environment
from tests.support.senders import WEBHOOK_SECRET, apidot_body, openai_event, signed_headers
from tests.support.servers import free_port, receiver_process
from tests.support.waiting import until

READER = ProviderSettings("apidot", WireFormat.APIDOT).reader
DOWN = StorageUnavailable("database unavailable: ConnectionRefusedError")


class Switched:
    """The ledger behind a switch: while `down`, it fails as an unreachable database does.
    `commit_then_fail` makes the next batch commit and then fail, as when the connection
    breaks while the commit's answer is on its way."""

    def __init__(self, store: LedgerStore | None = None, *, down: bool = True) -> None:
        self.store = store
        self.down = down
        self.commit_then_fail = False
        self.tries = 0
        self.batches: list[list[str]] = []

    async def ingest(self, deliveries: Sequence[Delivery]) -> list[Stored]:
        self.tries += 1
        if self.down or self.store is None:
            raise DOWN
        stored = await self.store.ingest(deliveries)
        self.batches.append([d.delivery_key for d in deliveries])
        if self.commit_then_fail:
            self.commit_then_fail = False
            raise DOWN
        return stored

    async def ping(self) -> str | None:
        self.tries += 1
        if self.down or self.store is None:
            raise DOWN
        return await self.store.ping()


def delivery(task_id: str, status: str, progress: int = 0, task_ref: str | None = None) -> Delivery:
    """An authenticated apidot callback (by the token of `task_ref`, if given), read as the
    callback route reads it."""
    body = apidot_body(task_id, status, progress)
    now = datetime.now(UTC)
    reading = read_payload(READER, parse_payload(body), now)
    return Delivery(
        provider="apidot",
        delivery_key=hashlib.sha256(body).hexdigest(),
        body=body,
        headers={"content-type": "application/json"},
        auth=Auth.TOKEN,
        observation=reading.observation,
        received_at=now,
        task_ref=task_ref,
        task_id=reading.task_id,
        unread=reading.unread,
    )


def new_spool(
    directory: Path, max_bytes: int = 1 << 20, metrics: ReceiverMetrics | None = None
) -> Spool:
    readers = {"apidot": READER}
    return Spool(directory, max_bytes, readers, metrics or ReceiverMetrics(), drain_batch_size=2)


@pytest.fixture
async def started(tmp_path: Path) -> AsyncIterator[tuple[Spool, Switched]]:
    """A spool whose ledger is down (no store behind it at all)."""
    spool, ledger = new_spool(tmp_path), Switched()
    await spool.start(ledger, lambda _n: None)
    yield spool, ledger
    await spool.stop()


async def keep(spool: Spool, *deliveries: Delivery) -> None:
    deadline = asyncio.get_running_loop().time() + 5
    await asyncio.gather(*[spool.keep(d, deadline) for d in deliveries])


def drained(metrics: ReceiverMetrics, outcome: str) -> float:
    labels = {"outcome": outcome}
    return metrics.registry.get_sample_value("taskledger_spool_drained_total", labels) or 0


async def stored_keys(store: LedgerStore) -> list[str]:
    async with store.engine.connect() as conn:
        query = sa.select(DELIVERY.c.delivery_key).order_by(DELIVERY.c.id)
        return list((await conn.execute(query)).scalars())


async def test_kept_deliveries_are_committed_to_the_file_when_keep_returns(
    started: tuple[Spool, Switched], tmp_path: Path
) -> None:
    spool, _ = started
    await keep(spool, *[delivery(f"t-{i}", "running", 50) for i in range(5)])
    with sqlite3.connect(tmp_path / "spool-0.sqlite") as other:
        assert other.execute("SELECT count(*) FROM spooled").fetchone() == (5,)
    assert spool.depth == 5
    assert spool.engaged


async def test_the_drain_replays_deliveries_in_arrival_order_once_the_ledger_answers(
    store: LedgerStore, tmp_path: Path
) -> None:
    task = await store.register(NewTask(provider="apidot", provider_task_id="t-1"))
    sent = [delivery("t-1", s, p) for s, p in [("queued", 0), ("running", 40), ("finished", 100)]]
    spool, ledger = new_spool(tmp_path), Switched(store)
    await spool.start(ledger, lambda _n: None)
    try:
        spool.note_down("test")
        for item in sent:
            await keep(spool, item)
        await until(lambda: ledger.tries >= 1)  # tried, and failed: nothing left the spool
        assert spool.depth == 3
        ledger.down = False
        await until(lambda: spool.depth == 0)
    finally:
        await spool.stop()
    assert [key for batch in ledger.batches for key in batch] == [d.delivery_key for d in sent]
    assert await stored_keys(store) == [d.delivery_key for d in sent]
    stored = await store.get(task.ref)
    assert stored is not None
    assert stored.state == "succeeded"
    assert not spool.engaged


async def test_a_replay_of_a_delivery_stored_already_is_a_duplicate(
    store: LedgerStore, tmp_path: Path
) -> None:
    await store.register(NewTask(provider="apidot", provider_task_id="t-1"))
    item = delivery("t-1", "finished", 100)
    await store.ingest([item])
    metrics = ReceiverMetrics()
    spool, ledger = new_spool(tmp_path, metrics=metrics), Switched(store, down=False)
    await spool.start(ledger, lambda _n: None)
    try:
        await keep(spool, item)
        await until(lambda: spool.depth == 0)
    finally:
        await spool.stop()
    assert drained(metrics, "duplicate") == 1
    assert await stored_keys(store) == [item.delivery_key]


async def test_entries_leave_the_spool_only_after_the_ledger_committed_them(
    store: LedgerStore, tmp_path: Path
) -> None:
    await store.register(NewTask(provider="apidot", provider_task_id="t-1"))
    sent = [delivery("t-1", "running", 40), delivery("t-1", "finished", 100)]
    metrics = ReceiverMetrics()
    spool, ledger = new_spool(tmp_path, metrics=metrics), Switched(store)
    await spool.start(ledger, lambda _n: None)
    try:
        spool.note_down("test")
        await keep(spool, *sent)
        ledger.commit_then_fail = True
        ledger.down = False
        await until(lambda: spool.depth == 0)
    finally:
        await spool.stop()
    assert len(ledger.batches) == 2  # committed, "lost", committed again: duplicates
    assert drained(metrics, "duplicate") == 2
    assert sorted(await stored_keys(store)) == sorted(d.delivery_key for d in sent)


async def test_a_full_spool_refuses_with_503(tmp_path: Path) -> None:
    first, second = delivery("t-1", "running", 40), delivery("t-2", "running", 40)
    spool = new_spool(tmp_path, max_bytes=len(first.body) + 200)
    await spool.start(Switched(), lambda _n: None)
    try:
        await keep(spool, first)
        with pytest.raises(SpoolFull) as refused:
            await keep(spool, second)
    finally:
        await spool.stop()
    assert isinstance(refused.value, Overloaded)
    assert refused.value.status_code == 503
    assert spool.depth == 1


@pytest.mark.parametrize("damage", ["torn", "garbage"])
async def test_a_damaged_tail_is_dropped_and_what_came_before_survives(
    started: tuple[Spool, Switched], tmp_path: Path, damage: str
) -> None:
    spool, _ = started
    await keep(spool, delivery("t-1", "running", 40), delivery("t-2", "running", 40))
    await keep(spool, delivery("t-3", "running", 40))  # the last commit: the log's tail
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for name in ("spool-0.sqlite", "spool-0.sqlite-wal"):  # as a kill -9 leaves them
        shutil.copy(tmp_path / name, crashed / name)
    log = crashed / "spool-0.sqlite-wal"
    if damage == "torn":  # the last frame only partly written
        with log.open("r+b") as wal:
            wal.truncate(log.stat().st_size - 100)
    else:  # bytes past the last frame that were never a frame
        with log.open("ab") as wal:
            wal.write(b"\x5a" * 5000)
    file = await SpoolFile.hold(crashed / "spool-0.sqlite")
    assert file is not None
    try:
        entries, undecodable = await file.oldest(10, {"apidot": READER})
    finally:
        await file.release()
    expected = ["t-1", "t-2"] if damage == "torn" else ["t-1", "t-2", "t-3"]
    assert [e.delivery.provider_task_id for e in entries] == expected
    assert undecodable is None


async def test_a_file_held_by_a_running_process_is_not_adopted(
    started: tuple[Spool, Switched], tmp_path: Path
) -> None:
    spool, _ = started
    await keep(spool, delivery("t-1", "running", 40))
    other = new_spool(tmp_path)
    await other.start(Switched(), lambda _n: None)
    try:
        await keep(other, delivery("t-2", "running", 40))
        assert other.depth == 1  # its own file, not the one held
    finally:
        await other.stop()
    assert (tmp_path / "spool-1.sqlite").exists()


async def test_a_spool_left_by_a_process_that_is_gone_is_adopted_and_drained(
    store: LedgerStore, tmp_path: Path
) -> None:
    await store.register(NewTask(provider="apidot", provider_task_id="t-1"))
    sent = [delivery("t-1", "running", 40), delivery("t-1", "finished", 100)]
    gone = new_spool(tmp_path)
    await gone.start(Switched(), lambda _n: None)
    await keep(gone, *sent)
    await gone.stop()
    committed: list[int] = []
    spool = new_spool(tmp_path)
    await spool.start(Switched(store, down=False), committed.append)
    try:
        await until(lambda: spool.depth == 0)
    finally:
        await spool.stop()
    assert sorted(await stored_keys(store)) == sorted(d.delivery_key for d in sent)
    assert sum(committed) == 2


async def test_a_spooled_delivery_naming_another_task_is_refused_and_quarantined_when_drained(
    store: LedgerStore, tmp_path: Path
) -> None:
    """Not stored (the check a live request makes before its 403), but not dropped either:
    it was answered 202, so its sender will not send it again."""
    mine = await store.register(NewTask(provider="apidot", provider_task_id="t-1"))
    await store.register(NewTask(provider="apidot", provider_task_id="t-2"))
    metrics = ReceiverMetrics()
    spool = new_spool(tmp_path, metrics=metrics)
    await spool.start(Switched(store, down=False), lambda _n: None)
    sent = delivery("t-2", "finished", 100, task_ref=mine.ref)
    try:
        await keep(spool, sent, delivery("t-1", "running", 50, task_ref=mine.ref))
        await until(lambda: spool.depth == 0)
    finally:
        await spool.stop()
    assert drained(metrics, "forbidden") == 1
    assert len(await stored_keys(store)) == 1  # its neighbour
    (aside,) = await quarantined(tmp_path)
    assert (aside.delivery_key, aside.error) == (
        sent.delivery_key,
        "refused when drained: forbidden",
    )
    assert spool.quarantined == 1


async def test_a_receiver_started_with_postgresql_unreachable_serves_and_says_spooling(
    tmp_path: Path,
) -> None:
    """Started during a failover, with a spool: it serves (readiness 200 `spooling`) rather
    than exit 3; a signed callback is kept (202). The drain once PostgreSQL is back is
    `tests/e2e/test_spool_outage.py`'s."""
    url = f"postgresql://taskledger@127.0.0.1:{free_port()}/ledger"
    env = receiver_environment(url, tmp_path / "spool") | {
        "TASKLEDGER_PROVIDERS": "openai",
        "TASKLEDGER_PROVIDER_OPENAI_WEBHOOK_SECRETS": WEBHOOK_SECRET,
    }
    port = free_port()
    body = openai_event("video_1")
    base_url = f"http://127.0.0.1:{port}"
    async with receiver_process(env, port), httpx.AsyncClient(base_url=base_url) as http:
        readiness = await http.get("/readyz")
        headers = signed_headers(body, datetime.now(UTC))
        answer = await http.post("/webhooks/openai", content=body, headers=headers)
    assert (readiness.status_code, readiness.json()["status"]) == (200, "spooling")
    assert (answer.status_code, answer.json()["outcome"]) == (202, "spooled")
