"""A provider that pauses or answers slowly holds nothing up: not another provider's polls,
not its own leases, not a stop. Against a fake provider on loopback, a ledger on SQLite."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
import structlog.testing
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from reconciler.clients import ProviderClients
from reconciler.process import PassReport, Reconciler
from reconciler.retry import RetryPolicy
from schemas.settings import ProviderSettings, Settings
from schemas.store import LedgerStore, NewTask
from schemas.tables import TASK
from schemas.wire import WireFormat
from tests.conftest import FakeClock
from tests.support.databases import migrated_engine
from tests.support.servers import serve

HOUR_SECONDS = 3600
# Well past what the default lease (60 s) lets a pass wait; a test failing times out here.
WITHIN_SECONDS = 10.0
# A stop ends the waits at once: far less than the waits it ends (20 s).
STOP_WITHIN_SECONDS = 5.0


@dataclass
class Account:
    """One provider account on the fake server: how it answers, and how often it was asked."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hold: asyncio.Event | None = None  # when set: answer only once it is set
    requests: int = 0

    async def answer(self, request: Request) -> Response:
        self.requests += 1
        if self.hold is not None:
            await self.hold.wait()
        if self.status != 200:
            return JSONResponse({"error": {"message": "busy"}}, self.status, self.headers)
        task_id = request.path_params["task_id"]
        return JSONResponse({"id": task_id, "status": "processing", "progress": 40})


@dataclass
class Rig:
    reconciler: Reconciler
    store: LedgerStore
    clock: FakeClock
    clients: ProviderClients


def _fake_provider(accounts: dict[str, Account]) -> Starlette:
    async def answer(request: Request) -> Response:
        return await accounts[request.path_params["account"]].answer(request)

    return Starlette(
        routes=[
            Route("/{account}/v1/tasks/{task_id}", answer),
            Route("/{account}/v1/videos/generations", answer, methods=["POST"]),
        ]
    )


@asynccontextmanager
async def rig(
    tmp_path: Path,
    accounts: dict[str, Account],
    *,
    lease_seconds: float = 60.0,
    policy: RetryPolicy | None = None,
) -> AsyncIterator[Rig]:
    """A reconciler for `accounts` (one provider each, in EvoLink's format), served on
    loopback, over a ledger on SQLite."""
    clock = FakeClock()
    async with (
        migrated_engine("sqlite", tmp_path) as engine,
        serve(_fake_provider(accounts)) as url,
    ):
        providers = {
            name: ProviderSettings(
                name,
                WireFormat.EVOLINK,
                base_url=f"{url}/{name}",
                expected_seconds=1,
                rate_limit_per_second=100,
                concurrency=1,
            )
            for name in accounts
        }
        settings = Settings(
            callback_secrets=("s",),
            admin_token="t",
            providers=providers,
            lease_seconds=lease_seconds,
            poll_interval_seconds=0.05,
        )
        store = LedgerStore(engine, clock)
        try:
            async with ProviderClients.open(providers.values(), policy=policy) as clients:
                reconciler = Reconciler(settings, store, clients, clock=clock, policy=policy)
                yield Rig(reconciler, store, clock, clients)
        finally:
            await store.close()


async def _due_polls(r: Rig, provider: str, count: int) -> None:
    for i in range(count):
        task = NewTask(provider, provider_task_id=f"{provider}-{i}", expected_seconds=1)
        await r.store.register(task)
    r.clock.advance(2)


async def _rows(r: Rig) -> list[sa.Row[tuple[str | None, datetime | None, int, str | None]]]:
    columns = (TASK.c.lease_owner, TASK.c.next_poll_at, TASK.c.poll_attempts, TASK.c.submission)
    async with r.store.engine.connect() as conn:
        return list((await conn.execute(sa.select(*columns))).all())


async def _polls_written(r: Rig, provider: str) -> int:
    polled = sa.select(sa.func.sum(TASK.c.poll_attempts)).where(TASK.c.provider == provider)
    async with r.store.engine.connect() as conn:
        return int(await conn.scalar(polled) or 0)


async def _one_pass(r: Rig) -> PassReport:
    async with asyncio.timeout(WITHIN_SECONDS):
        return await r.reconciler.run_pass()


async def _until(condition: Callable[[], bool]) -> None:
    """Wait until `condition` holds (bounded: the test's timeout)."""
    async with asyncio.timeout(WITHIN_SECONDS):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@asynccontextmanager
async def _running(r: Rig) -> AsyncIterator[asyncio.Task[None]]:
    """`run()` in the background; stopped (and awaited) on the way out if still running."""
    task = asyncio.create_task(r.reconciler.run())
    try:
        yield task
    finally:
        r.reconciler.stopping.set()
        async with asyncio.timeout(60):
            await task


def _later(clock: FakeClock, seconds: float) -> datetime:
    """The clock `seconds` from now, less a margin for the time the test itself takes."""
    return clock.now + timedelta(seconds=seconds - 60)


