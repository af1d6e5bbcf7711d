"""The relay's default retry schedule, as the README promises it: a webhook to an endpoint that
always fails is sent at once, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h later (give or
take 10 %): eight attempts, then the dispatch has failed."""

from __future__ import annotations

from datetime import UTC, datetime
from ipaddress import ip_network

from starlette.requests import Request
from starlette.responses import Response

from reconciler.relay import Relay
from schemas.settings import NotifySettings
from schemas.store import LedgerStore
from tests.conftest import FakeClock
from tests.reconciler.test_relay import Consumer, change, consumer_at, dispatches, endpoint

# The README's waits between attempts, in seconds; the first attempt is made at once.
README_WAITS_SECONDS = [5.0, 300.0, 1_800.0, 7_200.0, 18_000.0, 36_000.0, 36_000.0]
JITTER = 0.1
# More passes than any schedule here has attempts: the loop below ends by the dispatch.
MOST_PASSES = 20
# Time is moved this far past each retry's moment, clear of how a backend rounds it.
PAST_DUE_SECONDS = 1.0
# The default schedule; nothing but the loopback consumer allowed.
DEFAULTS = NotifySettings(allow_http=True, allowed_networks=(ip_network("127.0.0.1/32"),))


async def always_fail(_: Request) -> Response:
    return Response("down", status_code=503)


def utc(moment: datetime) -> datetime:
    """SQLite gives datetimes back without their zone; every one stored is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def test_a_webhook_to_an_endpoint_that_always_fails_is_tried_on_the_readme_schedule(
    store: LedgerStore, clock: FakeClock
) -> None:
    consumer = Consumer(always_fail)
    waits: list[float] = []
    async with consumer_at(consumer) as url:
        await endpoint(store, url)
        await change(store, clock)
        relay = Relay(DEFAULTS, store, clock=clock, owner="relay-test")
        try:
            for _ in range(MOST_PASSES):
                await relay.run_pass()
                await relay.drain()
                (dispatch,) = await dispatches(store)
                if dispatch["state"] != "pending":
                    break
                wait = (utc(dispatch["next_attempt_at"]) - clock()).total_seconds()
                waits.append(wait)
                clock.advance(wait + PAST_DUE_SECONDS)
        finally:
            await relay.finish()
    assert (dispatch["state"], dispatch["attempts"]) == ("failed", 8)
    assert len(consumer.requests) == 8
    assert len(set(consumer.ids)) == 1  # one message, under one webhook-id throughout
    assert len(waits) == len(README_WAITS_SECONDS)
    for wait, promised in zip(waits, README_WAITS_SECONDS, strict=True):
        assert promised * (1 - JITTER) <= wait <= promised * (1 + JITTER), waits
