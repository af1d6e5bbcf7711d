"""Body-read deadlines: a stalled read ends in TimeoutError, anything else is left alone.

The deadlines run on `ManualTimers`: their time moves only when a test advances it, so no
test waits for, or races, the wall clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import pytest

from receiver.deadlines import Deadlines, of_running_loop
from tests.support.waiting import until


@dataclass
class Timer:
    at: float
    callback: Callable[[], object]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualTimers:
    """The loop time and timers `Deadlines` uses, moved by hand (`advance`)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[Timer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, at: float, callback: Callable[[], object]) -> Timer:
        timer = Timer(at, callback)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        """Move time on and fire every timer due by then, those armed meanwhile included."""
        self.now += seconds
        while due := [t for t in self.timers if not t.cancelled and t.at <= self.now]:
            for timer in due:
                self.timers.remove(timer)
                timer.callback()


def manual_deadlines() -> tuple[Deadlines, ManualTimers]:
    timers = ManualTimers()
    return Deadlines(cast(Any, timers)), timers


async def stalled() -> bytes:
    await asyncio.Event().wait()
    return b"never"


async def arrives(when: asyncio.Event) -> bytes:
    await when.wait()
    return b"body"


async def arrives_at_once() -> bytes:
    await asyncio.sleep(0)  # one loop turn, as a body already on the wire
    return b"body"


async def test_a_read_that_stalls_past_its_deadline_raises_timeout_error() -> None:
    deadlines, timers = manual_deadlines()
    reader = asyncio.create_task(deadlines.within(0.05, stalled()))
    await until(lambda: len(deadlines) == 1)
    timers.advance(0.04)
    await asyncio.sleep(0)  # a turn in which a cancelled reader would end
    assert not reader.done()
    timers.advance(0.01)
    with pytest.raises(TimeoutError):
        await reader
    assert len(deadlines) == 0


async def test_a_read_in_time_returns_and_leaves_no_cancellation_behind() -> None:
    deadlines, timers = manual_deadlines()
    assert await deadlines.within(0.2, arrives_at_once()) == b"body"
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    timers.advance(0.3)  # past the deadline it had: nothing cancels this task now
    await asyncio.sleep(0)  # where a stray cancellation would be raised
    assert task.cancelling() == 0
    assert len(deadlines) == 0


async def test_a_cancellation_from_elsewhere_is_not_turned_into_a_timeout() -> None:
    deadlines = of_running_loop()
    reader = asyncio.create_task(deadlines.within(10, stalled()))
    await until(lambda: len(deadlines) == 1)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert len(deadlines) == 0


async def test_a_shorter_deadline_after_a_longer_one_still_fires_on_time() -> None:
    deadlines, timers = manual_deadlines()
    patient = asyncio.create_task(deadlines.within(30, stalled()))
    await until(lambda: len(deadlines) == 1)
    hasty = asyncio.create_task(deadlines.within(0.05, stalled()))
    await until(lambda: len(deadlines) == 2)
    timers.advance(0.05)
    with pytest.raises(TimeoutError):
        await hasty
    assert not patient.done()
    patient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await patient


async def test_many_readers_each_get_their_own_deadline() -> None:
    deadlines, timers = manual_deadlines()
    arrivals = [asyncio.Event() for _ in range(5)]
    quick = [deadlines.within(0.5, arrives(arrivals[i % 5])) for i in range(50)]
    slow = [deadlines.within(0.05 + 0.01 * i, stalled()) for i in range(10)]
    reading = asyncio.gather(*quick, *slow, return_exceptions=True)
    await until(lambda: len(deadlines) == 60)
    for step in range(20):  # 10 ms a step: the quick bodies arrive in the first five
        if step < len(arrivals):
            arrivals[step].set()
        timers.advance(0.01)
        await asyncio.sleep(0)
    results = await reading
    assert results[:50] == [b"body"] * 50
    assert all(isinstance(r, TimeoutError) for r in results[50:])
    assert len(deadlines) == 0


async def test_a_deadline_outside_a_task_is_refused() -> None:
    loop = asyncio.get_running_loop()
    refused: asyncio.Future[BaseException] = loop.create_future()

    def drive_outside_any_task() -> None:
        inner = arrives_at_once()
        read = Deadlines(loop).within(1, inner)
        try:
            read.send(None)
        except RuntimeError as exc:
            refused.set_result(exc)
        finally:
            read.close()
            inner.close()

    loop.call_soon(drive_outside_any_task)
    assert "task" in str(await asyncio.wait_for(refused, timeout=5))
