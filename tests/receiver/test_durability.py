"""Acknowledged means stored: across restarts, and 503 (never 2xx or 500) while storage is gone."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import asyncpg
from sqlalchemy.engine import make_url

from schemas.settings import SpoolSettings
from tests.conftest import FakeClock
from tests.support.databases import PG_HOST, PG_PORT, PG_USER
from tests.support.senders import apidot_body
from tests.support.service import running_service, settings_for

JSON = {"content-type": "application/json"}


async def test_restart_loses_nothing_that_was_acknowledged(
    database_url: str, clock: FakeClock
) -> None:
    settings = settings_for(database_url)
    async with running_service(settings, clock) as service:
        tasks = [await service.register("apidot", provider_task_id=f"t-{i}") for i in range(40)]
        answers = await asyncio.gather(
            *[
                service.http.post(
                    urlsplit(t["callback_url"]).path,
                    headers=JSON,
                    content=apidot_body(f"t-{i}", "finished", 100),
                )
                for i, t in enumerate(tasks)
            ]
        )
    acknowledged = [t["ref"] for t, a in zip(tasks, answers, strict=True) if a.status_code == 200]
    assert len(acknowledged) == 40
    async with running_service(settings, clock) as service:
        states = [(await service.task(ref))["state"] for ref in acknowledged]
    assert states == ["succeeded"] * 40


async def test_storage_outage_answers_503_then_recovers_without_restart(
    database_url: str, clock: FakeClock
) -> None:
    no_spool = SpoolSettings(enabled=False)  # on PostgreSQL, see tests/e2e/test_spool_outage.py
    settings = settings_for(database_url, sqlite_busy_timeout_ms=200, spool=no_spool)
    async with running_service(settings, clock) as service:
        task = await service.register("apidot", provider_task_id="t-out")
        path = urlsplit(task["callback_url"]).path
        async with storage_outage(database_url):
            during = await service.http.post(
                path, content=apidot_body("t-out", "running", 5), headers=JSON
            )
        assert during.status_code == 503
        assert int(during.headers["retry-after"]) > 0
        after = await _post_until_stored(
            lambda: service.http.post(
                path, content=apidot_body("t-out", "running", 6), headers=JSON
            )
        )
        assert after == 200
        assert (await service.task(task["ref"]))["progress"] == 6


async def _post_until_stored(post: Callable[[], object]) -> int:
    """The first answer may still meet a connection that died in the outage; retry like a sender."""
    status = 0
    for _ in range(5):
        response = await post()  # type: ignore[misc]
        status = response.status_code
        if status != 503:
            return status
        await asyncio.sleep(0.2)
    return status


@asynccontextmanager
async def storage_outage(database_url: str) -> AsyncIterator[None]:
    """SQLite: another connection holds the write lock. PostgreSQL: connections are refused."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        holder = sqlite3.connect(url.database or "", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
    name = url.database
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
