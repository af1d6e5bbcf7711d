"""Answers within a deadline counted from arrival, whatever waits ahead; readiness from reads.

Another connection holds SQLite's write lock: every callback and admin write is answered,
503 with `Retry-After`, within the answer deadline (set short here), never after a wait
for each batch queued ahead of it; `/readyz` answers from a read meanwhile. A database
that refuses writes (SQLite full, PostgreSQL read-only) makes `/readyz` say not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import orjson
import pytest
from sqlalchemy.engine import make_url

from receiver.app import ReceiverApp, create_app
from receiver.deadlines import AnswerDeadline
from schemas.database import sqlite_file
from schemas.settings import SpoolSettings
from schemas.store import LedgerStore
from tests.conftest import FakeClock
from tests.support.databases import PG_HOST, PG_PORT, PG_USER, temporary_database
from tests.support.senders import apidot_body
from tests.support.servers import free_port, serve
from tests.support.service import KEEPALIVE, Service, migrate, settings_for
from tests.support.waiting import until

DEADLINE = 1.5
# Scheduling and HTTP on a busy test machine; the bug this guards against took 5 s a batch.
MARGIN = 1.5
JSON = {"content-type": "application/json"}


@contextlib.asynccontextmanager
async def receiver(database_url: str) -> AsyncIterator[tuple[Service, ReceiverApp]]:
    """The receiver with a short answer deadline (and SQLite's usual 5 s busy timeout), and
    no spool: what is tested is the answer when the database cannot take a write."""
    await migrate(database_url)
    port = free_port()
    no_spool = SpoolSettings(enabled=False)
    settings = replace(
        settings_for(database_url, answer_deadline_seconds=DEADLINE, spool=no_spool),
        public_base_url=f"http://127.0.0.1:{port}",
    )
    app = create_app(settings, clock=FakeClock())
    async with (
        serve(AnswerDeadline(app, DEADLINE), port=port) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=30, limits=KEEPALIVE) as http,
    ):
        yield Service(base_url, http), app


@contextlib.contextmanager
def write_lock_held(database_url: str) -> Iterator[None]:
    """Another connection holds the SQLite file's write lock (reads still work)."""
    holder = sqlite3.connect(make_url(database_url).database or "", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@pytest.fixture
async def sqlite_url(tmp_path: Path) -> AsyncIterator[str]:
    async with temporary_database("sqlite", tmp_path) as url:
        yield url


async def timed(request: Any) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = await request
    return response, time.perf_counter() - started


async def callbacks(
    service: Service, tasks: list[dict[str, Any]], status: str, pad: int = 0
) -> list[tuple[httpx.Response, float]]:
    """Each task's callback at once: (answer, seconds it took)."""
    return await asyncio.gather(
        *[
            timed(
                service.http.post(
                    urlsplit(task["callback_url"]).path,
                    content=padded(apidot_body(task["provider_task_id"], status, 50), pad),
                    headers=JSON,
                )
            )
            for task in tasks
        ]
    )


def padded(body: bytes, pad: int) -> bytes:
    """The body with `pad` more bytes in a field the receiver keeps but does not read."""
    return orjson.dumps({**orjson.loads(body), "pad": "x" * pad}) if pad else body


def assert_turned_away_in_time(answers: list[tuple[httpx.Response, float]]) -> None:
    assert [r.status_code for r, _ in answers] == [503] * len(answers)
    assert all(int(r.headers["retry-after"]) > 0 for r, _ in answers)
    slowest = max(seconds for _, seconds in answers)
    assert slowest < DEADLINE + MARGIN, f"an answer took {slowest:.2f} s"


async def register_all(service: Service, count: int) -> list[dict[str, Any]]:
    return [await service.register("apidot", provider_task_id=f"t-{i}") for i in range(count)]


async def test_callbacks_behind_a_held_write_lock_get_503_within_the_deadline(
    sqlite_url: str,
) -> None:
    async with receiver(sqlite_url) as (service, _app):
        tasks = await register_all(service, 32)
        with write_lock_held(sqlite_url):
            first = await callbacks(service, tasks, "running")
            second = await callbacks(service, tasks, "running")  # while batches fail ahead
        after = await callbacks(service, tasks, "finished")
    assert_turned_away_in_time(first)
    assert_turned_away_in_time(second)
    assert [r.status_code for r, _ in after] == [200] * len(tasks)


async def test_callbacks_and_an_admin_write_queued_ahead_all_answer_within_the_deadline(
    sqlite_url: str,
) -> None:
    async with receiver(sqlite_url) as (service, app):
        tasks = await register_all(service, 32)
        gate = sqlite_file(app.state.store.engine)
        assert gate is not None
        with write_lock_held(sqlite_url):
            admin = asyncio.create_task(timed(register_request(service, "t-admin")))
            await until(lambda: gate.write_gate().locked())  # the admin write waits in BEGIN
            answers = await callbacks(service, tasks, "running")
            admin_answer = await admin
        assert_turned_away_in_time([*answers, admin_answer])
        after = await callbacks(service, tasks, "finished")
        assert (await register_request(service, "t-admin")).status_code == 201
    assert [r.status_code for r, _ in after] == [200] * len(tasks)


def register_request(service: Service, task_id: str) -> Any:
    return service.http.post(
        "/v1/tasks",
        json={"provider": "apidot", "provider_task_id": task_id},
        headers=service.admin,
    )


async def test_readiness_is_read_without_waiting_for_the_write_lock(sqlite_url: str) -> None:
    async with receiver(sqlite_url) as (service, _app):
        with write_lock_held(sqlite_url):
            response, seconds = await timed(service.http.get("/readyz"))
    assert response.status_code == 200
    assert seconds < DEADLINE / 2, f"/readyz took {seconds:.2f} s"


async def test_readiness_says_not_ready_while_the_database_refuses_writes(
    database_url: str,
) -> None:
    async with receiver(database_url) as (service, app):
        tasks = await register_all(service, 2)
        async with writes_refused(database_url, app.state.store):
            # Stored bodies this big need new pages (overflow pages, not a row's free space).
            refused = await callbacks(service, tasks[:1], "running", pad=64_000)
            while_refused = await service.http.get("/readyz")
        stored = await callbacks(service, tasks[1:], "running", pad=64_000)
        recovered = await service.http.get("/readyz")
    assert [r.status_code for r, _ in refused] == [503]
    assert while_refused.status_code == 503
    assert "refuses writes" in while_refused.json()["message"]
    assert [r.status_code for r, _ in stored] == [200]
    assert recovered.status_code == 200


@contextlib.asynccontextmanager
async def writes_refused(database_url: str, store: LedgerStore) -> AsyncIterator[None]:
    """SQLite: the writer's file may not grow (as on a full disk). PostgreSQL: the
    database is read-only for every new session, and the open ones are closed."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        await _cap_sqlite_pages(store, grow=False)
        try:
            yield
        finally:
            await _cap_sqlite_pages(store, grow=True)
        return
    name = url.database
    await _pg_admin(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on', name)
    try:
        yield
    finally:
        await _pg_admin(f'ALTER DATABASE "{name}" RESET default_transaction_read_only', name)


async def _cap_sqlite_pages(store: LedgerStore, *, grow: bool) -> None:
    """`max_page_count` on the store's own writer connection (a per-connection limit):
    at the file's current size, every write that needs a new page fails SQLITE_FULL."""

    def cap(conn: sqlite3.Connection) -> None:
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        conn.execute(f"PRAGMA max_page_count={pages * 100 if grow else pages}")

    writer = store._sqlite  # fault injection: the limit only holds on this connection
    assert writer is not None
    await writer.writer.run(cap)


async def _pg_admin(statement: str, database: str | None) -> None:
    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
    try:
        await conn.execute(statement)
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
    finally:
        await conn.close()
