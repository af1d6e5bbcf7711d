"""The group-commit writer: shared transactions, saturation, failures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
import structlog

from receiver.errors import Conflict, Overloaded
from receiver.writer import GroupCommitWriter
from schemas.errors import ConstraintViolation, StorageUnavailable
from schemas.ledger import Auth, Delivery, Stored
from schemas.states import Outcome, State
from schemas.wire import Observation
from schemas.write_deadline import WriteBusy
from schemas.write_deadline import current as current_deadline
from tests.support.waiting import until


def delivery(key: str) -> Delivery:
    return Delivery(
        provider="apidot",
        delivery_key=key,
        body=b"{}",
        headers={},
        auth=Auth.TOKEN,
        observation=Observation("t", State.RUNNING),
        received_at=datetime.now(UTC),
    )


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.error: Exception | None = None
        self.calls = 0

    async def __call__(self, items: Sequence[Delivery]) -> list[Stored]:
        self.calls += 1
        await self.gate.wait()
        if self.error:
            raise self.error
        self.batches.append([d.delivery_key for d in items])
        return [Stored(Outcome.APPLIED, d.delivery_key) for d in items]


async def test_concurrent_deliveries_share_one_batch_and_get_their_own_result() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    writer = GroupCommitWriter(recorder)
    await writer.start()
    first = asyncio.create_task(writer.submit(delivery("k0")))
    await until(lambda: recorder.calls == 1)  # k0's batch is in, held at the gate
    rest = [asyncio.create_task(writer.submit(delivery(f"k{i}"))) for i in range(1, 6)]
    await until(lambda: writer.queued == 5)  # the rest wait behind it
    recorder.gate.set()
    results = await asyncio.gather(first, *rest)
    await writer.stop()
    assert [r.task_ref for r in results] == [f"k{i}" for i in range(6)]
    assert recorder.batches == [["k0"], ["k1", "k2", "k3", "k4", "k5"]]


async def test_full_queue_is_refused_at_once() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    writer = GroupCommitWriter(recorder, queue_size=1)
    await writer.start()
    in_flight = asyncio.create_task(writer.submit(delivery("a")))
    await until(lambda: recorder.calls == 1)  # "a" is in a batch, held at the gate
    queued = asyncio.create_task(writer.submit(delivery("b")))
    await until(lambda: writer.queued == 1)  # "b" fills the queue
    with pytest.raises(Overloaded):
        await writer.submit(delivery("c"))
    recorder.gate.set()
    await asyncio.gather(in_flight, queued)
    await writer.stop()


async def test_storage_failure_fails_the_whole_batch_as_overloaded() -> None:
    recorder = Recorder()
    recorder.error = StorageUnavailable("gone")
    writer = GroupCommitWriter(recorder)
    await writer.start()
    with pytest.raises(Overloaded):
        await writer.submit(delivery("a"))
    recorder.error = None
    assert (await writer.submit(delivery("b"))).outcome is Outcome.APPLIED
    await writer.stop()


async def test_stopped_writer_refuses() -> None:
    writer = GroupCommitWriter(Recorder())
    with pytest.raises(Overloaded):
        await writer.submit(delivery("a"))


async def test_one_poison_delivery_fails_alone_and_its_batch_is_stored() -> None:
    stored: list[str] = []

    async def ingest(items: Sequence[Delivery]) -> list[Stored]:
        if any(d.delivery_key == "poison" for d in items):
            raise ValueError("cannot store this one")
        stored.extend(d.delivery_key for d in items)
        return [Stored(Outcome.APPLIED, d.delivery_key) for d in items]

    gate = asyncio.Event()
    batches: list[int] = []

    async def gated(items: Sequence[Delivery]) -> list[Stored]:
        batches.append(len(items))
        await gate.wait()
        return await ingest(items)

    writer = GroupCommitWriter(gated)
    await writer.start()
    keys = ["a", "poison", "b", "c"]
    sent = [asyncio.create_task(writer.submit(delivery(k))) for k in keys]
    await until(lambda: batches == [len(keys)])  # all four in one batch, held at the gate
    gate.set()
    answers = await asyncio.gather(*sent, return_exceptions=True)
    await writer.stop()
    assert isinstance(answers[1], Overloaded)
    assert [a.task_ref for a in answers if isinstance(a, Stored)] == ["a", "b", "c"]
    assert stored == ["a", "b", "c"]


async def test_a_delivery_breaking_a_unique_key_is_a_409_alone_never_a_503() -> None:
    """The store's constraint errors are the delivery's fault, not the database's: its
    neighbours are stored, and it alone gets a precise answer."""

    async def ingest(items: Sequence[Delivery]) -> list[Stored]:
        if any(d.delivery_key == "clash" for d in items):
            raise ConstraintViolation("the batch broke a unique key on every try")
        return [Stored(Outcome.APPLIED, d.delivery_key) for d in items]

    writer = GroupCommitWriter(ingest)
    await writer.start()
    answers = await asyncio.gather(
        *[writer.submit(delivery(k)) for k in ("a", "clash", "b")], return_exceptions=True
    )
    await writer.stop()
    assert isinstance(answers[1], Conflict)
    assert answers[1].status_code == 409
    assert [a.task_ref for a in answers if isinstance(a, Stored)] == ["a", "b"]
    assert writer.refusal is None  # the database is fine: readiness is not touched


async def test_with_concurrency_several_batches_commit_at_once() -> None:
    in_flight: list[list[str]] = []
    all_in = asyncio.Event()

    async def ingest(items: Sequence[Delivery]) -> list[Stored]:
        in_flight.append([d.delivery_key for d in items])
        if len(in_flight) == 3:
            all_in.set()
        await all_in.wait()  # only returns once three batches are open together
        return [Stored(Outcome.APPLIED, d.delivery_key) for d in items]

    writer = GroupCommitWriter(ingest, concurrency=3)
    await writer.start()
    sent = []
    for i in range(3):  # one at a time: each batch takes the one delivery queued
        sent.append(asyncio.create_task(writer.submit(delivery(f"k{i}"))))
        await until(lambda n=i: len(in_flight) == n + 1)
    results = await asyncio.wait_for(asyncio.gather(*sent), timeout=5)
    await writer.stop()
    assert sorted(in_flight) == [["k0"], ["k1"], ["k2"]]
    assert [r.task_ref for r in results] == ["k0", "k1", "k2"]


async def test_stop_commits_what_every_writer_holds() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    writer = GroupCommitWriter(recorder, concurrency=2)
    await writer.start()
    sent = [asyncio.create_task(writer.submit(delivery(f"k{i}"))) for i in range(5)]
    await until(lambda: recorder.calls >= 1 and writer.queued == 0)  # all held at the gate
    stopping = asyncio.create_task(writer.stop())
    await asyncio.sleep(0)  # one loop turn: stop runs until it waits for the held batches
    assert not stopping.done()
    recorder.gate.set()
    await asyncio.wait_for(stopping, timeout=5)
    assert sorted(k for batch in recorder.batches for k in batch) == [f"k{i}" for i in range(5)]
    assert all(r.outcome is Outcome.APPLIED for r in await asyncio.gather(*sent))
    with pytest.raises(Overloaded):
        await writer.submit(delivery("late"))


async def test_a_delivery_stuck_behind_a_batch_is_answered_503_at_its_deadline() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    writer = GroupCommitWriter(recorder)
    await writer.start()
    loop = asyncio.get_running_loop()
    ahead = asyncio.create_task(writer.submit(delivery("ahead"), within=30))
    await until(lambda: recorder.calls == 1)  # its batch is in, waiting on the database
    started = loop.time()
    with pytest.raises(Overloaded, match="deadline"):
        await asyncio.wait_for(writer.submit(delivery("late"), within=0.2), timeout=5)
    assert 0.2 <= loop.time() - started < 2
    recorder.gate.set()
    assert (await ahead).outcome is Outcome.APPLIED
    await writer.stop()
    assert recorder.batches == [["ahead"]]  # the late one was dropped, never written


async def test_a_delivery_that_arrived_past_its_deadline_is_refused_unqueued() -> None:
    recorder = Recorder()
    writer = GroupCommitWriter(recorder)
    await writer.start()
    with pytest.raises(Overloaded):
        await writer.submit(delivery("old"), arrived=time.perf_counter() - 10, within=5)
    assert (await writer.submit(delivery("new"), arrived=time.perf_counter())).task_ref == "new"
    await writer.stop()
    assert recorder.batches == [["new"]]


async def test_a_batch_waits_for_the_database_until_its_earliest_deadline() -> None:
    seen: list[float | None] = []

    async def ingest(items: Sequence[Delivery]) -> list[Stored]:
        seen.append(current_deadline())
        return [Stored(Outcome.APPLIED, d.delivery_key) for d in items]

    writer = GroupCommitWriter(ingest, answer_within=30)
    await writer.start()
    loop = asyncio.get_running_loop()
    before = loop.time()
    patient = asyncio.create_task(writer.submit(delivery("patient")))
    hasty = asyncio.create_task(writer.submit(delivery("hasty"), within=2))
    await asyncio.gather(patient, hasty)
    await writer.stop()
    assert len(seen) == 1
    assert seen[0] is not None
    assert before + 2 <= seen[0] <= loop.time() + 2


async def test_a_refusal_by_the_database_is_reported_until_a_batch_commits() -> None:
    recorder = Recorder()
    writer = GroupCommitWriter(recorder)
    await writer.start()
    recorder.error = WriteBusy("the write lock stayed busy")
    with pytest.raises(Overloaded):
        await writer.submit(delivery("busy"))
    assert writer.refusal is None  # busy is not refusing
    recorder.error = StorageUnavailable("database error: disk full")
    with pytest.raises(Overloaded):
        await writer.submit(delivery("full"))
    assert writer.refusal == "database error: disk full"
    recorder.error = None
    await writer.submit(delivery("stored"))
    assert writer.refusal is None
    await writer.stop()


async def test_batches_failing_alike_are_one_warning_and_every_delivery_answered() -> None:
    recorder = Recorder()
    writer = GroupCommitWriter(recorder)
    await writer.start()
    recorder.error = StorageUnavailable("database error: the disk is full (SQLITE_FULL)")
    with structlog.testing.capture_logs() as logs:
        for i in range(20):
            with pytest.raises(Overloaded):
                await writer.submit(delivery(f"full-{i}"))
    await writer.stop()
    failed = [line for line in logs if line["event"] == "batch_failed"]
    assert [(line["detail"], line["left_out"]) for line in failed] == [
        ("database error: the disk is full (SQLITE_FULL)", 0)
    ]
