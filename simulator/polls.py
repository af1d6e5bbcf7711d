"""Status-poll faults: sliding-window rate limits, injected 429/500, slow and hung answers."""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request

from simulator.config import Faults
from simulator.stats import Stats


@dataclass(frozen=True)
class Refusal:
    """An error answer a poll gets instead of the task's status."""

    status_code: int
    code: str
    message: str
    retry_after_s: int | None = None


class RateLimiter:
    """Accepts at most `rps` polls per second per format, over a sliding window.

    A whole `rps` of N allows N polls in any 1-second window; a fractional one allows
    max(1, floor(rps)) polls in any window of that count divided by `rps` seconds.
    """

    def __init__(self) -> None:
        self._accepted: dict[str, deque[float]] = {}

    def admit(self, fmt: str, rps: float, now: float) -> int | None:
        """Record and accept a poll (None), or return the seconds to wait before retrying."""
        limit = max(1, math.floor(rps))
        window = limit / rps
        accepted = self._accepted.setdefault(fmt, deque())
        while accepted and accepted[0] <= now - window:
            accepted.popleft()
        if len(accepted) < limit:
            accepted.append(now)
            return None
        return max(1, math.ceil(accepted[0] + window - now))


class PollGate:
    """Decides, per poll, whether to refuse it, delay it, or let it through."""

    def __init__(
        self,
        stats: Stats,
        rng: random.Random,
        clock: Callable[[], float],
        faults: Callable[[], Faults],
    ) -> None:
        self._stats = stats
        self._rng = rng
        self._clock = clock
        self._faults = faults
        self._limiter = RateLimiter()

    async def check(self, fmt: str, request: Request) -> Refusal | None:
        """Apply the poll faults in order: rate limit, 429, 500, hang, slow."""
        faults = self._faults()
        refusal = self._refuse(fmt, faults)
        if refusal is not None:
            return refusal
        if self._rng.random() < faults.poll_timeout_rate:
            self._stats.polls["timed_out"] += 1
            await pause(request, faults.timeout_poll_s)
        elif self._rng.random() < faults.poll_slow_rate:
            self._stats.polls["slow"] += 1
            await pause(request, faults.slow_poll_s)
        return None

    def _refuse(self, fmt: str, faults: Faults) -> Refusal | None:
        counts = self._stats.polls
        rps = faults.rate_limit_rps.get(fmt)
        wait_s = self._limiter.admit(fmt, rps, self._clock()) if rps else None
        if wait_s is not None:
            counts["rate_limited"] += 1
            return Refusal(429, "rate_limited", "Rate limit exceeded.", wait_s)
        if self._rng.random() < faults.poll_429_rate:
            counts["injected_429"] += 1
            return Refusal(429, "rate_limited", "Too many requests.", faults.retry_after_s)
        if self._rng.random() < faults.poll_500_rate:
            counts["injected_500"] += 1
            return Refusal(500, "internal_error", "Internal server error.")
        return None


async def pause(request: Request, seconds: float) -> None:
    """Sleep `seconds`, or less if the client hangs up meanwhile (so in-flight counts stay true)."""
    watcher = asyncio.create_task(wait_for_disconnect(request))
    try:
        await asyncio.wait({watcher}, timeout=seconds)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


async def wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
