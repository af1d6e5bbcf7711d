"""taskledger behind PgBouncer in transaction pooling mode, as most managed PostgreSQL is
reached: the whole system once, and the store's paths that lock (ingest, registrations
meeting over a provider id, the change feed's order, claims), with more client connections
than server connections so that clients take turns on them between transactions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from schemas.database import create_engine
from schemas.ledger import Auth, Delivery, Reader, read_delivery
from schemas.migrate import upgrade
from schemas.states import State
from schemas.store import LedgerStore, NewTask
from schemas.tables import DELIVERY, TASK
from schemas.wire import WireFormat
from tests.conftest import FakeClock
from tests.e2e.test_reconcile import (
    test_every_builtin_providers_tasks_with_hostile_faults_end_in_its_truth as chaos_run,
)
from tests.support.databases import temporary_database
from tests.support.pgbouncer import SERVER_POOL_SIZE, transaction_pooler
from tests.support.senders import apidot_body

TASKS = 60
APIDOT = Reader(WireFormat.APIDOT)


@pytest.fixture
async def pooled_url(tmp_path: Path) -> AsyncIterator[str]:
    """A new PostgreSQL database, reached through PgBouncer (`?pooling=transaction`)."""
    async with (
        temporary_database("postgresql", tmp_path) as direct,
        transaction_pooler(direct) as url,
    ):
        yield url


async def stores(stack: AsyncExitStack, url: str, clock: FakeClock, n: int) -> list[LedgerStore]:
    """`n` stores, each on an engine of its own (as `n` processes would be), migrated
    through the pooler: Alembic's migrations run in one transaction."""
    found = []
    for _ in range(n):
        engine = create_engine(url)
        stack.push_async_callback(engine.dispose)
        found.append(LedgerStore(engine, clock, {"apidot": APIDOT}))
    await upgrade(found[0].engine)
    return found


def early_callback(task_id: str, key: str, now: datetime) -> Delivery:
    """A callback naming a provider id, for a task that may not have that id yet."""
    body = apidot_body(task_id, "running", 50)
    return read_delivery(Delivery("apidot", key, body, {}, Auth.TOKEN, None, now), APIDOT)


async def test_the_system_converges_on_the_providers_truth_through_pgbouncer(
    pooled_url: str,
) -> None:
    """The PostgreSQL end-to-end run, every connection (migrations too) through the pooler."""
    await chaos_run(pooled_url)


async def test_callbacks_racing_the_registration_of_their_ids_are_all_folded_in(
    pooled_url: str, clock: FakeClock
) -> None:
    """A receiver keeps callbacks for ids no task has yet while a registrar registers tasks
    with those ids: the advisory locks per id and for the feed hold within each transaction,
    so none is left unmatched, and the change feed's seq has no gap."""
    async with AsyncExitStack() as stack:
        receiver, registrar = await stores(stack, pooled_url, clock, 2)
        ingests = [
            receiver.ingest([early_callback(f"t-{i}", f"k-{i}-{n}", clock()) for n in range(3)])
            for i in range(TASKS)
        ]
        registrations = [
            registrar.register(NewTask(provider="apidot", provider_task_id=f"t-{i}"))
            for i in range(TASKS)
        ]
        await asyncio.wait_for(asyncio.gather(*ingests, *registrations), timeout=60)
        clients = sum(store.engine.pool.checkedin() for store in (receiver, registrar))
        async with receiver.engine.connect() as conn:
            unmatched = await conn.scalar(
                sa.select(sa.func.count()).where(DELIVERY.c.task_ref.is_(None))
            )
            states = (await conn.execute(sa.select(TASK.c.state))).scalars().all()
        feed = await receiver.changes(after=0, limit=10 * TASKS)
    assert clients > SERVER_POOL_SIZE  # so client connections took turns on the server's
    assert unmatched == 0
    assert states == [State.RUNNING.value] * TASKS
    seqs = [change["seq"] for change in feed]
    assert seqs == list(range(seqs[0], seqs[0] + 2 * TASKS))  # submitted, then running


async def test_two_reconcilers_claim_each_due_task_once(pooled_url: str, clock: FakeClock) -> None:
    """Claims (SKIP LOCKED) from two stores at once share out the due tasks, none twice."""
    async with AsyncExitStack() as stack:
        first, second = await stores(stack, pooled_url, clock, 2)
        for i in range(TASKS):
            await first.register(
                NewTask(provider="apidot", provider_task_id=f"t-{i}", expected_seconds=1)
            )
        clock.advance(2)
        rounds = [
            store.claim_due(owner, "apidot", 7, lease_seconds=60)
            for _ in range(10)
            for owner, store in (("a", first), ("b", second))
        ]
        claims = await asyncio.wait_for(asyncio.gather(*rounds), timeout=60)
    refs = [claim.ref for batch in claims for claim in batch]
    assert sorted(refs) == sorted(set(refs))
    assert len(refs) == TASKS
