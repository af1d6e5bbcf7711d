"""The relay against consumers on loopback: signed deliveries any Standard Webhooks library
accepts, retries on the schedule under one webhook-id, 410, slow endpoints, address checks,
and `python -m reconciler.relay` stopping cleanly."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta
from ipaddress import ip_network
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
import structlog.testing
from prometheus_client import generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from svix.webhooks import Webhook, WebhookVerificationError

from ops.procfile import python_command
from reconciler.relay import HttpSink, Relay, RetrySchedule
from reconciler.sinks import ANSWER_LIMIT_BYTES
from schemas.clock import utc_now
from schemas.database import create_engine
from schemas.ledger import Poll
from schemas.settings import NotifySettings
from schemas.states import State
from schemas.store import AttemptResult, DispatchJob, LedgerStore, NewTask
from schemas.tables import DISPATCH, DISPATCH_ATTEMPT
from schemas.wire import Observation
from tests.conftest import FakeClock
from tests.support.servers import free_port, serve
from tests.support.waiting import eventually, until

LOOPBACK = NotifySettings(
    allow_http=True, allowed_networks=(ip_network("127.0.0.1/32"),), timeout_seconds=5
)
NO_JITTER = RetrySchedule((0.0, 5.0, 60.0), jitter=0.0)
Answer = Callable[[Request], Awaitable[Response]]
_task_ids = itertools.count()


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def spec_signs(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The Standard Webhooks spec, written out: base64(HMAC-SHA256(key, id.timestamp.body))
    is one of the space-separated `v1,` signatures."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return expected in headers["webhook-signature"].split(" ")


class Consumer:
    """A product's webhook endpoint: keeps every request, answers as `answer` says."""

    def __init__(self, answer: Answer | None = None) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.answer = answer or _accept
        self.in_flight = 0
        self.most_in_flight = 0

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            self.requests.append((dict(request.headers), await request.body()))
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                return await self.answer(request)
            finally:
                self.in_flight -= 1

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])

    @property
    def ids(self) -> list[str]:
        return [headers["webhook-id"] for headers, _ in self.requests]


async def _accept(_: Request) -> Response:
    return Response("thanks", status_code=200)


def answers(*codes: int) -> Answer:
    """Answer with `codes` in turn, then 200."""
    left: Iterator[int] = iter(codes)

    async def answer(_: Request) -> Response:
        return Response("no", status_code=next(left, 200))

    return answer


@asynccontextmanager
async def consumer_at(consumer: Consumer) -> AsyncIterator[str]:
    async with serve(consumer.app()) as base:
        yield f"{base}/hook"


async def endpoint(store: LedgerStore, url: str, name: str = "ep_1", **values: Any) -> str:
    row = {"id": name, "kind": "http", "url": url, "secrets": [{"secret": new_secret()}]}
    await store.create_endpoint(row | values)
    return name


async def change(store: LedgerStore, clock: Callable[[], Any], n: int = 1) -> list[str]:
    """`n` tasks that each start running: one `task.running` event apiece."""
    refs = []
    for _ in range(n):
        task_id = f"t-{next(_task_ids)}"
        row = await store.register(NewTask(provider="apidot", provider_task_id=task_id))
        seen = Observation(task_id, State.RUNNING, 10)
        await store.ingest([Poll(row.ref, clock(), None, observation=seen, http_status=200)])
        refs.append(row.ref)
    return refs


@asynccontextmanager
async def relay_for(
    store: LedgerStore,
    clock: Callable[[], Any],
    settings: NotifySettings = LOOPBACK,
    schedule: RetrySchedule = NO_JITTER,
) -> AsyncIterator[Relay]:
    """A relay driven pass by pass, finished (leases given back, sinks closed) at the end."""
    relay = Relay(settings, store, clock=clock, schedule=schedule, owner="relay-test")
    try:
        yield relay
    finally:
        await relay.finish()


async def one_pass(relay: Relay) -> None:
    await relay.run_pass()
    await relay.drain()


async def dispatches(store: LedgerStore) -> list[dict[str, Any]]:
    async with store.engine.connect() as conn:
        rows = await conn.execute(sa.select(DISPATCH).order_by(DISPATCH.c.id))
        return [dict(row) for row in rows.mappings()]


def metric(relay: Relay, line: str) -> bool:
    return line in generate_latest(relay.metrics.registry).decode()


# -- signatures ---------------------------------------------------------------------------


