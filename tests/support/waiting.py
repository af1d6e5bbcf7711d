"""Waiting for a condition in a test: poll it, fail after a bound, never sleep a fixed time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

POLL_SECONDS = 0.005


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Return once `condition()` holds; `TimeoutError` after `within` seconds."""
    for _ in range(int(within / POLL_SECONDS)):
        if condition():
            return
        await asyncio.sleep(POLL_SECONDS)
    raise TimeoutError(f"condition not met within {within:g} s")
