"""The relay against faults of one delivery: a retry schedule past any date, a sink that
raises (on an endpoint's URL, say), an attempt the ledger will not take. Each fails that
delivery alone, recorded; its neighbours are delivered and the loop goes on."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from reconciler.relay import MAX_RETRY_DELAY_SECONDS, Relay, RetrySchedule
from reconciler.sinks import HttpSink, Sink
from schemas.store import AttemptResult, DispatchJob, LedgerStore
from tests.conftest import FakeClock
from tests.reconciler.test_relay import (
    LOOPBACK,
    Consumer,
    answers,
    change,
    consumer_at,
    dispatches,
    endpoint,
    metric,
    one_pass,
)
from tests.support.databases import migrated_engine

HUNDRED_YEARS = timedelta(seconds=MAX_RETRY_DELAY_SECONDS)
EVERY_MINUTE = RetrySchedule((60.0,), jitter=0.0)


@asynccontextmanager
async def relay_with(
    store: LedgerStore,
    clock: FakeClock,
    schedule: RetrySchedule,
    sinks: Mapping[str, Sink] | None = None,
) -> AsyncIterator[Relay]:
    relay = Relay(LOOPBACK, store, clock=clock, schedule=schedule, sinks=sinks, owner="relay-test")
    try:
        yield relay
    finally:
        await relay.finish()


def by_endpoint(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["endpoint_id"]: row for row in rows}


# -- the retry schedule -------------------------------------------------------------------


@pytest.mark.parametrize(
    "delay",
    [1e12, 1e300, math.inf],
    ids=["past-year-9999", "past-timedelta", "infinite"],
)
async def test_a_retry_delay_past_any_date_is_planned_at_the_bound_and_the_relay_goes_on(
    store: LedgerStore, clock: FakeClock, delay: float
) -> None:
    down, up = Consumer(answers(500)), Consumer()
    async with consumer_at(down) as down_url, consumer_at(up) as up_url:
        await endpoint(store, down_url, "ep_down")
        await endpoint(store, up_url, "ep_up")
        await change(store, clock)
        async with relay_with(store, clock, RetrySchedule((delay,))) as relay:
            await one_pass(relay)
            clock.advance(3600)
            await one_pass(relay)  # not due again: nothing more is sent
    rows = by_endpoint(await dispatches(store))
    assert (rows["ep_up"]["state"], len(up.requests)) == ("delivered", 1)
    failed = rows["ep_down"]
    assert (failed["state"], failed["attempts"], len(down.requests)) == ("pending", 1, 1)
    assert failed["next_attempt_at"] == clock() - timedelta(seconds=3600) + HUNDRED_YEARS
    assert metric(relay, 'taskledger_notify_attempts_total{result="retry"} 1.0')


@pytest.mark.parametrize("delay", [math.inf, math.nan, 1e300], ids=["infinite", "nan", "huge"])
def test_a_delay_past_the_bound_waits_the_bound(delay: float) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert RetrySchedule((delay,)).retry_at(1, now) == now + HUNDRED_YEARS


@pytest.mark.parametrize(
    ("delay", "now"),
    [(120.0, datetime(9999, 12, 31, 23, 59, tzinfo=UTC)), (1e9, datetime(9990, 1, 1, tzinfo=UTC))],
    ids=["at-the-end", "near-the-end"],
)
def test_a_retry_past_the_last_date_is_still_a_date_not_before_now(
    delay: float, now: datetime
) -> None:
    retry_at = RetrySchedule((delay,), jitter=0.0).retry_at(1, now)
    assert retry_at is not None
    assert retry_at >= now


# -- sinks and endpoint URLs --------------------------------------------------------------


class Tripping:
    """The HTTP sink, but one that raises for a URL carrying `trips` (a sink's bug), its
    message quoting the URL as libraries' messages do."""

    def __init__(self, trips: str) -> None:
        self.trips = trips
        self.inner = HttpSink(LOOPBACK)

    async def deliver(
        self, job: DispatchJob, body: bytes, headers: dict[str, str]
    ) -> AttemptResult:
        if self.trips in job.endpoint.url:
            raise ValueError(f"cannot post to {job.endpoint.url!r}")
        return await self.inner.deliver(job, body, headers)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_sink_that_raises_fails_that_attempt_alone_and_quotes_no_url(
    store: LedgerStore, clock: FakeClock
) -> None:
    consumer = Consumer()
    async with consumer_at(consumer) as url:
        await endpoint(store, f"{url}?token=s3cret", "ep_trips")
        await endpoint(store, url, "ep_fine")
        await change(store, clock)
        sinks = {"http": Tripping("s3cret")}
        with structlog.testing.capture_logs() as logs:
            async with relay_with(store, clock, EVERY_MINUTE, sinks) as relay:
                await one_pass(relay)
    rows = by_endpoint(await dispatches(store))
    assert rows["ep_fine"]["state"] == "delivered"
    tripped = rows["ep_trips"]
    assert (tripped["state"], tripped["attempts"]) == ("pending", 1)
    assert tripped["last_error"] == "the http sink failed (ValueError)"
    (line,) = [line for line in logs if line["event"] == "sink_failed"]
    assert (line["endpoint"], line["error"]) == ("ep_trips", "ValueError")
    assert not any("s3cret" in str(line) for line in logs)


# -- recording ----------------------------------------------------------------------------


class Together:
    """A sink that holds each attempt until `count` have come, then answers them all at
    once (so that they are recorded in one batch): delivered, but for an endpoint whose
    URL carries `odd`, whose attempt fails with an error the ledger cannot store."""

    def __init__(self, count: int, odd: str) -> None:
        self.count = count
        self.odd = odd
        self.arrived = 0
        self.all_here = asyncio.Event()

    async def deliver(
        self, job: DispatchJob, body: bytes, headers: dict[str, str]
    ) -> AttemptResult:
        self.arrived += 1
        if self.arrived == self.count:
            self.all_here.set()
        await self.all_here.wait()
        if self.odd in job.endpoint.url:
            return AttemptResult(False, error="lone surrogate \ud800")
        return AttemptResult(True, 200)

    async def aclose(self) -> None:
        return None


async def test_an_attempt_the_ledger_refuses_does_not_undo_its_neighbours_records(
    tmp_path: Path, clock: FakeClock
) -> None:
    """On SQLite, whose driver refuses the text outright. (PostgreSQL's refusal reaches the
    relay as `StorageUnavailable`, an outage, which is tried again as a whole batch.)"""
    async with migrated_engine("sqlite", tmp_path) as engine:
        store = LedgerStore(engine, clock)
        try:
            for name in ("ep_1", "ep_2", "ep_odd", "ep_3"):
                await endpoint(store, f"http://127.0.0.1:1/{name}", name)
            await change(store, clock)
            sinks = {"http": Together(4, "ep_odd")}
            with structlog.testing.capture_logs() as logs:
                async with relay_with(store, clock, EVERY_MINUTE, sinks) as relay:
                    await one_pass(relay)
            rows = by_endpoint(await dispatches(store))
        finally:
            await store.close()
    states = {name: (row["state"], row["attempts"]) for name, row in rows.items()}
    assert states == {
        "ep_1": ("delivered", 1),
        "ep_2": ("delivered", 1),
        "ep_3": ("delivered", 1),
        "ep_odd": ("pending", 0),  # not recorded: made again once its lease ends
    }
    failed = [line for line in logs if line["event"] == "dispatch_failed"]
    assert [line["endpoint"] for line in failed] == ["ep_odd"]
