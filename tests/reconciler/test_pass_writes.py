"""A pass writes its evidence in the background while it polls: it returns once every
write is done, and a write that fails fails the pass (the loop then pauses and retries)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx
import pytest
import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from reconciler import process
from reconciler.clients import ProviderClients
from reconciler.process import Reconciler
from schemas.errors import StorageUnavailable
from schemas.ledger import Evidence, Stored
from schemas.settings import ProviderSettings, Settings
from schemas.store import LedgerStore, NewTask
from schemas.tables import TASK
from schemas.wire import WireFormat
from tests.conftest import FakeClock

TASKS = 23
FLUSH_AT_ITEMS = 5  # so that one pass makes several writes


class SlowStore(LedgerStore):
    """The real store, each write held back a little: later than the polls that follow."""

    async def ingest(self, evidence: Sequence[Evidence]) -> list[Stored]:
        await asyncio.sleep(0.02)
        return await super().ingest(evidence)


class DownStore(LedgerStore):
    """The real store for claims, but every write fails as a database outage does."""

    async def ingest(self, evidence: Sequence[Evidence]) -> list[Stored]:
        raise StorageUnavailable("the database went away")


def _settings() -> Settings:
    provider = ProviderSettings(
        "evolink",
        WireFormat.EVOLINK,
        base_url="https://provider.example",
        expected_seconds=1,
        rate_limit_per_second=1000,
    )
    return Settings(callback_secrets=("s",), admin_token="t", providers={"evolink": provider})


def _running(request: httpx.Request) -> httpx.Response:
    task_id = request.url.path.rsplit("/", 1)[-1]
    return httpx.Response(200, json={"id": task_id, "status": "processing", "progress": 40})


@pytest.fixture(autouse=True)
def small_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process, "FLUSH_AT_ITEMS", FLUSH_AT_ITEMS)


async def _one_pass(kind: type[LedgerStore], engine: AsyncEngine, clock: FakeClock) -> None:
    """Register the tasks, then one pass over them through a `kind` of store."""
    store = kind(engine, clock)
    try:
        for i in range(TASKS):
            task = NewTask("evolink", provider_task_id=f"t-{i}", expected_seconds=1)
            await store.register(task)
        clock.advance(2)
        settings = _settings()
        transport = httpx.MockTransport(_running)
        async with ProviderClients.open(
            settings.providers.values(), transport=transport
        ) as clients:
            await Reconciler(settings, store, clients, clock=clock).run_pass()
    finally:
        await store.close()


async def test_a_pass_returns_with_every_poll_written(
    engine: AsyncEngine, clock: FakeClock
) -> None:
    await _one_pass(SlowStore, engine, clock)
    async with engine.connect() as conn:
        polled = await conn.scalar(sa.select(sa.func.count()).where(TASK.c.poll_attempts == 1))
    assert polled == TASKS


async def test_a_pass_whose_writes_fail_fails(engine: AsyncEngine, clock: FakeClock) -> None:
    with pytest.raises(StorageUnavailable):
        await _one_pass(DownStore, engine, clock)


class OutageStore(LedgerStore):
    """The real store, its writes refused while `down` is set, as on a full disk."""

    down = True

    async def ingest(self, evidence: Sequence[Evidence]) -> list[Stored]:
        if self.down:
            raise StorageUnavailable("database or disk is full")
        return await super().ingest(evidence)


def _accepting(request: httpx.Request) -> httpx.Response:
    """EvoLink's answer to a submit: the provider's task id."""
    return httpx.Response(200, json={"id": "task-evo-1", "status": "pending", "progress": 0})


async def test_a_submit_answer_the_database_refused_is_kept_and_written_once_it_takes_writes(
    engine: AsyncEngine, clock: FakeClock
) -> None:
    """The provider's task id is in the submit answer alone: a pass whose write of it fails
    keeps it (and logs it), and the provider's next pass writes it before claiming more."""
    store = OutageStore(engine, clock)
    settings = _settings()
    try:
        row = await store.register(
            NewTask("evolink", model="sora-2", request={"prompt": "x"}, submit=True)
        )
        sent: list[httpx.Request] = []

        def provider(request: httpx.Request) -> httpx.Response:
            sent.append(request)
            return _accepting(request)

        transport = httpx.MockTransport(provider)
        async with ProviderClients.open(
            settings.providers.values(), transport=transport
        ) as clients:
            reconciler = Reconciler(settings, store, clients, clock=clock)
            with structlog.testing.capture_logs() as logs, pytest.raises(StorageUnavailable):
                await reconciler.run_pass()
            with pytest.raises(StorageUnavailable):  # still down: still kept
                await reconciler.run_pass()
            store.down = False
            await reconciler.run_pass()
        task = await store.get(row.ref)
    finally:
        await store.close()
    assert [request.method for request in sent] == ["POST"]
    assert task is not None
    assert (task.submission, task.provider_task_id) == ("sent", "task-evo-1")
    [unrecorded] = [line for line in logs if line["event"] == "submit_unrecorded"]
    assert (unrecorded["task_ref"], unrecorded["provider_task_id"]) == (row.ref, "task-evo-1")
