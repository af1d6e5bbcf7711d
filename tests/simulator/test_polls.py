"""Poll faults over real HTTP: rate limits, injected 429/500, slow and hung answers."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from simulator import Faults
from simulator.polls import RateLimiter
from tests.simulator.support import FakeClock, make_config, running, wait_until


def test_rate_limiter_accepts_rps_polls_per_sliding_second() -> None:
    limiter = RateLimiter()
    answers = [limiter.admit("apidot", 2, now) for now in (0.0, 0.5, 0.9, 1.0, 1.4, 1.6)]
    assert answers == [None, None, 1, None, 1, None]


def test_rate_limiter_spreads_a_fractional_rps_over_a_longer_window() -> None:
    limiter = RateLimiter()
    answers = [limiter.admit("evolink", 0.5, now) for now in (0.0, 1.0, 2.0)]
    assert answers == [None, 1, None]


def test_rate_limits_are_kept_per_format() -> None:
    limiter = RateLimiter()
    assert limiter.admit("openai", 1, 0.0) is None
    assert limiter.admit("apidot", 1, 0.0) is None


async def test_polls_above_the_rate_limit_get_429_with_retry_after(clock: FakeClock) -> None:
    faults = Faults(rate_limit_rps={"openai": 2})
    async with running(make_config(faults=faults), clock=clock) as run:
        task_id = await run.submit("openai")
        answers = [await run.status("openai", task_id) for _ in range(4)]
        clock.advance(1.0)
        later = await run.status("openai", task_id)
    assert [answer.status_code for answer in answers] == [200, 200, 429, 429]
    assert answers[2].headers["retry-after"] == "1"
    assert later.status_code == 200


async def test_rate_limit_applies_only_to_its_format(clock: FakeClock) -> None:
    faults = Faults(rate_limit_rps={"openai": 1})
    async with running(make_config(faults=faults), clock=clock) as run:
        task_id = await run.submit("evolink")
        answers = [await run.status("evolink", task_id) for _ in range(3)]
    assert {answer.status_code for answer in answers} == {200}


async def test_max_polls_in_one_second_counts_every_poll_received(clock: FakeClock) -> None:
    faults = Faults(rate_limit_rps={"apidot": 1})
    async with running(make_config(faults=faults), clock=clock) as run:
        task_id = await run.submit("apidot")
        for _ in range(3):
            await run.status("apidot", task_id)
            clock.advance(0.4)
        stats = run.sim.stats(poll_times=True)
    assert stats["max_polls_in_1s"]["apidot"] == 3
    assert stats["polls"]["rate_limited"] == 2
    assert len(stats["poll_times"]["apidot"]) == 3


async def test_injected_429_carries_the_configured_retry_after() -> None:
    async with running(make_config(faults=Faults(poll_429_rate=1.0, retry_after_s=7))) as run:
        task_id = await run.submit("evolink")
        answer = await run.status("evolink", task_id)
    assert answer.status_code == 429
    assert answer.headers["retry-after"] == "7"


async def test_injected_500_answers_a_json_error() -> None:
    async with running(make_config(faults=Faults(poll_500_rate=1.0))) as run:
        task_id = await run.submit("apidot")
        answer = await run.status("apidot", task_id)
    assert answer.status_code == 500
    assert answer.json()["error"]["type"] == "internal_error"


async def test_slow_poll_answers_after_the_configured_delay() -> None:
    async with running(make_config(faults=Faults(poll_slow_rate=1.0, slow_poll_s=0.3))) as run:
        task_id = await run.submit("openai")
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await run.status("openai", task_id)
        elapsed = loop.time() - started
    assert answer.status_code == 200
    assert elapsed >= 0.3


async def test_hung_poll_ends_when_the_client_gives_up() -> None:
    faults = Faults(poll_timeout_rate=1.0, timeout_poll_s=30.0)
    async with running(make_config(faults=faults)) as run:
        task_id = await run.submit("openai")
        with pytest.raises(httpx.ReadTimeout):
            await run.client.get(f"/openai/v1/videos/{task_id}", timeout=0.2)
        await wait_until(lambda: run.sim.stats()["in_flight"] == 0)
        stats = run.sim.stats()
    assert stats["polls"]["timed_out"] == 1


async def test_concurrent_polls_of_one_task_are_counted_while_in_flight() -> None:
    async with running(make_config(faults=Faults(poll_slow_rate=1.0, slow_poll_s=0.3))) as run:
        task_id = await run.submit("evolink")
        await asyncio.gather(*(run.status("evolink", task_id) for _ in range(3)))
        stats = run.sim.stats()
    assert stats["max_in_flight_per_task"][f"evolink/{task_id}"] == 3
    assert stats["max_in_flight"] == 3


async def test_sequential_polls_never_overlap() -> None:
    async with running(make_config()) as run:
        task_id = await run.submit("apidot")
        for _ in range(3):
            await run.status("apidot", task_id)
        stats = run.sim.stats()
    assert stats["polls_per_task"][f"apidot/{task_id}"] == 3
    assert stats["max_in_flight"] == 1
