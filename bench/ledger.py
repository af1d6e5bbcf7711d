"""The benchmark's ledgers: throwaway databases, secrets, task registration and counts.

Small sets of tasks are registered through `POST /v1/tasks`; large ledgers are bulk-inserted
with the store's own `new_task_row` (plus one delivery and one transition per task, as a
ledger that has been in use would hold).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import sqlalchemy as sa

from schemas.database import create_engine
from schemas.migrate import upgrade
from schemas.states import Source, State
from schemas.store import NewTask, new_task_row
from schemas.tables import DELIVERY, TASK, TRANSITION
from schemas.tokens import CallbackTokens

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
INSERT_CHUNK = 5_000
REGISTER_CONCURRENCY = 16
REGISTER_ATTEMPTS = 10
GATEWAY = "apidot"
SIGNED = "openai"


@dataclass(frozen=True, slots=True)
class Secrets:
    """Fresh secrets for one benchmark run."""

    callback: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    admin: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    webhook: str = field(
        default_factory=lambda: "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    )

    def receiver_env(self, database_url: str) -> dict[str, str]:
        return {
            "TASKLEDGER_DATABASE_URL": database_url,
            "TASKLEDGER_CALLBACK_SECRETS": self.callback,
            "TASKLEDGER_ADMIN_TOKEN": self.admin,
            "TASKLEDGER_PROVIDERS": f"{GATEWAY},{SIGNED}",
            "TASKLEDGER_PROVIDER_OPENAI_WEBHOOK_SECRETS": self.webhook,
            "TASKLEDGER_SQLITE_SYNCHRONOUS": "FULL",
            "TASKLEDGER_LOG_JSON": "true",
        }

    def callback_path(self, ref: str, provider: str = GATEWAY) -> str:
        token = CallbackTokens([self.callback]).make(ref, provider)
        return f"/callbacks/{provider}/{token}"


@dataclass(frozen=True, slots=True)
class Target:
    """A registered task a callback can be sent for."""

    ref: str
    provider_task_id: str
    path: str


# -- databases ------------------------------------------------------------------


@contextmanager
def sqlite_url(directory: Path, name: str) -> Iterator[str]:
    yield f"sqlite+aiosqlite:///{directory / name}.db"


async def _admin(statement: str) -> None:
    admin = await asyncpg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres", timeout=5
    )
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


@contextmanager
def postgres_url(label: str) -> Iterator[str]:
    """A new PostgreSQL database for the block, dropped afterwards."""
    name = f"taskledger_bench_{label.lower()}_{secrets.token_hex(4)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def postgres_available() -> bool:
    async def ping() -> None:
        connection = await asyncpg.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres", timeout=3
        )
        await connection.close()

    try:
        asyncio.run(ping())
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    return True


def migrate(url: str) -> None:
    async def run() -> None:
        engine = create_engine(url)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())


def scalar(url: str, sql: str, **params: Any) -> int:
    """One integer from the database (a fresh connection: no cache, no pool kept)."""

    async def run() -> int:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                return int(await conn.scalar(sa.text(sql), params) or 0)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def count_deliveries(url: str) -> int:
    return scalar(url, "SELECT count(*) FROM delivery")


def count_like(url: str, table: str, column: str, pattern: str) -> int:
    """Rows of `table` whose `column` (text, or a body stored as bytes) matches `pattern`."""
    text = column
    if column == "body":
        postgres = url.startswith("postgresql")
        text = "convert_from(body, 'UTF8')" if postgres else "CAST(body AS TEXT)"
    return scalar(url, f"SELECT count(*) FROM {table} WHERE {text} LIKE :pattern", pattern=pattern)


# -- registration through the API ----------------------------------------------


def register(base_url: str, admin: str, provider: str, count: int, prefix: str) -> list[Target]:
    """Register `count` tasks with known provider task ids through `POST /v1/tasks`."""
    return asyncio.run(_register_all(base_url, admin, provider, count, prefix))


async def _register_all(
    base_url: str, admin: str, provider: str, count: int, prefix: str
) -> list[Target]:
    headers = {"authorization": f"Bearer {admin}"}
    ids = [f"{prefix}-{i:07d}-{secrets.token_hex(4)}" for i in range(count)]
    gate = asyncio.Semaphore(REGISTER_CONCURRENCY)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as http:

        async def one(task_id: str) -> Target:
            body = {"provider": provider, "owner": "bench", "model": "sora-2"}
            async with gate:
                response = await _post_retrying(http, {**body, "provider_task_id": task_id})
            task = response.json()
            path = httpx.URL(task["callback_url"]).path if task.get("callback_url") else ""
            return Target(task["ref"], task_id, path)

        return list(await asyncio.gather(*[one(task_id) for task_id in ids]))


async def _post_retrying(http: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    """`POST /v1/tasks`, honouring 503 + Retry-After a few times as a real client would."""
    for _ in range(REGISTER_ATTEMPTS):
        response = await http.post("/v1/tasks", json=body)
        if response.status_code != 503:
            break
        await asyncio.sleep(min(1.0, float(response.headers.get("retry-after", "1"))))
    response.raise_for_status()
    return response


# -- bulk growth ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Growth:
    """How to bulk-insert tasks: for whom, whether due now, with what history."""

    provider: str = GATEWAY
    due_now: bool = False
    history: bool = True
    provider_task_ids: Sequence[str] = ()


def grow(url: str, count: int, growth: Growth) -> None:
    """Insert `count` tasks in chunked transactions."""
    asyncio.run(_grow(url, count, growth))


async def _grow(url: str, count: int, growth: Growth) -> None:
    engine = create_engine(url)
    try:
        for start in range(0, count, INSERT_CHUNK):
            tasks = _task_rows(range(start, min(count, start + INSERT_CHUNK)), growth)
            async with engine.begin() as conn:
                await conn.execute(TASK.insert(), tasks)
                if growth.history:
                    await conn.execute(TRANSITION.insert(), [_transition(t) for t in tasks])
                    await conn.execute(DELIVERY.insert(), [_delivery(t) for t in tasks])
    finally:
        await engine.dispose()


def sample_targets(url: str, secrets: Secrets, count: int, provider: str = GATEWAY) -> list[Target]:
    """`count` tasks of `provider` picked at random across the whole ledger."""

    async def run() -> list[Target]:
        engine = create_engine(url)
        query = sa.text(
            "SELECT ref, provider_task_id FROM task WHERE provider = :provider "
            "ORDER BY random() LIMIT :count"
        )
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(query, {"provider": provider, "count": count})).all()
        finally:
            await engine.dispose()
        return [Target(ref, task_id, secrets.callback_path(ref, provider)) for ref, task_id in rows]

    return asyncio.run(run())


def _task_rows(indexes: range, growth: Growth) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    rows = []
    for i in indexes:
        task_id = (
            growth.provider_task_ids[i]
            if growth.provider_task_ids
            else f"task-unified-grown-{i:08d}-{secrets.token_hex(4)}"
        )
        new = NewTask(growth.provider, owner="bench", model="sora-2", provider_task_id=task_id)
        row = new_task_row(new, now)
        if growth.due_now:
            row["next_poll_at"] = now - timedelta(seconds=1)
        rows.append(row)
    return rows


def _transition(task: dict[str, Any]) -> dict[str, Any]:
    return {
        "task_ref": task["ref"],
        "from_state": None,
        "to_state": State.SUBMITTED.value,
        "source": Source.API.value,
        "source_id": None,
        "at": task["created_at"],
    }


def _delivery(task: dict[str, Any]) -> dict[str, Any]:
    body = (
        b'{"code":200,"data":{"task_id":"%s","status":"not_started","progress":0}}'
        % task["provider_task_id"].encode()
    )
    return {
        "provider": task["provider"],
        "delivery_key": hashlib.sha256(body).hexdigest(),
        "task_ref": task["ref"],
        "provider_task_id": task["provider_task_id"],
        "body": body,
        "headers": {"content-type": "application/json"},
        "auth": "token",
        "state": State.QUEUED.value,
        "outcome": "stale",
        "duplicate_count": 0,
        "received_at": task["created_at"],
        "last_seen_at": task["created_at"],
    }
