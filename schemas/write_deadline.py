"""How long a write may wait for its turn: a deadline, in event loop time, for the current task.

A request's answer is due a few seconds after it arrived, whatever is queued ahead of it.
The code that knows the deadline sets it here (the group-commit writer: the earliest of its
batch's; an admin route: its request's), and the store's write paths read it: waiting for
this process's write gate, for a connection and for SQLite's write lock all end when it
passes, with `WriteBusy`. With or without one, SQLite's write lock is waited for at most
the file's busy timeout once a write's turn in this process has come.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from schemas.errors import StorageUnavailable

_DEADLINE: ContextVar[float | None] = ContextVar("taskledger_write_deadline", default=None)


class WriteBusy(StorageUnavailable):
    """The write lock or a connection was not free before the deadline: the database is
    busy, not refusing writes (a full disk or a read-only database is not this)."""


@contextlib.contextmanager
def write_deadline(at: float | None) -> Iterator[None]:
    """Writes begun in this block give up waiting at loop time `at` (None: no deadline)."""
    token = _DEADLINE.set(at)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def current() -> float | None:
    """The loop time the current task's writes must have begun by, if any."""
    return _DEADLINE.get()


def wait_until(loop: asyncio.AbstractEventLoop, longest: float) -> float:
    """The loop time a wait that starts now must end by: the current deadline, and at
    most `longest` seconds from now."""
    deadline = _DEADLINE.get()
    capped = loop.time() + longest
    return capped if deadline is None else min(deadline, capped)


async def take_turn(gate: asyncio.Lock, until: float | None) -> None:
    """Acquire `gate`, or raise `WriteBusy` once loop time `until` has passed."""
    if until is None:
        await gate.acquire()
        return
    try:
        async with asyncio.timeout_at(until):
            await gate.acquire()
    except TimeoutError:
        raise WriteBusy(
            "database unavailable: earlier writes of this process held the write lock"
        ) from None
