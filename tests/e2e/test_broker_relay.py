"""The outbox to a bus, end to end: the relay publishes every event to a NATS JetStream
subject through a broker restart, and the stream ends with each event exactly once."""

from __future__ import annotations

import asyncio
import base64
import secrets
from ipaddress import ip_network
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from reconciler.relay import Relay, RetrySchedule
from schemas.clock import utc_now
from schemas.ledger import Poll
from schemas.settings import NotifySettings
from schemas.states import State
from schemas.store import LedgerStore, NewTask
from schemas.tables import DISPATCH, MESSAGE
from schemas.wire import Observation
from tests.support.brokers import connect_once, jetstream_server
from tests.support.waiting import eventually

STREAM = "TASKLEDGER_E2E"
SUBJECT = "taskledger.e2e.events"
# Quick retries, enough of them to outlast the restart below.
SCHEDULE = RetrySchedule((0.0, *(0.25,) * 40), jitter=0.0)
TASKS_PER_ROUND = 15
# The test's nats-server listens on loopback, which the relay refuses unless allowed.
LOOPBACK = NotifySettings(allowed_networks=(ip_network("127.0.0.1/32"),), timeout_seconds=2)


async def start_running(store: LedgerStore, prefix: str) -> None:
    """`TASKS_PER_ROUND` tasks that each start running: one `task.running` event apiece."""
    for number in range(TASKS_PER_ROUND):
        task_id = f"{prefix}-{number}"
        task = await store.register(NewTask(provider="apidot", provider_task_id=task_id))
        seen = Observation(task_id, State.RUNNING, 10)
        await store.ingest([Poll(task.ref, utc_now(), None, observation=seen, http_status=200)])


async def counts(store: LedgerStore) -> tuple[int, int]:
    """(messages in the outbox, dispatches delivered)."""
    async with store.engine.connect() as conn:
        made = await conn.scalar(sa.select(sa.func.count()).select_from(MESSAGE))
        done = await conn.scalar(sa.select(sa.func.count()).where(DISPATCH.c.state == "delivered"))
    return int(made or 0), int(done or 0)


async def failed_once(store: LedgerStore) -> bool:
    """Some dispatch failed an attempt and waits for its retry."""
    async with store.engine.connect() as conn:
        waiting = await conn.scalar(
            sa.select(sa.func.count()).where(DISPATCH.c.state == "pending", DISPATCH.c.attempts > 0)
        )
    return bool(waiting)


async def test_every_event_reaches_jetstream_once_through_a_broker_restart(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    store = LedgerStore(engine, utc_now)
    async with jetstream_server(tmp_path) as server:
        await server.add_stream(STREAM, [SUBJECT])
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        await store.create_endpoint(
            {
                "id": "ep_bus",
                "kind": "nats",
                "url": f"{server.url}/{SUBJECT}",
                "secrets": [{"secret": secret}],
            }
        )
        relay = Relay(LOOPBACK, store, clock=utc_now, schedule=SCHEDULE)
        running = asyncio.create_task(relay.run())
        try:
            await start_running(store, "before")

            async def some_delivered() -> bool:
                return (await counts(store))[1] >= TASKS_PER_ROUND // 2

            await eventually(some_delivered, within=30)
            await server.stop()  # mid-run: publishes fail, dispatches wait for their retry
            await start_running(store, "during")
            await eventually(lambda: failed_once(store), within=30)  # the outage was felt
            await server.start()
            await start_running(store, "after")

            async def all_delivered() -> bool:
                made, done = await counts(store)
                return made == done == 3 * TASKS_PER_ROUND

            await eventually(all_delivered, within=60)
        finally:
            relay.stopping.set()
            await asyncio.wait_for(running, timeout=30)
            await store.close()
        client = await connect_once(server.url)
        try:
            info = await client.jetstream().stream_info(STREAM)
        finally:
            await client.close()
    assert info.state.messages == 3 * TASKS_PER_ROUND  # each event once: Nats-Msg-Id dedupes
