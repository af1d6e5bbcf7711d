"""Per-provider request limits: a sliding-window rate cap, a concurrency cap and 429 pauses,
and the deadline a caller waits for them by.

One `RateLimiter` per provider, shared by every caller in the process: `async with limiter.slot():`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

from schemas.settings import ProviderSettings

# Clock readings on both sides of a loopback or LAN hop can differ by this much.
WINDOW_MARGIN_SECONDS = 0.005

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
_T = TypeVar("_T")


class DeadlineReached(Exception):
    """A wait that would end past its caller's deadline, or that a stop ended; the request
    it was for was not sent. `ready_in_seconds`: how long from now until the limiter would
    start it (0 when only the deadline's passing is known)."""

    def __init__(self, ready_in_seconds: float) -> None:
        super().__init__(f"no request before the deadline (ready in {ready_in_seconds:.3f} s)")
        self.ready_in_seconds = ready_in_seconds


class Deadline:
    """How long a caller waits for the limiter, or before a retry: no wait that would end
    after `at` (a reading of `clock`) is begun, and `stop()` ends every wait under way.

    A reconciler pass gives one to all its requests, from the lease on its claims: a claim
    whose provider is paused, or too slow, past the lease is given back instead of held.
    Waits on requests in flight (for a concurrency slot, for a full window to clear) are
    bounded by their answers' timeout instead; after the deadline or its stop, they end
    without starting anything.
    """

    def __init__(self, at: float = math.inf, *, clock: Clock = time.monotonic) -> None:
        self.at = at
        self._clock = clock
        self._stopped = False
        self._waits: set[asyncio.Timeout] = set()

    def allows(self, seconds: float) -> bool:
        """Whether a wait of `seconds` from now would end by the deadline (never once stopped)."""
        if self._stopped:
            return False
        return self.at == math.inf or self._clock() + seconds <= self.at

    def check(self, seconds: float) -> None:
        """Raise `DeadlineReached` unless a wait of `seconds` from now is allowed."""
        if not self.allows(seconds):
            raise DeadlineReached(seconds)

    def stop(self) -> None:
        """End every wait under way (each raises `DeadlineReached`) and allow no new one."""
        if self._stopped:
            return
        self._stopped = True
        now = asyncio.get_running_loop().time()
        for wait in self._waits:
            wait.reschedule(now)

    async def wait(self, waiting: Awaitable[_T]) -> _T:
        """`await waiting`, unless `stop()` comes first: then `DeadlineReached`."""
        stopped = self._stopped
        timeout = asyncio.timeout(asyncio.get_running_loop().time() if stopped else None)
        try:
            async with timeout:
                if not stopped:
                    self._waits.add(timeout)
                try:
                    return await waiting
                finally:
                    self._waits.discard(timeout)
        except TimeoutError as exc:
            if timeout.expired():
                raise DeadlineReached(0.0) from exc
            raise


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

    def slot(self, deadline: Deadline | None = None) -> _Slot:
        """Wait for a concurrency slot, then for the rate window and any pause; hold the slot.
        With a `deadline`, raise `DeadlineReached` instead of waiting past it or its stop.
        (A small class rather than an async generator: it is entered on every request.)"""
        return _Slot(self, deadline or _UNBOUNDED)

    async def _enter(self, deadline: Deadline) -> None:
        await self._in_flight.acquire()
        try:
            await self._admit(deadline)
        except BaseException:
            self._in_flight.release()
            raise

    def _leave(self) -> None:
        self._flying -= 1
        self._ended.append(self._clock())
        self._answered.set()
        self._in_flight.release()

    async def _admit(self, deadline: Deadline) -> None:
        """Count this request in once the window and the pause allow it (callers queue),
        unless that is past the deadline or after its stop.

        Only the timed waits answer the stop at once: the others (for a concurrency slot,
        for an answer to leave a full window, for the turn) wait for requests in flight,
        which a stop lets finish anyway, or for a timed wait, which it ends."""
        async with self._turn:
            while (wait := self._wait_seconds(self._clock())) > 0:
                if math.isinf(wait):
                    # The window is full of requests still in flight: wait for an answer.
                    self._answered.clear()
                    await self._answered.wait()
                else:
                    deadline.check(wait)
                    await deadline.wait(self._sleep(wait))
            deadline.check(0.0)
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


# The deadline of a caller that gives none: never reached, and never stopped (it stays here).
_UNBOUNDED = Deadline()


class _Slot:
    """`RateLimiter.slot()`: one request's place, held while it is in flight."""

    __slots__ = ("_deadline", "_limiter")

    def __init__(self, limiter: RateLimiter, deadline: Deadline) -> None:
        self._limiter = limiter
        self._deadline = deadline

    async def __aenter__(self) -> None:
        await self._limiter._enter(self._deadline)

    async def __aexit__(self, *_: object) -> None:
        self._limiter._leave()
