"""The per-provider limiter: sliding-window rate, concurrency cap and 429 pauses, on fake time."""

from __future__ import annotations

import asyncio
import itertools
import math

import pytest

from reconciler.limits import Deadline, DeadlineReached, RateLimiter
from schemas.settings import ProviderSettings
from schemas.wire import WireFormat
from tests.support.fake_time import FakeTime


def limiter(time: FakeTime, rate: float, concurrency: int = 100) -> RateLimiter:
    return RateLimiter(rate, concurrency, clock=time.clock, sleep=time.sleep)


async def start_times(limiter: RateLimiter, time: FakeTime, callers: int) -> list[float]:
    """When each of `callers` concurrent callers got its slot."""
    starts: list[float] = []

    async def call() -> None:
        async with limiter.slot():
            starts.append(time.clock())

    await asyncio.gather(*(call() for _ in range(callers)))
    return sorted(starts)


def most_in_any_window(starts: list[float], seconds: float) -> int:
    return max(sum(1 for s in starts if first <= s < first + seconds) for first in starts)


@pytest.mark.parametrize("rate", [1, 3, 5, 2.5, 0.5, 0.2], ids=lambda r: f"{r}rps")
async def test_no_one_second_window_sees_more_than_the_rate(rate: float) -> None:
    time = FakeTime()
    starts = await start_times(limiter(time, rate), time, callers=25)
    assert most_in_any_window(starts, 1.0) <= max(1, math.floor(rate))


async def test_fractional_rate_below_one_spaces_starts_by_its_period() -> None:
    time = FakeTime()
    starts = await start_times(limiter(time, 0.5), time, callers=4)
    assert all(later - earlier >= 2.0 for earlier, later in itertools.pairwise(starts))


async def test_a_full_window_starts_without_waiting() -> None:
    time = FakeTime()
    await start_times(limiter(time, 3), time, callers=3)
    assert time.sleeps == []


async def test_waiting_callers_start_as_soon_as_the_window_allows() -> None:
    time = FakeTime()
    starts = await start_times(limiter(time, 3), time, callers=9)
    assert starts[-1] - starts[0] < 2.2


async def test_a_slow_answer_keeps_its_place_until_one_window_after_it_came() -> None:
    """The provider may count a request as late as its answer: the window runs from there."""
    time = FakeTime()
    gate = limiter(time, rate=1)
    async with gate.slot():
        time.now += 0.4  # the answer took 0.4 s
    starts = await start_times(gate, time, callers=1)
    assert starts == [pytest.approx(1000.4 + gate.window_seconds)]


async def test_a_full_window_of_requests_in_flight_waits_for_an_answer() -> None:
    time = FakeTime()
    gate = limiter(time, rate=2)
    answered = asyncio.Event()
    order: list[str] = []

    async def slow() -> None:
        async with gate.slot():
            await answered.wait()
            order.append("answered")

    async def third() -> None:
        async with gate.slot():
            order.append("third started")

    callers = [asyncio.create_task(slow()) for _ in range(2)]
    late = asyncio.create_task(third())
    for _ in range(10):
        await asyncio.sleep(0)
    assert order == []  # no time passed; the third did not start while two were in flight
    answered.set()
    await asyncio.gather(*callers, late)
    assert order == ["answered", "answered", "third started"]
    assert time.now >= 1000.0 + gate.window_seconds


async def test_concurrent_requests_never_exceed_the_concurrency_cap() -> None:
    gate = limiter(FakeTime(), rate=1000, concurrency=2)
    in_flight, most, done = 0, 0, 0

    async def call() -> None:
        nonlocal in_flight, most, done
        async with gate.slot():
            in_flight += 1
            most = max(most, in_flight)
            for _ in range(5):
                await asyncio.sleep(0)
            in_flight -= 1
            done += 1

    await asyncio.gather(*(call() for _ in range(7)))
    assert (most, done) == (2, 7)


async def test_a_failing_request_gives_its_concurrency_slot_back() -> None:
    gate = limiter(FakeTime(), rate=1000, concurrency=1)
    with pytest.raises(RuntimeError):
        async with gate.slot():
            raise RuntimeError("request failed")
    async with asyncio.timeout(1), gate.slot():
        pass


async def test_pause_holds_the_next_start_until_it_ends() -> None:
    time = FakeTime()
    gate = limiter(time, rate=1000)
    gate.pause(7)
    starts = await start_times(gate, time, callers=1)
    assert starts == [pytest.approx(1007.0)]