# -- a provider paused past the lease ---------------------------------------------------


async def test_polls_of_a_provider_paused_past_the_lease_are_given_back_until_it_ends(
    tmp_path: Path,
) -> None:
    paused = Account(429, {"retry-after": str(HOUR_SECONDS)})
    async with rig(tmp_path, {"paused": paused}) as r:
        await _due_polls(r, "paused", 5)
        report = await _one_pass(r)
        rows = await _rows(r)
    assert paused.requests == 1
    assert (report.claimed, report.skipped) == (5, 4)
    assert all(row.lease_owner is None for row in rows)
    assert all(row.next_poll_at >= _later(r.clock, HOUR_SECONDS) for row in rows)


async def test_submissions_to_a_provider_paused_past_the_lease_are_given_back_unsent(
    tmp_path: Path,
) -> None:
    paused = Account(429, {"retry-after": str(HOUR_SECONDS)})
    async with rig(tmp_path, {"paused": paused}) as r:
        for _ in range(3):
            await r.store.register(
                NewTask("paused", model="sora-2", request={"prompt": "x"}, submit=True)
            )
        await _one_pass(r)
        rows = await _rows(r)
    assert paused.requests == 1
    assert [row.submission for row in rows] == ["pending"] * 3
    assert all(row.lease_owner is None for row in rows)
    assert all(row.next_poll_at >= _later(r.clock, HOUR_SECONDS) for row in rows)


# -- other providers --------------------------------------------------------------------


async def test_a_provider_slow_to_answer_never_delays_another_providers_polls(
    tmp_path: Path,
) -> None:
    answer = asyncio.Event()
    slow = Account(hold=answer)
    quick = Account()
    async with rig(tmp_path, {"slow": slow, "quick": quick}) as r:
        await _due_polls(r, "slow", 2)
        await _due_polls(r, "quick", 1)
        async with _running(r):
            async with asyncio.timeout(WITHIN_SECONDS):
                while await _polls_written(r, "quick") < 1 or slow.requests < 1:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            r.clock.advance(10)  # the quick provider's task is due again
            try:
                # ... and polled again while the slow provider has not answered yet.
                await _until(lambda: quick.requests >= 2)
            finally:
                answer.set()


# -- retries and the lease --------------------------------------------------------------


async def test_a_retry_that_would_outlast_the_lease_is_left_to_the_next_poll(
    tmp_path: Path,
) -> None:
    busy = Account(503, {"retry-after": "15"})
    async with rig(tmp_path, {"busy": busy}, lease_seconds=20) as r:
        await _due_polls(r, "busy", 1)
        await _one_pass(r)
        [row] = await _rows(r)
    assert busy.requests == 1
    assert (row.lease_owner, row.poll_attempts) == (None, 1)


async def test_the_next_poll_after_a_server_error_waits_for_its_retry_after(
    tmp_path: Path,
) -> None:
    busy = Account(503, {"retry-after": "600"})
    async with rig(tmp_path, {"busy": busy}, policy=RetryPolicy(attempts=1)) as r:
        await _due_polls(r, "busy", 1)
        await _one_pass(r)
        [row] = await _rows(r)
    assert row.next_poll_at >= r.clock.now + timedelta(seconds=600)


# -- stopping ---------------------------------------------------------------------------


async def test_a_stop_ends_a_wait_for_a_paused_provider_and_writes_what_was_polled(
    tmp_path: Path,
) -> None:
    paused = Account(429, {"retry-after": "20"})  # within what the lease lets a pass wait
    async with rig(tmp_path, {"paused": paused}) as r:
        await _due_polls(r, "paused", 4)
        limiter = r.clients.get("paused")
        assert limiter is not None
        async with _running(r) as running:
            await _until(lambda: limiter.limiter.paused_until > time.monotonic())
            r.reconciler.stopping.set()
            async with asyncio.timeout(STOP_WITHIN_SECONDS):
                await running
        rows = await _rows(r)
    assert paused.requests == 1
    assert sorted(row.poll_attempts for row in rows) == [0, 0, 0, 1]
    assert all(row.lease_owner is None for row in rows)


async def test_a_stop_ends_a_sleep_before_a_retry(tmp_path: Path) -> None:
    busy = Account(503, {"retry-after": "20"})
    async with rig(tmp_path, {"busy": busy}) as r:
        await _due_polls(r, "busy", 1)
        with structlog.testing.capture_logs() as logs:
            async with _running(r) as running:
                await _until(lambda: _logged(logs, "provider_call_retried"))
                r.reconciler.stopping.set()
                async with asyncio.timeout(STOP_WITHIN_SECONDS):
                    await running
        rows = await _rows(r)
    assert busy.requests == 1
    assert all(row.lease_owner is None for row in rows)


def _logged(logs: list[dict[str, object]], event: str) -> bool:
    return any(line["event"] == event for line in logs)
