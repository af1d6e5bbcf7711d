"""A claimed submission stays `pending` until its request is about to leave: the `sending`
mark is written then, only by the reconciler that still holds the task's lease."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from schemas.store import LedgerStore, NewTask
from tests.conftest import FakeClock

LEASE_SECONDS = 30


async def _claimed(store: LedgerStore, owner: str = "r1") -> str:
    row = await store.register(NewTask("apidot", submit=True))
    (claim,) = await store.claim_due(owner, "apidot", 10, LEASE_SECONDS)
    assert claim.ref == row.ref
    return claim.ref


async def _submission(store: LedgerStore, ref: str) -> str | None:
    task = await store.get(ref)
    assert task is not None
    return task.submission


async def test_a_claimed_submission_stays_pending(store: LedgerStore) -> None:
    ref = await _claimed(store)
    assert await _submission(store, ref) == "pending"


async def test_the_lease_holder_marks_its_submission_sending(store: LedgerStore) -> None:
    ref = await _claimed(store)
    assert await store.mark_sending("r1", ref)
    assert await _submission(store, ref) == "sending"


async def _lease_expired(store: LedgerStore, clock: FakeClock, ref: str) -> None:
    clock.advance(LEASE_SECONDS + 1)


async def _lease_taken_over(store: LedgerStore, clock: FakeClock, ref: str) -> None:
    clock.advance(LEASE_SECONDS + 1)
    assert [claim.ref for claim in await store.claim_due("r2", "apidot", 10, 60)] == [ref]


async def _marked_already(store: LedgerStore, clock: FakeClock, ref: str) -> None:
    assert await store.mark_sending("r1", ref)


Change = Callable[[LedgerStore, FakeClock, str], Awaitable[None]]


@pytest.mark.parametrize(
    ("change", "left"),
    [
        (_lease_expired, "pending"),
        (_lease_taken_over, "pending"),
        (_marked_already, "sending"),
    ],
    ids=["lease-expired", "lease-taken-over", "marked-already"],
)
async def test_no_mark_once_the_lease_or_the_submission_has_moved_on(
    store: LedgerStore, clock: FakeClock, change: Change, left: str
) -> None:
    ref = await _claimed(store)
    await change(store, clock, ref)
    assert not await store.mark_sending("r1", ref)
    assert await _submission(store, ref) == left


async def test_no_mark_for_a_task_with_nothing_to_submit(
    store: LedgerStore, clock: FakeClock
) -> None:
    row = await store.register(NewTask("apidot", provider_task_id="t-1", expected_seconds=1))
    clock.advance(2)
    await store.claim_due("r1", "apidot", 10, LEASE_SECONDS)
    assert not await store.mark_sending("r1", row.ref)
    assert await _submission(store, row.ref) is None