async def test_a_delivered_event_is_signed_so_any_standard_webhooks_verifier_accepts_it(
    store: LedgerStore, clock: FakeClock
) -> None:
    consumer = Consumer()
    async with consumer_at(consumer) as url:
        await endpoint(store, url)
        (secret,) = [s["secret"] for s in (await store.endpoints())[0].secrets]
        [ref] = await change(store, clock)
        async with relay_for(store, clock) as relay:
            await one_pass(relay)
    ((headers, body),) = consumer.requests
    Webhook(secret).verify(body, headers)
    assert spec_signs(secret, headers, body)
    event = orjson.loads(body)
    assert (event["type"], event["data"]["ref"], event["data"]["state"]) == (
        "task.running",
        ref,
        "running",
    )
    assert headers["content-type"] == "application/json"
    assert [d["state"] for d in await dispatches(store)] == ["delivered"]
    assert metric(relay, 'taskledger_notify_attempts_total{result="delivered"} 1.0')


async def test_during_a_rotation_the_old_and_the_new_secret_each_verify(
    store: LedgerStore, clock: FakeClock
) -> None:
    new, old, expired = new_secret(), new_secret(), new_secret()
    grace = (clock() + timedelta(hours=1)).isoformat()
    past = (clock() - timedelta(seconds=1)).isoformat()
    rotation = [
        {"secret": new, "expires_at": None},
        {"secret": old, "expires_at": grace},
        {"secret": expired, "expires_at": past},
    ]
    consumer = Consumer()
    async with consumer_at(consumer) as url:
        await endpoint(store, url, secrets=rotation)
        await change(store, clock)
        async with relay_for(store, clock) as relay:
            await one_pass(relay)
    ((headers, body),) = consumer.requests
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (new, old):
        Webhook(secret).verify(body, headers)
        assert spec_signs(secret, headers, body)
    with pytest.raises(WebhookVerificationError):
        Webhook(expired).verify(body, headers)


# -- retries ------------------------------------------------------------------------------


async def test_a_failed_delivery_is_retried_on_the_schedule_under_the_same_webhook_id(
    store: LedgerStore, clock: FakeClock
) -> None:
    consumer = Consumer(answers(500, 503))
    async with consumer_at(consumer) as url:
        await endpoint(store, url)
        [ref] = await change(store, clock)
        async with relay_for(store, clock) as relay:
            await one_pass(relay)  # 500: again at once (the schedule's first delay is 0)
            await one_pass(relay)  # 503: again in 5 s
            await one_pass(relay)
            assert len(consumer.requests) == 2
            clock.advance(5)
            await one_pass(relay)
    assert len(consumer.requests) == 3
    assert len(set(consumer.ids)) == 1
    (message,) = await store.messages_of_task(ref)
    assert consumer.ids[0] == message["msg_id"]
    (dispatch,) = message["dispatches"]
    assert [a["status_code"] for a in dispatch["attempts_made"]] == [500, 503, 200]
    assert dispatch["state"] == "delivered"
    assert metric(relay, 'taskledger_notify_attempts_total{result="retry"} 2.0')


async def test_a_dispatch_whose_schedule_is_spent_has_failed(
    store: LedgerStore, clock: FakeClock
) -> None:
    consumer = Consumer(answers(500, 500, 500))
    async with consumer_at(consumer) as url:
        await endpoint(store, url)
        await change(store, clock)
        schedule = RetrySchedule((0.0,), jitter=0.0)
        async with relay_for(store, clock, schedule=schedule) as relay:
            for _ in range(3):
                await one_pass(relay)
                clock.advance(60)
    assert len(consumer.requests) == 2
    assert [(d["state"], d["attempts"]) for d in await dispatches(store)] == [("failed", 2)]
    assert metric(relay, 'taskledger_notify_attempts_total{result="failed"} 1.0')


@pytest.mark.parametrize(
    ("failed_attempts", "delay"),
    [(1, 5.0), (2, 300.0), (3, 1_800.0), (7, 36_000.0), (8, None)],
    ids=["first-5s", "second-5min", "third-30min", "last-10h", "spent"],
)
def test_the_default_schedule_waits_about_its_delay(failed_attempts: int, delay: float) -> None:
    now = utc_now()
    retry_at = RetrySchedule().retry_at(failed_attempts, now)
    if delay is None:
        assert retry_at is None
        return
    assert retry_at is not None
    waited = (retry_at - now).total_seconds()
    assert delay * 0.9 <= waited <= delay * 1.1


# -- endpoints ----------------------------------------------------------------------------


