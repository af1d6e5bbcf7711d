"""Deadlines for reading a request body or awaiting its answer, at the cost of a dict entry
per request; and the write deadline of the admin routes (`AnswerDeadline`).

`asyncio.timeout` arms and cancels a timer for every use: about 4 µs on uvloop, paid by
every callback although nearly all bodies arrive in the first message. Here each event
loop keeps one table of reading tasks and their deadlines, and one timer, armed at the
earliest deadline; when it fires, every task past due is cancelled and the timer re-armed
for the next. A task that is cancelled that way turns its `CancelledError` into
`TimeoutError`, exactly where `asyncio.timeout` would, and a cancellation from anywhere
else still propagates.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import ASGIApp, Receive, Scope, Send

from schemas.write_deadline import write_deadline

T = TypeVar("T")


class Deadlines:
    """The reading tasks of one event loop, each with the loop time it must finish by."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # A reading task's deadline, or None once the sweep has cancelled it for being late.
        self._due: dict[asyncio.Task[object], float | None] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    def __len__(self) -> int:
        return len(self._due)

    async def within(self, seconds: float, awaitable: Awaitable[T]) -> T:
        """Await `awaitable` in the current task; `TimeoutError` once `seconds` have passed."""
        return await self.by(self._loop.time() + seconds, awaitable)

    async def by(self, deadline: float, awaitable: Awaitable[T]) -> T:
        """Await `awaitable` in the current task; `TimeoutError` at loop time `deadline`."""
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline needs a task to cancel")
        cancelling = task.cancelling()
        self._add(task, deadline)
        try:
            return await awaitable
        except asyncio.CancelledError:
            if self._due[task] is None and task.uncancel() <= cancelling:
                raise TimeoutError() from None
            raise
        finally:
            # Synchronous from here on: the sweep cannot cancel this task any more.
            del self._due[task]

    def _add(self, task: asyncio.Task[object], deadline: float) -> None:
        self._due[task] = deadline
        if deadline < self._timer_at:
            self._arm(deadline)

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(at, self._sweep)
        self._timer_at = at

    def _sweep(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        now = self._loop.time()
        earliest = float("inf")
        for task, deadline in self._due.items():
            if deadline is None:
                continue  # cancelled already, still unwinding
            if deadline <= now:
                self._due[task] = None  # a value, not a key: safe while iterating
                task.cancel()
            elif deadline < earliest:
                earliest = deadline
        if earliest != float("inf"):
            self._arm(earliest)


_BY_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Deadlines] = (
    weakref.WeakKeyDictionary()
)


def of_running_loop() -> Deadlines:
    """The deadline table of the running event loop."""
    loop = asyncio.get_running_loop()
    deadlines = _BY_LOOP.get(loop)
    if deadlines is None:
        deadlines = _BY_LOOP[loop] = Deadlines(loop)
    return deadlines


class AnswerDeadline:
    """ASGI middleware: the writes of a request give up waiting for the database
    `seconds` after it arrived (`schemas.write_deadline`), so that its answer, stored or
    503, comes in time whatever is queued ahead of it."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with write_deadline(asyncio.get_running_loop().time() + self.seconds):
            await self.app(scope, receive, send)


class Remembered:
    """A reason (a refusal, a failure) remembered for `seconds` of loop time, or until
    cleared: what `/readyz` reports of a writer or a spool that no later event corrected."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._noted: tuple[float, str] | None = None

    def note(self, reason: str) -> None:
        self._noted = (asyncio.get_running_loop().time(), reason)

    def clear(self) -> None:
        self._noted = None

    @property
    def reason(self) -> str | None:
        if self._noted is None:
            return None
        at, reason = self._noted
        if asyncio.get_running_loop().time() - at > self._seconds:
            return None
        return reason
