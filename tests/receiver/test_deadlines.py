"""Body-read deadlines: a stalled read ends in TimeoutError, anything else is left alone."""

from __future__ import annotations

import asyncio

import pytest

from receiver.deadlines import Deadlines, of_running_loop


async def stalled() -> bytes:
    await asyncio.Event().wait()
    return b"never"


async def arrives_after(seconds: float) -> bytes:
    await asyncio.sleep(seconds)
    return b"body"


async def test_a_read_that_stalls_past_its_deadline_raises_timeout_error() -> None:
    deadlines = of_running_loop()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(deadlines.within(0.05, stalled()), timeout=5)
    assert 0.05 <= loop.time() - started < 2
    assert len(deadlines) == 0


async def test_a_read_in_time_returns_and_leaves_no_cancellation_behind() -> None:
    deadlines = of_running_loop()
    assert await deadlines.within(0.2, arrives_after(0.01)) == b"body"
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    await asyncio.sleep(0.3)  # past the deadline it had: nothing cancels this task now
    assert len(deadlines) == 0


async def test_a_cancellation_from_elsewhere_is_not_turned_into_a_timeout() -> None:
    deadlines = of_running_loop()
    reader = asyncio.create_task(deadlines.within(10, stalled()))
    await asyncio.sleep(0.01)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert len(deadlines) == 0


async def test_a_shorter_deadline_after_a_longer_one_still_fires_on_time() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    patient = asyncio.create_task(deadlines.within(30, stalled()))
    await asyncio.sleep(0)
    hasty = asyncio.create_task(deadlines.within(0.05, stalled()))
    done, _ = await asyncio.wait([hasty], timeout=5)
    assert hasty in done
    assert isinstance(hasty.exception(), TimeoutError)
    assert not patient.done()
    patient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await patient


async def test_many_readers_each_get_their_own_deadline() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    quick = [deadlines.within(0.5, arrives_after(0.01 * (i % 5))) for i in range(50)]
    slow = [deadlines.within(0.05 + 0.01 * i, stalled()) for i in range(10)]
    results = await asyncio.wait_for(
        asyncio.gather(*quick, *slow, return_exceptions=True), timeout=5
    )
    assert results[:50] == [b"body"] * 50
    assert all(isinstance(r, TimeoutError) for r in results[50:])
    assert len(deadlines) == 0


async def test_a_deadline_outside_a_task_is_refused() -> None:
    loop = asyncio.get_running_loop()
    refused: asyncio.Future[BaseException] = loop.create_future()

    def drive_outside_any_task() -> None:
        inner = arrives_after(0)
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
