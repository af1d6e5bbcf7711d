"""Claiming due tasks: leases, and a selection whose cost follows the due tasks only."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.store import LedgerStore, NewTask, new_task_row
from schemas.tables import TASK
from tests.conftest import FakeClock


async def test_a_claimed_task_is_not_claimed_again_until_its_lease_expires(
    store: LedgerStore, clock: FakeClock
) -> None:
    await store.register(NewTask(provider="apidot", provider_task_id="t-1", expected_seconds=1))
    clock.advance(2)
    first = await store.claim_due("a", "apidot", 10, lease_seconds=30)
    second = await store.claim_due("b", "apidot", 10, lease_seconds=30)
    clock.advance(31)
    third = await store.claim_due("b", "apidot", 10, lease_seconds=30)
    assert (len(first), len(second), len(third)) == (1, 0, 1)


async def test_release_gives_back_the_owners_leases(store: LedgerStore, clock: FakeClock) -> None:
    await store.register(NewTask(provider="apidot", provider_task_id="t-1", expected_seconds=1))
    clock.advance(2)
    await store.claim_due("a", "apidot", 10, lease_seconds=30)
    assert await store.release("a") == 1
    assert len(await store.claim_due("b", "apidot", 10, lease_seconds=30)) == 1


async def test_tasks_not_yet_due_are_not_claimed(store: LedgerStore, clock: FakeClock) -> None:
    await store.register(NewTask(provider="apidot", provider_task_id="t-1", expected_seconds=60))
    assert await store.claim_due("a", "apidot", 10, lease_seconds=30) == []


async def test_due_selection_uses_the_partial_index_not_a_table_scan(
    engine: AsyncEngine, store: LedgerStore, clock: FakeClock
) -> None:
    settled = [_row(clock, i, due=False) for i in range(5000)]
    due = [_row(clock, i, due=True) for i in range(5)]
    async with engine.begin() as conn:
        await conn.execute(TASK.insert(), settled + due)
        await conn.execute(sa.text("ANALYZE"))
    plan = await store.explain_due("apidot", 100)
    print("\n" + plan)
    assert "ix_task_due" in plan
    assert "SCAN task" not in plan
    assert "Seq Scan" not in plan
    assert len(await store.claim_due("r", "apidot", 100, lease_seconds=30)) == 5


def _row(clock: FakeClock, i: int, *, due: bool) -> dict[str, object]:
    now = clock()
    row = new_task_row(NewTask(provider="apidot", provider_task_id=f"{due}-{i}"), now)
    if due:
        return {**row, "state": "running", "next_poll_at": now - timedelta(seconds=1)}
    return {**row, "state": "succeeded", "state_source": "poll", "next_poll_at": None}
