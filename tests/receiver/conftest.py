"""Fixtures the receiver's tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import FakeClock
from tests.support.service import Service, running_service, settings_for


@pytest.fixture
async def strict(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    """A service with the default address policy: HTTPS to public addresses only."""
    async with running_service(settings_for(database_url), clock) as service:
        yield service
