"""kill -9 the receiver under load, repeatedly: every acknowledged delivery survives."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.clock import utc_now
from schemas.database import create_engine
from schemas.states import Source, State
from schemas.store import NewTask, new_task_row
from schemas.tables import DELIVERY, TASK, TRANSITION
from schemas.tokens import CallbackTokens
from tests.support.senders import apidot_body
from tests.support.servers import free_port, receiver_process
from tests.support.service import ADMIN_TOKEN, CALLBACK_SECRETS, migrate

TASKS = 600
KILLS = 3


async def test_acknowledged_deliveries_survive_repeated_kill_9(database_url: str) -> None:
    await migrate(database_url)
    engine = create_engine(database_url)
    requests = await register(engine, TASKS)
    port = free_port()
    acknowledged: set[str] = set()
    pending = list(requests)
    for round_ in range(KILLS + 1):
        async with receiver(database_url, port) as process:
            sent = asyncio.create_task(send_all(port, pending, acknowledged))
            if round_ < KILLS:
                await asyncio.sleep(0.6)
                process.send_signal(signal.SIGKILL)
            await sent
        pending = [r for r in pending if r[2] not in acknowledged]
    stored = await stored_keys(engine)
    await engine.dispose()
    print(
        f"\ncrash: {len(acknowledged)} acknowledged, {len(acknowledged & stored)} stored, "
        f"{KILLS} kill -9"
    )
    assert len(acknowledged) == TASKS
    assert acknowledged <= stored
    assert integrity(database_url) == "ok"


async def register(engine: AsyncEngine, n: int) -> list[tuple[str, bytes, str]]:
    """`n` registered tasks, written in one transaction (each as a registration writes it:
    its row and its first transition); the callback each will be sent."""
    tokens = CallbackTokens(CALLBACK_SECRETS)
    now = utc_now()
    rows = [
        new_task_row(NewTask(provider="apidot", provider_task_id=f"c-{i}"), now) for i in range(n)
    ]
    first = {"from_state": None, "to_state": State.SUBMITTED.value, "source": Source.API.value}
    async with engine.begin() as conn:
        await conn.execute(TASK.insert(), rows)
        await conn.execute(
            TRANSITION.insert(), [{"task_ref": row["ref"], "at": now, **first} for row in rows]
        )
    requests = []
    for row in rows:
        body = apidot_body(row["provider_task_id"], "finished", 100)
        path = f"/callbacks/apidot/{tokens.make(row['ref'], 'apidot')}"
        requests.append((path, body, hashlib.sha256(body).hexdigest()))
    return requests


async def send_all(port: int, requests: list[tuple[str, bytes, str]], acked: set[str]) -> None:
    limits = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:

        async def one(path: str, body: bytes, key: str) -> None:
            async with limits:
                try:
                    answer = await http.post(
                        path, content=body, headers={"content-type": "application/json"}
                    )
                except httpx.TransportError:
                    return
                if answer.status_code == 200:
                    acked.add(key)

        await asyncio.gather(*[one(*request) for request in requests])


@asynccontextmanager
async def receiver(database_url: str, port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    env = {
        **os.environ,
        "TASKLEDGER_DATABASE_URL": database_url,
        "TASKLEDGER_ADMIN_TOKEN": ADMIN_TOKEN,
        "TASKLEDGER_CALLBACK_SECRETS": ",".join(CALLBACK_SECRETS),
        "TASKLEDGER_PROVIDERS": "apidot",
        "TASKLEDGER_LOG_LEVEL": "warning",
    }
    async with receiver_process(env, port) as process:
        yield process


async def stored_keys(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set((await conn.execute(sa.select(DELIVERY.c.delivery_key))).scalars())


def integrity(database_url: str) -> str:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return "ok"
    with sqlite3.connect(url.database or "") as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
