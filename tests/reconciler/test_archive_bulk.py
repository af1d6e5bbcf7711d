"""The archiver with thousands of outputs on both backends: those it cannot or will not fetch
are settled in bulk, a few short write transactions for thousands of rows, while other
writers keep their turn; a task's outputs past the archive's limit are failed, saying why."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import timedelta
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from reconciler.archiver import Archiver
from reconciler.fetch import FetchLimits, SafeFetcher
from reconciler.metrics import ReconcilerMetrics
from schemas.addresses import AddressPolicy
from schemas.clock import utc_now
from schemas.database import create_engine
from schemas.errors import ConfigError
from schemas.ledger import Poll
from schemas.media.storage import LocalStore
from schemas.settings import ANSWER_DEADLINE_SECONDS, ArchiveSettings, ProviderSettings, Settings
from schemas.states import State
from schemas.store import ArtifactState, Attempt, LedgerStore, NewTask
from schemas.tables import MESSAGE
from schemas.wire import Observation, WireFormat
from schemas.write_deadline import WriteBusy, write_deadline
from tests.conftest import FakeClock
from tests.reconciler.test_archiver import Media
from tests.support.servers import serve
from tests.support.waiting import eventually, until

OUTPUTS = 2_000
# At least this many outputs settled, on average, by each write transaction of the archiver.
OUTPUTS_PER_WRITE = 100
WITHIN_SECONDS = 60.0
ONE_SECOND = timedelta(seconds=1)
POLICY = AddressPolicy(allow_http=True, allowed_networks=(ip_network("127.0.0.0/8"),))
SECRETS = {"TASKLEDGER_CALLBACK_SECRETS": "c" * 32, "TASKLEDGER_ADMIN_TOKEN": "a" * 32}


def archiver(ledger: LedgerStore, tmp_path: Path, clock: FakeClock, **settings: Any) -> Archiver:
    """Four workers, as by default, on the ledger and a local store."""
    archive = ArchiveSettings(url=str(tmp_path / "media"), allow_http=True, **settings)
    return Archiver(
        archive,
        {"apidot": ProviderSettings("apidot", WireFormat.APIDOT, archive=True)},
        ledger,
        LocalStore(tmp_path / "media"),
        SafeFetcher(POLICY, FetchLimits(max_bytes=1 << 20, read_timeout_seconds=5)),
        owner="archiver-test",
        clock=clock,
        metrics=ReconcilerMetrics(),
        stopping=asyncio.Event(),
    )


async def succeeded(
    ledger: LedgerStore, clock: FakeClock, urls: list[str], expires_in: float = 600
) -> str:
    """A succeeded `apidot` task (signed word: its outputs are planned) with `urls`."""
    task = await ledger.register(NewTask(provider="apidot", provider_task_id="t-many"))
    result: dict[str, object] = {
        "expires_at": (clock() + timedelta(seconds=expires_in)).isoformat()
    }
    observation = Observation("t-many", State.SUCCEEDED, 100, tuple(urls), extra=result)
    await ledger.ingest([Poll(task.ref, clock(), None, observation=observation, http_status=200)])
    return task.ref


async def expired(ledger: LedgerStore, clock: FakeClock, count: int) -> str:
    """A task whose `count` outputs' URLs expired before the archiver saw them."""
    urls = [f"https://cdn.example.com/out/{n}.png?sig=s" for n in range(count)]
    ref = await succeeded(ledger, clock, urls, expires_in=60)
    clock.advance(2 * 3600)
    return ref


@contextmanager
def write_transactions(engine: AsyncEngine) -> Iterator[list[int]]:
    """Counts the write transactions begun on `engine` in the block (read-only ones aside)."""
    begun = [0]

    def on_begin(conn: sa.Connection) -> None:
        if not conn.get_execution_options().get("taskledger_read_only", False):
            begun[0] += 1

    sa.event.listen(engine.sync_engine, "begin", on_begin)
    try:
        yield begun
    finally:
        sa.event.remove(engine.sync_engine, "begin", on_begin)


