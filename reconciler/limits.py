"""Per-provider request limits: a sliding-window rate cap, a concurrency cap and 429 pauses.

One `RateLimiter` per provider, shared by every caller in the process: `async with limiter.slot():`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from schemas.settings import ProviderSettings

# Requests are timed when they start here, but counted when they arrive at the provider:
# widening our window by a little keeps network jitter from pushing two starts into one window.
WINDOW_MARGIN_SECONDS = 0.05

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class RateLimiter:
    """At most `rate_per_second` request starts in any sliding 1-second window, at most
    `concurrency` requests in flight, and none at all while paused.

    A whole rate R allows R starts per window of 1 s; a fractional rate allows
    max(1, floor(R)) starts per window of max(1, floor(R) / R) seconds (0.5 => one per 2 s),
    so no 1-second window ever holds more than max(1, floor(R)) starts.
    """

    def __init__(
        self,
        rate_per_second: float,
        concurrency: int,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        margin_seconds: float = WINDOW_MARGIN_SECONDS,
    ) -> None:
        if not rate_per_second > 0 or not math.isfinite(rate_per_second):
            raise ValueError(f"rate_per_second must be positive and finite, not {rate_per_second}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self.limit = max(1, math.floor(rate_per_second))
        self.window_seconds = max(1.0, self.limit / rate_per_second) + max(0.0, margin_seconds)
        self.concurrency = concurrency
        self._clock = clock
        self._sleep = sleep
        self._starts: deque[float] = deque()
        self._paused_until = -math.inf
        self._in_flight = asyncio.Semaphore(concurrency)
        self._turn = asyncio.Lock()

    @classmethod
    def for_provider(
        cls,
        settings: ProviderSettings,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> RateLimiter:
        return cls(settings.rate_limit_per_second, settings.concurrency, clock=clock, sleep=sleep)

    @property
    def paused_until(self) -> float:
        """The clock reading before which no request starts (-inf when never paused)."""
        return self._paused_until

    def pause(self, seconds: float) -> None:
        """Start no request for `seconds` from now; a shorter pause never cuts a longer one."""
        if seconds > 0 and math.isfinite(seconds):
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for a concurrency slot, then for the rate window and any pause; hold the slot."""
        async with self._in_flight:
            await self._admit()
            yield

    async def _admit(self) -> None:
        """Record this request's start once the window and the pause allow it (callers queue)."""
        async with self._turn:
            while (wait := self._wait_seconds(self._clock())) > 0:
                await self._sleep(wait)
            self._starts.append(self._clock())

    def _wait_seconds(self, now: float) -> float:
        while self._starts and self._starts[0] + self.window_seconds <= now:
            self._starts.popleft()
        wait = self._paused_until - now
        if len(self._starts) >= self.limit:
            wait = max(wait, self._starts[0] + self.window_seconds - now)
        return wait
