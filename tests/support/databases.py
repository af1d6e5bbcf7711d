"""Throwaway databases for tests: a SQLite file, or a PostgreSQL database made and dropped."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import NoReturn

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.database import create_engine
from schemas.migrate import upgrade

PG_HOST = os.environ.get("TASKLEDGER_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TASKLEDGER_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("TASKLEDGER_TEST_PG_USER", "postgres")
BACKENDS = ("sqlite", "postgresql")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(reason: str, in_ci_message: str) -> NoReturn:
    """Something a test needs that this machine lacks: a skip on a laptop, a failure in CI
    (CI has everything the suite needs)."""
    if in_ci():
        pytest.fail(in_ci_message)
    pytest.skip(reason)


@asynccontextmanager
async def temporary_database(
    backend: str, directory: Path, *, host: str = PG_HOST, port: int = PG_PORT
) -> AsyncIterator[str]:
    """Yield the URL of a new, empty database that is removed afterwards (PostgreSQL's on
    the server at `host`:`port`, the local one unless told)."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{directory / 'ledger.db'}"
        return
    name = f"taskledger_test_{secrets.token_hex(6)}"
    await _admin(f'CREATE DATABASE "{name}"', host, port)
    try:
        yield f"postgresql+asyncpg://{PG_USER}@{host}:{port}/{name}"
    finally:
        # A fresh connection: the test may have restarted the server meanwhile.
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', host, port)


@asynccontextmanager
async def migrated_engine(backend: str, directory: Path) -> AsyncIterator[AsyncEngine]:
    """An engine on a new database at the latest migration, disposed of and removed after."""
    async with temporary_database(backend, directory) as url:
        engine = create_engine(url)
        await upgrade(engine)
        try:
            yield engine
        finally:
            await engine.dispose()


async def _admin(statement: str, host: str = PG_HOST, port: int = PG_PORT) -> None:
    admin = await _admin_connection(host, port)
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


async def _admin_connection(host: str = PG_HOST, port: int = PG_PORT) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(
            host=host, port=port, user=PG_USER, database="postgres", timeout=5
        )
    except (OSError, asyncpg.PostgresError) as exc:
        where = f"PostgreSQL at {host}:{port}"
        unavailable(f"{where} is not reachable: {exc}", f"{where} is required in CI: {exc}")