async def drain(worker: Archiver) -> None:
    """A worker's loop without its idling: one artifact a claim until nothing is left."""
    async with asyncio.timeout(WITHIN_SECONDS):
        while await worker.run_batch(limit=1):
            pass


async def drained(worker: Archiver, engine: AsyncEngine) -> int:
    """`drain` the worker, then close it; how many write transactions it began."""
    try:
        with write_transactions(engine) as begun:
            await drain(worker)
    finally:
        await worker.fetcher.aclose()
    return begun[0]


async def test_expired_outputs_are_marked_missed_in_a_few_write_transactions(
    archive_ledger: LedgerStore, engine: AsyncEngine, tmp_path: Path, clock: FakeClock
) -> None:
    ref = await expired(archive_ledger, clock, OUTPUTS)
    worker = archiver(archive_ledger, tmp_path, clock, max_outputs_per_task=OUTPUTS)
    writes = await drained(worker, engine)
    rows = await archive_ledger.artifacts(ref)
    assert {row.state for row in rows} == {"missed"}
    assert {row.last_error for row in rows} == {"the source expired before it was archived"}
    assert len(rows) == OUTPUTS
    assert writes <= OUTPUTS / OUTPUTS_PER_WRITE
    assert worker.metrics.archive_missed.labels("apidot")._value.get() == OUTPUTS


async def test_an_output_tried_before_it_expired_is_missed_with_its_last_error(
    archive_ledger: LedgerStore, tmp_path: Path, clock: FakeClock
) -> None:
    ref = await succeeded(archive_ledger, clock, ["https://cdn.example.com/v.mp4"], 60)
    (job,) = await archive_ledger.claim_artifacts("earlier", 1, 10)
    retry = Attempt(ArtifactState.PENDING, error="timeout: slow", retry_at=clock() + ONE_SECOND)
    assert await archive_ledger.record_attempt(job.artifact.id, "earlier", retry)
    clock.advance(61)
    worker = archiver(archive_ledger, tmp_path, clock)
    try:
        await drain(worker)
    finally:
        await worker.fetcher.aclose()
    (artifact,) = await archive_ledger.artifacts(ref)
    assert (artifact.state, artifact.attempts) == ("missed", 2)
    assert artifact.last_error == "the source expired before it was archived: timeout: slow"


class Registrar:
    """Registers tasks one after another, as the receiver does from its own process: a
    thread with its own event loop and engine meets the archiver only at the database's
    write lock. Each registration has the receiver's answer deadline; `most_overtaken` is
    the most write transactions counted in `others` that began while one was waiting."""

    def __init__(self, database_url: str, others: list[int]) -> None:
        self.database_url = database_url
        self.others = others
        self.registered = 0
        self.most_overtaken = 0
        self.refused: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._register()))

    def __enter__(self) -> Registrar:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=WITHIN_SECONDS)

    async def _register(self) -> None:
        engine = create_engine(self.database_url)
        store = LedgerStore(engine, utc_now)
        try:
            while not self._stop.is_set():
                await self._one(store)
        finally:
            await store.close()
            await engine.dispose()

    async def _one(self, store: LedgerStore) -> None:
        before = self.others[0]
        with write_deadline(asyncio.get_running_loop().time() + ANSWER_DEADLINE_SECONDS):
            try:
                await store.register(NewTask(provider="apidot"))
            except WriteBusy as exc:
                self.refused.append(str(exc))
        self.most_overtaken = max(self.most_overtaken, self.others[0] - before)
        self.registered += 1