async def test_a_shorter_pause_does_not_cut_a_longer_one() -> None:
    time = FakeTime()
    gate = limiter(time, rate=1000)
    gate.pause(10)
    gate.pause(2)
    assert gate.paused_until == 1010.0


async def test_pause_starting_while_a_caller_waits_for_the_window_holds_it_too() -> None:
    time = FakeTime()

    async def sleep_and_get_paused(seconds: float) -> None:
        if not time.sleeps:
            gate.pause(30)
        await time.sleep(seconds)

    gate = RateLimiter(1, 10, clock=time.clock, sleep=sleep_and_get_paused)
    starts = await start_times(gate, time, callers=2)
    assert starts[1] >= 1030.0


async def test_a_wait_for_a_pause_past_the_deadline_is_refused_without_waiting() -> None:
    time = FakeTime()
    gate = limiter(time, rate=1000)
    gate.pause(100)
    with pytest.raises(DeadlineReached) as refused:
        async with gate.slot(Deadline(time.now + 10, clock=time.clock)):
            pass
    assert refused.value.ready_in_seconds == pytest.approx(100.0)
    assert time.sleeps == []


async def test_a_wait_for_a_pause_within_the_deadline_is_waited_for() -> None:
    time = FakeTime()
    gate = limiter(time, rate=1000)
    gate.pause(7)
    async with gate.slot(Deadline(time.now + 10, clock=time.clock)):
        assert time.now == pytest.approx(1007.0)


async def test_a_slot_freed_only_after_the_deadline_starts_nothing() -> None:
    time = FakeTime()
    gate = limiter(time, rate=1000, concurrency=1)
    answered = asyncio.Event()

    async def slow() -> None:
        async with gate.slot():
            await answered.wait()
            time.now += 30  # the answer came after the waiting caller's deadline

    holder = asyncio.create_task(slow())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(_enter(gate, Deadline(time.now + 10, clock=time.clock)))
    await asyncio.sleep(0)
    answered.set()
    await holder
    with pytest.raises(DeadlineReached):
        await waiter


async def test_a_stop_ends_a_wait_for_the_pause() -> None:
    waiting = asyncio.Event()

    async def sleep(seconds: float) -> None:
        waiting.set()
        await asyncio.sleep(seconds)

    gate = RateLimiter(1000, 10, sleep=sleep)
    gate.pause(60)
    deadline = Deadline()
    entering = asyncio.create_task(_enter(gate, deadline))
    async with asyncio.timeout(1):
        await waiting.wait()
        deadline.stop()
        with pytest.raises(DeadlineReached):
            await entering


async def test_a_caller_stopped_while_waiting_for_a_slot_starts_nothing_and_frees_it() -> None:
    gate = RateLimiter(1000, 1)
    answered = asyncio.Event()

    async def slow() -> None:
        async with gate.slot():
            await answered.wait()

    holder = asyncio.create_task(slow())
    await asyncio.sleep(0)
    deadline = Deadline()
    entering = asyncio.create_task(_enter(gate, deadline))
    await asyncio.sleep(0)
    deadline.stop()
    answered.set()
    async with asyncio.timeout(1):
        await holder
        with pytest.raises(DeadlineReached):
            await entering
        async with gate.slot():  # the stopped caller left the slot to the next one
            pass


async def test_a_stopped_deadline_refuses_a_slot_at_once() -> None:
    gate = RateLimiter(1000, 10)
    deadline = Deadline()
    deadline.stop()
    with pytest.raises(DeadlineReached):
        await _enter(gate, deadline)


async def _enter(gate: RateLimiter, deadline: Deadline) -> None:
    async with gate.slot(deadline):
        pass


def test_limiter_for_provider_takes_its_rate_and_concurrency() -> None:
    settings = ProviderSettings(
        "apidot", WireFormat.APIDOT, rate_limit_per_second=2.5, concurrency=3
    )
    gate = RateLimiter.for_provider(settings)
    assert (gate.limit, gate.concurrency) == (2, 3)


@pytest.mark.parametrize(
    ("rate", "concurrency"),
    [(0, 1), (-1, 1), (math.inf, 1), (math.nan, 1), (1, 0)],
    ids=["zero-rate", "negative-rate", "infinite-rate", "nan-rate", "zero-concurrency"],
)
def test_limiter_refuses_limits_that_cannot_be_kept(rate: float, concurrency: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        RateLimiter(rate, concurrency)
