"""Fixtures shared by the whole suite: databases on both backends, a migrated store."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.database import create_engine
from schemas.migrate import upgrade
from schemas.store import LedgerStore
from tests.support.databases import BACKENDS, temporary_database


class FakeClock:
    """A settable clock: tests move time instead of sleeping."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def unix(self) -> int:
        """Now in whole Unix seconds, as webhook timestamp headers carry it."""
        return int(self.now.timestamp())

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(autouse=True)
def _logging_as_found() -> Iterator[None]:
    """A test that configures logging, as a process does at start (`schemas.logs.configure`),
    leaves it as it found it: else a later test in the same worker logs at its level."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with temporary_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    await upgrade(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(engine: AsyncEngine, clock: FakeClock) -> AsyncIterator[LedgerStore]:
    store = LedgerStore(engine, clock)
    yield store
    await store.close()