async def test_settling_expired_outputs_leaves_other_writers_their_turn(
    archive_ledger: LedgerStore,
    engine: AsyncEngine,
    database_url: str,
    tmp_path: Path,
    clock: FakeClock,
) -> None:
    ref = await expired(archive_ledger, clock, OUTPUTS)
    worker = archiver(archive_ledger, tmp_path, clock, max_outputs_per_task=OUTPUTS)

    async def settled() -> bool:
        return all(row.state == "missed" for row in await archive_ledger.artifacts(ref))

    with write_transactions(engine) as archiving, Registrar(database_url, archiving) as registrar:
        await until(lambda: registrar.registered > 0, within=WITHIN_SECONDS)
        running = asyncio.create_task(worker.run())
        try:
            await eventually(settled, within=WITHIN_SECONDS, every=0.05)
            during = registrar.registered
            await until(lambda: registrar.registered > during, within=WITHIN_SECONDS)
        finally:
            worker.stopping.set()
            await running
            await worker.fetcher.aclose()
    assert registrar.refused == []
    # Behind no stream of the archiver's writes: no more of them than it has workers.
    assert registrar.most_overtaken <= worker.settings.concurrency


@pytest.fixture
async def media_url() -> AsyncIterator[str]:
    async with serve(Media().app()) as url:
        yield url


async def test_outputs_past_the_limit_are_failed_saying_why_and_the_first_archived(
    archive_ledger: LedgerStore,
    engine: AsyncEngine,
    tmp_path: Path,
    clock: FakeClock,
    media_url: str,
) -> None:
    limit, count = 10, 1_000
    ref = await succeeded(archive_ledger, clock, [f"{media_url}/v.mp4?n={n}" for n in range(count)])
    worker = archiver(archive_ledger, tmp_path, clock, max_outputs_per_task=limit)
    writes = await drained(worker, engine)
    rows = await archive_ledger.artifacts(ref)
    assert [row.state for row in rows] == ["archived"] * limit + ["failed"] * (count - limit)
    (reason,) = {row.last_error for row in rows[limit:]}
    assert reason is not None
    assert "TASKLEDGER_ARCHIVE_MAX_OUTPUTS_PER_TASK" in reason
    assert f"first {limit}" in reason
    assert {row.attempts for row in rows[limit:]} == {0}  # never fetched
    # Each archived output takes a claim and a record; those past the limit a handful.
    assert writes <= 2 * limit + count / OUTPUTS_PER_WRITE
    assert await archived_events(engine) == 1


async def test_the_limit_holds_for_outputs_that_expired_too(
    archive_ledger: LedgerStore, tmp_path: Path, clock: FakeClock
) -> None:
    ref = await expired(archive_ledger, clock, 30)
    worker = archiver(archive_ledger, tmp_path, clock, max_outputs_per_task=20)
    try:
        await drain(worker)
    finally:
        await worker.fetcher.aclose()
    states = [row.state for row in await archive_ledger.artifacts(ref)]
    assert states == ["missed"] * 20 + ["failed"] * 10


async def archived_events(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        query = sa.select(sa.func.count()).where(MESSAGE.c.event_type == "task.archived")
        return int(await conn.scalar(query) or 0)


def test_the_limit_is_a_hundred_outputs_unless_set() -> None:
    assert Settings.from_environ(SECRETS).archive.max_outputs_per_task == 100
    environ = SECRETS | {"TASKLEDGER_ARCHIVE_MAX_OUTPUTS_PER_TASK": "5000"}
    assert Settings.from_environ(environ).archive.max_outputs_per_task == 5000


@pytest.mark.parametrize("value", ["0", "-3", "lots", "2.5", "inf"])
def test_a_bad_limit_names_its_variable(value: str) -> None:
    environ = SECRETS | {"TASKLEDGER_ARCHIVE_MAX_OUTPUTS_PER_TASK": value}
    with pytest.raises(ConfigError) as raised:
        Settings.from_environ(environ)
    (line,) = str(raised.value).splitlines()
    assert line.startswith("TASKLEDGER_ARCHIVE_MAX_OUTPUTS_PER_TASK ")
