"""The whole system telling a product: every authoritative change reaches a flaky consumer,
signed, through its failures, timeouts and an outage, and a relay killed outright.

The relay runs as its own process (the Procfile's `relay`) with a fast retry schedule:
`TASKLEDGER_NOTIFY_RETRY_SCHEDULE` (seconds after each failed attempt) instead of hours.
"""

from __future__ import annotations

import asyncio
import base64
import random
import secrets
import signal
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import orjson
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from svix.webhooks import Webhook, WebhookVerificationError

from schemas.clock import utc_now
from schemas.store import LedgerStore
from schemas.tables import DISPATCH, MESSAGE
from simulator import Faults, Lifecycle, SimConfig
from tests.support.servers import free_port, serve
from tests.support.system import (
    System,
    relay_environment,
    running_system,
    start_relay,
    stop_relay,
)
from tests.support.waiting import eventually, until

TASKS_PER_PROVIDER = 60
PROVIDERS = ("apidot", "openai")  # unsigned callbacks confirmed by polls, and signed ones
# Events taken when the relay is killed, and when the consumer goes down: early in the run
# (about 3 events a task), so that each finds messages in flight and more still to come.
TAKEN_AT_KILL, TAKEN_AT_OUTAGE = 50, 150
FAST = Lifecycle(min_duration_s=0.3, max_duration_s=1.5, progress_callbacks=True)
FAULTS = Faults(
    drop_rate=0.2, duplicate_rate=0.1, reorder_rate=0.1, delay_rate=0.1, max_callback_delay_s=0.5
)
TIMEOUT_SECONDS = 0.5
# Long enough to outlast the outage, an attempt lost with the killed relay and three
# failures in a row after it, with room to spare: 13 attempts, a second apart at most.
RETRY_SCHEDULE = "0,0.2,0.5,1,1,1,1,1,1,1,1,1"
OUTAGE_SECONDS = 2.5
FAIL_RATE, TIMEOUT_RATE = 0.3, 0.1
# A message fails at random on at most this many of the attempts that reach the consumer.
MAX_RANDOM_FAILURES = 3


class FlakyConsumer:
    """A product's endpoint: verifies every request with svix's verifier, then fails 30%
    with 500 and sleeps past the relay's timeout on 10% (at most three times per message),
    and keeps what it took: the event of each 2xx, by webhook-id."""

    def __init__(self, secret: str, seed: int) -> None:
        self.verifier = Webhook(secret)
        self.rng = random.Random(seed)
        self.tries: Counter[str] = Counter()
        self.taken: dict[str, dict[str, Any]] = {}
        self.answers: Counter[str] = Counter()
        self.copies = 0  # events taken again (the relay did not see the first answer)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        try:
            self.verifier.verify(body, dict(request.headers))
        except WebhookVerificationError:
            return self._answer(400, "unverified")
        webhook_id = request.headers["webhook-id"]
        self.tries[webhook_id] += 1
        draw = self.rng.random() if self.tries[webhook_id] <= MAX_RANDOM_FAILURES else 1.0
        if draw < FAIL_RATE:
            return self._answer(500, "failed")
        if draw < FAIL_RATE + TIMEOUT_RATE:
            await asyncio.sleep(TIMEOUT_SECONDS * 2)
            self._take(webhook_id, body)
            return self._answer(200, "late")
        self._take(webhook_id, body)
        return self._answer(200, "taken")

    def _take(self, webhook_id: str, body: bytes) -> None:
        self.copies += webhook_id in self.taken
        self.taken[webhook_id] = orjson.loads(body)

    def _answer(self, status: int, what: str) -> Response:
        self.answers[what] += 1
        return Response(what, status_code=status)

    def view(self) -> dict[str, tuple[str, int]]:
        """Each task as the consumer knows it: the state of its highest version."""
        latest: dict[str, tuple[int, str]] = {}
        for event in self.taken.values():
            data = event["data"]
            latest[data["ref"]] = max(
                latest.get(data["ref"], (0, "")), (data["version"], data["state"])
            )
        return {ref: (state, version) for ref, (version, state) in latest.items()}


