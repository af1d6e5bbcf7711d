"""The group-commit writer: shared transactions, saturation, failures."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from receiver.errors import Overloaded
from receiver.writer import GroupCommitWriter
from schemas.errors import StorageUnavailable
from schemas.ledger import Auth, Delivery, Stored
from schemas.states import Outcome, State
from schemas.wire import Observation


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

    async def __call__(self, items: Sequence[Delivery]) -> list[Stored]:
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
    await asyncio.sleep(0.01)
    rest = [asyncio.create_task(writer.submit(delivery(f"k{i}"))) for i in range(1, 6)]
    await asyncio.sleep(0.01)
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
    await asyncio.sleep(0.01)
    queued = asyncio.create_task(writer.submit(delivery("b")))
    await asyncio.sleep(0.01)
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

    async def gated(items: Sequence[Delivery]) -> list[Stored]:
        await gate.wait()
        return await ingest(items)

    writer = GroupCommitWriter(gated)
    await writer.start()
    keys = ["a", "poison", "b", "c"]
    sent = [asyncio.create_task(writer.submit(delivery(k))) for k in keys]
    await asyncio.sleep(0.01)
    gate.set()
    answers = await asyncio.gather(*sent, return_exceptions=True)
    await writer.stop()
    assert isinstance(answers[1], Overloaded)
    assert [a.task_ref for a in answers if isinstance(a, Stored)] == ["a", "b", "c"]
    assert stored == ["a", "b", "c"]
