"""Waiting for a condition in a test: poll it, fail after a bound, never sleep a fixed time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

POLL_SECONDS = 0.005


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Return once `condition()` holds; `TimeoutError` after `within` seconds."""
    for _ in range(int(within / POLL_SECONDS)):
        if condition():
            return
        await asyncio.sleep(POLL_SECONDS)
    raise TimeoutError(f"condition not met within {within:g} s")


async def eventually(
    condition: Callable[[], Awaitable[bool]], within: float = 5.0, every: float = 0.25
) -> None:
    """`until` for a condition that must be awaited (a database query, an HTTP call)."""
    deadline = asyncio.get_running_loop().time() + within
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"condition not met within {within:g} s")
        await asyncio.sleep(every)