async def test_every_authoritative_change_reaches_a_flaky_consumer_through_a_relay_kill(
    database_url: str, tmp_path: Path
) -> None:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    consumer = FlakyConsumer(secret, seed=29)
    port, metrics_port = free_port(), free_port()
    config = SimConfig(seed=29, time_scale=0.05, lifecycle=FAST, faults=FAULTS)
    log = tmp_path / "relay.log"
    async with running_system(database_url, config) as system, AsyncExitStack() as up:
        await up.enter_async_context(serve(consumer.app(), port=port))
        store = LedgerStore(system.engine, utc_now)
        await store.create_endpoint(
            {
                "id": "ep_product",
                "kind": "http",
                "url": f"http://127.0.0.1:{port}/hook",
                "secrets": [{"secret": secret, "expires_at": None}],
                "include_unconfirmed": True,
            }
        )
        environ = relay_environment(
            system,
            ALLOW_HTTP="true",
            ALLOW_NETWORKS="127.0.0.1/32",
            TIMEOUT_SECONDS=str(TIMEOUT_SECONDS),
            CONCURRENCY_PER_ENDPOINT="8",
            LEASE_SECONDS="2",
            RETRY_SCHEDULE=RETRY_SCHEDULE,
            METRICS_PORT=str(metrics_port),
        )
        relay = await start_relay(environ, log)
        try:
            submitted = asyncio.gather(*[system.submit(p, TASKS_PER_PROVIDER) for p in PROVIDERS])
            await until(lambda: len(consumer.taken) >= TAKEN_AT_KILL, within=30)
            relay.send_signal(signal.SIGKILL)  # mid-run: its leases and attempts in flight
            await relay.wait()
            relay = await start_relay(environ, log)
            await until(lambda: len(consumer.taken) >= TAKEN_AT_OUTAGE, within=30)
            await up.aclose()  # the consumer is down: connections refused
            await asyncio.sleep(OUTAGE_SECONDS)
            await up.enter_async_context(serve(consumer.app(), port=port))
            refs = [ref for batch in await submitted for ref in batch]
            await system.settle(len(refs), within_seconds=60)
            await eventually(lambda: _all_delivered(system), within=40, every=0.25)
            async with httpx.AsyncClient() as http:
                metrics = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
        finally:
            code = await stop_relay(relay)
        messages = await _messages(system)
        dispatches = await _dispatches(system)
        tasks = {t["ref"]: (t["state"], t["version"]) for t in await system.tasks()}
        await store.close()
    backend = database_url.partition("+")[0]
    retries = sum(d["attempts"] for d in dispatches) - len(dispatches)
    moved_on = sum(consumer.view().get(ref, ("", 0))[1] != v for ref, (_, v) in tasks.items())
    print(
        f"\n[{backend}] tasks {len(tasks)}; events expected {len(messages)}, delivered "
        f"{len(consumer.taken)}, duplicates {consumer.copies}, retries {retries} (most "
        f"attempts of one {max((d['attempts'] for d in dispatches), default=0)}); "
        f"consumer answers {dict(consumer.answers)}; relay SIGKILLed once, exit {code}; "
        f"tasks whose ledger version moved past their last event {moved_on}"
    )
    assert code == 0, log.read_text()[-3000:]
    assert consumer.answers["unverified"] == 0
    assert {m["msg_id"] for m in messages} <= set(consumer.taken)
    assert {d["state"] for d in dispatches} == {"delivered"}
    assert len(dispatches) == len(messages)
    assert consumer.view() == _last_events(messages)
    # The version moves only with what events show: the consumer's view is the ledger.
    assert consumer.view() == tasks
    assert moved_on == 0
    assert retries > 0
    assert 'taskledger_notify_attempts_total{result="delivered"}' in metrics


async def _all_delivered(system: System) -> bool:
    async with system.engine.connect() as conn:
        unsent = await conn.scalar(
            sa.select(sa.func.count()).select_from(MESSAGE).where(MESSAGE.c.fanned_out.is_(False))
        )
        pending = await conn.scalar(
            sa.select(sa.func.count()).where(DISPATCH.c.state != "delivered")
        )
    return bool(unsent == 0 and pending == 0)


async def _messages(system: System) -> list[dict[str, Any]]:
    async with system.engine.connect() as conn:
        rows = await conn.execute(sa.select(MESSAGE).order_by(MESSAGE.c.id))
        return [dict(row) for row in rows.mappings()]


async def _dispatches(system: System) -> list[dict[str, Any]]:
    async with system.engine.connect() as conn:
        rows = await conn.execute(sa.select(DISPATCH))
        return [dict(row) for row in rows.mappings()]


def _last_events(messages: list[dict[str, Any]]) -> dict[str, tuple[str, int]]:
    """Each task as the ledger's events tell it: the state of its highest version."""
    latest: dict[str, tuple[int, str]] = {}
    for message in messages:
        data = message["payload"]["data"]
        latest[data["ref"]] = max(
            latest.get(data["ref"], (0, "")), (data["version"], data["state"])
        )
    return {ref: (state, version) for ref, (version, state) in latest.items()}
