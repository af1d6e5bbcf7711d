"""Fixtures for simulator tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.simulator.support import FakeClock, Receiver, receiving


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as capture:
        yield capture


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
