"""PostgreSQL stopped and restarted under load, the spool turned off: 503 while down, never
2xx unstored, self-healing. (With the spool, see test_spool_outage.py.) The server stopped is
the test's own, so the test runs alongside others."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from typing import Any

import httpx
import sqlalchemy as sa

from schemas.database import create_engine
from schemas.tables import DELIVERY
from simulator import Faults, Lifecycle, SimConfig
from tests.support.postgres import (  # fixtures: a PostgreSQL server of the test's own
    ThrowawayPostgres,
    own_database_url,  # noqa: F401
    own_postgres,  # noqa: F401
)
from tests.support.senders import apidot_body
from tests.support.system import System, running_system

JSON = {"content-type": "application/json"}
SPOOL_OFF = {"TASKLEDGER_SPOOL_ENABLED": "false"}


async def test_database_restart_under_load_answers_503_and_recovers(
    postgres: ThrowawayPostgres, database_url: str
) -> None:
    config = SimConfig(
        seed=41,
        time_scale=0.05,
        faults=Faults(drop_rate=1.0),
        lifecycle=Lifecycle(min_duration_s=0.5, max_duration_s=2.0),
    )
    async with running_system(database_url, config, environ=SPOOL_OFF) as system:
        refs = await system.submit("apidot", 30)
        gateway = [
            await system.service.register("apidot", provider_task_id=f"o-{i}") for i in range(120)
        ]
        codes: list[int] = []
        acked: set[str] = set()
        load = asyncio.create_task(send(system.service.http, gateway, codes, acked))
        await asyncio.sleep(1.0)
        await postgres.outage(3.0)
        await load
        submitted = await settled(system, set(refs))
        truth = await system.truth()
    stored = await stored_keys(database_url)
    seen = Counter(codes)
    print(
        f"\noutage: answers {dict(seen)}, acknowledged {len(acked)}, stored {len(acked & stored)}"
    )
    assert set(seen) <= {200, 503}
    assert seen[503] > 0
    assert len(acked) == len(gateway)
    assert acked <= stored
    assert all(t["state"] == truth[t["provider_task_id"]] for t in submitted)


async def send(
    http: httpx.AsyncClient, tasks: list[dict[str, object]], codes: list[int], acked: set[str]
) -> None:
    """Each task's callback, resent like a gateway would (1 s apart) until it is stored."""

    async def one(task: dict[str, object], i: int) -> None:
        body = apidot_body(f"o-{i}", "finished", 100)
        path = httpx.URL(str(task["callback_url"])).path
        await asyncio.sleep(i * 0.05)
        for _ in range(20):
            answer = await http.post(path, content=body, headers=JSON)
            codes.append(answer.status_code)
            if answer.status_code == 200:
                acked.add(hashlib.sha256(body).hexdigest())
                return
            await asyncio.sleep(1.0)

    await asyncio.gather(*[one(task, i) for i, task in enumerate(tasks)])


async def settled(system: System, refs: set[str]) -> list[dict[str, Any]]:
    """The submitted tasks once every one is final and confirmed (the reconciler recovered)."""
    async with asyncio.timeout(90):
        while True:
            tasks = [t for t in await system.tasks() if t["ref"] in refs]
            if all(t["next_poll_at"] is None for t in tasks):
                return tasks
            await asyncio.sleep(0.5)


async def stored_keys(database_url: str) -> set[str]:
    engine = create_engine(database_url)
    async with engine.connect() as conn:
        keys = set((await conn.execute(sa.select(DELIVERY.c.delivery_key))).scalars())
    await engine.dispose()
    return keys
