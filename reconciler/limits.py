"""Per-provider request limits: a sliding-window rate cap, a concurrency cap and 429 pauses.

One `RateLimiter` per provider, shared by every caller in the process: `async with limiter.slot():`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

from schemas.settings import ProviderSettings

# Clock readings on both sides of a loopback or LAN hop can differ by this much.
WINDOW_MARGIN_SECONDS = 0.005

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class RateLimiter:
    """At most `rate_per_second` requests in any sliding 1-second window *as the provider
    counts them*, at most `concurrency` requests in flight, and none at all while paused.

    The provider counts a request when it handles it, which is some time between our start
    and the answer's arrival: a loaded event loop can hold a started request for tens of
    milliseconds. So a request takes its place in the window when it starts and keeps it
    until one window after its answer came back. Any window the provider sees then holds
    at most the limit, whatever the delay on the way; it costs only the request's latency.

    A whole rate R allows R requests per window of 1 s; a fractional rate allows
    max(1, floor(R)) per window of max(1, floor(R) / R) seconds (0.5 => one per 2 s).
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
        self._ended: deque[float] = deque()  # answers' arrival times, oldest first
        self._flying = 0  # started, no answer yet
        self._answered = asyncio.Event()
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

    def slot(self) -> _Slot:
        """Wait for a concurrency slot, then for the rate window and any pause; hold the slot.
        (A small class rather than an async generator: it is entered on every request.)"""
        return _Slot(self)

    async def _enter(self) -> None:
        await self._in_flight.acquire()
        try:
            await self._admit()
        except BaseException:
            self._in_flight.release()
            raise

    def _leave(self) -> None:
        self._flying -= 1
        self._ended.append(self._clock())
        self._answered.set()
        self._in_flight.release()

    async def _admit(self) -> None:
        """Count this request in once the window and the pause allow it (callers queue)."""
        async with self._turn:
            while (wait := self._wait_seconds(self._clock())) > 0:
                if math.isinf(wait):
                    # The window is full of requests still in flight: wait for an answer.
                    self._answered.clear()
                    await self._answered.wait()
                else:
                    await self._sleep(wait)
            self._flying += 1

    def _wait_seconds(self, now: float) -> float:
        ended = self._ended
        while ended and ended[0] + self.window_seconds <= now:
            ended.popleft()
        wait = self._paused_until - now
        excess = self._flying + len(ended) - self.limit
        if excess >= 0:
            # Enough answers must leave the window; with too many in flight, none suffices.
            leaves = ended[excess] + self.window_seconds - now if excess < len(ended) else math.inf
            wait = max(wait, leaves)
        return wait


class _Slot:
    """`RateLimiter.slot()`: one request's place, held while it is in flight."""

    __slots__ = ("_limiter",)

    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter

    async def __aenter__(self) -> None:
        await self._limiter._enter()

    async def __aexit__(self, *_: object) -> None:
        self._limiter._leave()