async def test_a_410_disables_the_endpoint_and_says_so(
    store: LedgerStore, clock: FakeClock
) -> None:
    consumer = Consumer(answers(410))
    async with consumer_at(consumer) as url:
        await endpoint(store, url)
        await change(store, clock, 3)
        one_at_a_time = replace(LOOPBACK, concurrency_per_endpoint=1)
        with structlog.testing.capture_logs() as logs:
            async with relay_for(store, clock, one_at_a_time) as relay:
                await one_pass(relay)
                await one_pass(relay)
    found = await store.endpoint("ep_1")
    assert found is not None
    assert not found.enabled
    assert len(consumer.requests) == 1  # nothing more once it said 410
    disabled = [e for e in logs if e["event"] == "endpoint_disabled"]
    assert disabled == [
        {
            "event": "endpoint_disabled",
            "endpoint": "ep_1",
            "reason": "the endpoint answered 410 Gone",
            "log_level": "warning",
        }
    ]
    assert metric(relay, 'taskledger_notify_attempts_total{result="gone"} 1.0')
    assert metric(relay, "taskledger_notify_endpoints_disabled 1.0")


async def test_an_endpoint_failing_everything_too_long_is_disabled_and_says_so(
    store: LedgerStore, clock: FakeClock
) -> None:
    consumer = Consumer(answers(*[500] * 10))
    two_days = replace(LOOPBACK, disable_after_days=2)
    async with consumer_at(consumer) as url:
        await endpoint(store, url)
        await change(store, clock)
        schedule = RetrySchedule((86_400.0,) * 5, jitter=0.0)
        with structlog.testing.capture_logs() as logs:
            async with relay_for(store, clock, two_days, schedule) as relay:
                for _ in range(4):
                    await one_pass(relay)
                    clock.advance(86_400)
    assert len(consumer.requests) == 3
    disabled = [(e["endpoint"], e["reason"]) for e in logs if e["event"] == "endpoint_disabled"]
    assert disabled == [("ep_1", "every attempt failed for 2 days")]


async def test_a_slow_endpoint_holds_back_no_other(engine: AsyncEngine) -> None:
    # On the real clock: what the slow endpoint cannot take yet waits out a short lease.
    store, clock = LedgerStore(engine, utc_now), utc_now
    release = asyncio.Event()

    async def stuck(_: Request) -> Response:
        await release.wait()
        return Response(status_code=204)

    slow, fast = Consumer(stuck), Consumer()
    settings = replace(LOOPBACK, concurrency_per_endpoint=2, timeout_seconds=30, lease_seconds=1)
    relay = Relay(settings, store, clock=clock, owner="relay-test")
    async with consumer_at(slow) as slow_url, consumer_at(fast) as fast_url:
        await endpoint(store, slow_url, "ep_slow")
        await endpoint(store, fast_url, "ep_fast")
        running = asyncio.create_task(relay.run())
        await change(store, clock, 5)
        await until(lambda: len(fast.requests) == 5 and slow.in_flight == 2, within=10)
        await change(store, clock, 5)  # while the slow one still holds its two
        await until(lambda: len(fast.requests) == 10, within=10)
        assert (slow.in_flight, slow.most_in_flight) == (2, 2)
        release.set()
        await until(lambda: len(slow.requests) == 10, within=10)
        relay.stopping.set()
        await asyncio.wait_for(running, timeout=10)
    assert slow.most_in_flight == 2
    assert sorted(d["state"] for d in await dispatches(store)) == ["delivered"] * 20
    await store.close()


async def test_only_the_start_of_an_answer_is_read(store: LedgerStore, clock: FakeClock) -> None:
    async def endless(_: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            while True:
                yield b"x" * 65_536
                await asyncio.sleep(0)

        return StreamingResponse(chunks(), status_code=500)

    async with consumer_at(Consumer(endless)) as url:
        await endpoint(store, url)
        await change(store, clock)
        (job,) = await _claimed(store)
        result = await _send(job)
    assert (result.status_code, result.error) == (500, "HTTP 500")
    assert result.answer is not None
    assert len(result.answer) == ANSWER_LIMIT_BYTES


async def test_a_redirect_is_not_followed(store: LedgerStore, clock: FakeClock) -> None:
    async def moved(_: Request) -> Response:
        return Response(status_code=307, headers={"location": "/hook"})

    consumer = Consumer(moved)
    async with consumer_at(consumer) as url:
        await endpoint(store, url)
        await change(store, clock)
        (job,) = await _claimed(store)
        result = await _send(job)
    assert len(consumer.requests) == 1
    assert (result.delivered, result.error) == (False, "HTTP 307 (redirects are not followed)")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"], ids=["address", "name"])
async def test_the_address_check_refuses_a_private_url(
    store: LedgerStore, clock: FakeClock, host: str
) -> None:
    consumer = Consumer()
    public_only = NotifySettings(allow_http=True)
    async with consumer_at(consumer) as url:
        await endpoint(store, url.replace("127.0.0.1", host))
        await change(store, clock)
        (job,) = await _claimed(store)
        result = await _send(job, public_only)
    assert consumer.requests == []
    assert not result.delivered
    assert result.error is not None
    assert result.error.startswith("refused: ")
    assert "/hook" not in result.error


async def _claimed(store: LedgerStore) -> list[DispatchJob]:
    await store.fan_out(10)
    return await store.claim_dispatches("relay-test", 10, 30)


async def _send(job: DispatchJob, settings: NotifySettings = LOOPBACK) -> AttemptResult:
    sink = HttpSink(settings)
    try:
        return await sink.deliver(job, b"{}", {"webhook-id": job.msg_id})
    finally:
        await sink.aclose()


# -- the process --------------------------------------------------------------------------


def test_the_procfile_runs_the_relay_as_a_module() -> None:
    assert python_command("relay") == [sys.executable, "-m", "reconciler.relay"]


async def test_sigterm_finishes_the_attempt_in_flight_and_exits_zero(
    engine: AsyncEngine, database_url: str
) -> None:
    arrived = asyncio.Event()

    async def slow(_: Request) -> Response:
        arrived.set()
        await asyncio.sleep(1.0)
        return Response(status_code=200)

    store = LedgerStore(engine, utc_now)
    async with consumer_at(Consumer(slow)) as url:
        await endpoint(store, url)
        await change(store, utc_now)
        process = await asyncio.create_subprocess_exec(
            *python_command("relay"),
            env=_environ(database_url),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        await asyncio.wait_for(arrived.wait(), timeout=30)
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), timeout=20)
    await store.close()
    assert process.returncode == 0, output.decode()
    assert b"relay_stopped" in output
    ((state, lease),) = [(d["state"], d["lease_owner"]) for d in await dispatches(store)]
    assert (state, lease) == ("delivered", None)


def _environ(database_url: str, **notify: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TASKLEDGER_")}
    settings = {
        "DATABASE_URL": database_url,
        "LOG_JSON": "true",
        "NOTIFY_ALLOW_HTTP": "true",
        "NOTIFY_ALLOW_NETWORKS": "127.0.0.1/32",
    } | notify
    return base | {f"TASKLEDGER_{name}": value for name, value in settings.items()}


async def test_a_bad_setting_names_its_variable_and_exits_2(tmp_path: Any) -> None:
    environ = _environ(f"sqlite+aiosqlite:///{tmp_path / 'l.db'}", NOTIFY_RETRY_SCHEDULE="soon")
    process = await asyncio.create_subprocess_exec(
        *python_command("relay"),
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, errors = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 2
    assert errors.decode().strip().splitlines() == [
        "relay: TASKLEDGER_NOTIFY_RETRY_SCHEDULE must be seconds like 0,5,300 (got 'soon')"
    ]


async def test_an_unreachable_database_pauses_the_relay_without_ending_it() -> None:
    engine = create_engine(f"postgresql+asyncpg://nobody@127.0.0.1:{free_port()}/none")
    relay = Relay(LOOPBACK, LedgerStore(engine, utc_now), clock=utc_now)
    with structlog.testing.capture_logs() as logs:
        running = asyncio.create_task(relay.run())

        async def paused_twice() -> bool:
            return sum(e["event"] == "relay_pass_failed" for e in logs) >= 2

        await eventually(paused_twice, within=10, every=0.05)
        assert not running.done()
        relay.stopping.set()
        await asyncio.wait_for(running, timeout=10)
    await engine.dispose()
    assert [e["event"] for e in logs][-2:] == ["leases_left_to_expire", "relay_stopped"]


async def test_an_answer_holding_nul_is_kept_and_the_dispatch_moves_on(
    store: LedgerStore, clock: FakeClock
) -> None:
    """PostgreSQL's text holds no NUL: such an answer failed its attempt's row, and the
    dispatch was sent again every lease, for ever, beside every other in its batch."""

    async def nul(_: Request) -> Response:
        return Response(b"\xff\xfe\x00\x00ab", status_code=500)

    async with consumer_at(Consumer(nul)) as url, relay_for(store, clock) as relay:
        await endpoint(store, url)
        await change(store, clock)
        await one_pass(relay)
    (dispatch,) = await dispatches(store)
    assert dispatch["attempts"] == 1, dispatch
    async with store.engine.connect() as conn:
        (answer,) = (await conn.execute(sa.select(DISPATCH_ATTEMPT.c.answer))).scalars()
    assert answer is not None
    assert "\x00" not in answer
    assert answer.endswith("ab")
