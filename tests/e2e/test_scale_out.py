"""Two receiver processes (one with two workers) and two reconcilers on one PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import sqlalchemy as sa

from schemas.database import create_engine
from schemas.tables import DELIVERY, TASK, TRANSITION
from simulator import Faults, Lifecycle, SimConfig, create_app
from tests.e2e.test_reconcile import assert_forward_only
from tests.support.senders import WEBHOOK_SECRET, apidot_body
from tests.support.servers import free_port, receiver_process, serve
from tests.support.service import ADMIN_TOKEN, migrate
from tests.support.system import system_environment

TASKS_PER_PROVIDER = 60
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def environment(database_url: str, sim_url: str, public_url: str) -> dict[str, str]:
    return system_environment(
        database_url,
        sim_url,
        public_url=public_url,
        provider={"EXPECTED_SECONDS": "1", "RATE_LIMIT": "200", "CONCURRENCY": "16"},
        settings={"LOG_LEVEL": "warning", "LEASE_SECONDS": "5", "POLL_INTERVAL_SECONDS": "0.2"},
        base=os.environ,
    )


@asynccontextmanager
async def process(*args: str, env: dict[str, str]) -> AsyncIterator[None]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), timeout=30)


async def receiver_up(stack: AsyncExitStack, env: dict[str, str], port: int, workers: int) -> None:
    await stack.enter_async_context(receiver_process(env, port, workers))


async def test_two_receivers_and_two_reconcilers_keep_one_consistent_ledger(
    database_url: str,
) -> None:
    await migrate(database_url)
    ports = [free_port(), free_port()]
    config = SimConfig(
        seed=31,
        time_scale=0.05,
        api_key="sk-test",
        webhook_secret=WEBHOOK_SECRET,
        webhook_url=f"http://127.0.0.1:{ports[0]}/webhooks/openai",
        lifecycle=Lifecycle(min_duration_s=0.3, max_duration_s=1.5, progress_callbacks=True),
        faults=Faults(
            drop_rate=0.2, duplicate_rate=0.5, reorder_rate=0.2, poll_slow_rate=0.1, slow_poll_s=0.2
        ),
    )
    sim_app = create_app(config)
    async with AsyncExitStack() as stack:
        sim_url = await stack.enter_async_context(serve(sim_app))
        envs = [environment(database_url, sim_url, f"http://127.0.0.1:{p}") for p in ports]
        await receiver_up(stack, envs[0], ports[0], workers=2)
        await receiver_up(stack, envs[1], ports[1], workers=1)
        for env in envs:
            await stack.enter_async_context(process("-m", "reconciler", env=env))
        refs = await submit(ports, 3 * TASKS_PER_PROVIDER)
        tasks = await settle(database_url, len(refs))
        storm = await duplicate_storm(ports, [t for t in tasks if t["provider"] == "apidot"][:30])
        stats = sim_app.state.simulator.stats()
        truth = {t["task_id"]: t["normalized"] for t in sim_app.state.simulator.truth()}
    transitions, deliveries = await ledger(database_url)
    print(
        f"\nscale-out: {len(tasks)} tasks, {sum(map(len, transitions.values()))} transitions, "
        f"{deliveries} deliveries, duplicates sent {stats['callbacks']['duplicate_copies']}"
    )
    assert {t["provider_task_id"]: t["state"] for t in tasks} == truth
    assert all(t["version"] >= len(transitions[t["ref"]]) for t in tasks)
    assert_forward_only(transitions)
    assert max(stats["max_in_flight_per_task"].values()) == 1
    assert storm == [(1, 9)] * 30


async def duplicate_storm(
    ports: list[int], tasks: list[dict[str, object]]
) -> list[tuple[int, int]]:
    """The same callback ten times at once, half to each receiver: one row, nine duplicates."""
    async with httpx.AsyncClient(timeout=30) as http:

        async def storm(task: dict[str, object]) -> tuple[int, int]:
            shown = (
                await http.get(f"http://127.0.0.1:{ports[0]}/v1/tasks/{task['ref']}", headers=ADMIN)
            ).json()
            path = httpx.URL(shown["callback_url"]).path
            body = apidot_body(str(task["provider_task_id"]), "running", 1)
            answers = await asyncio.gather(
                *[
                    http.post(
                        f"http://127.0.0.1:{ports[i % 2]}{path}",
                        content=body,
                        headers={"content-type": "application/json"},
                    )
                    for i in range(10)
                ]
            )
            assert {a.status_code for a in answers} == {200}
            again = (
                await http.get(f"http://127.0.0.1:{ports[1]}/v1/tasks/{task['ref']}", headers=ADMIN)
            ).json()
            mine = [
                d
                for d in again["timeline"]["deliveries"]
                if d["state"] == "running" and d["duplicate_count"] == 9
            ]
            return len(mine), mine[0]["duplicate_count"] if mine else 0

        return list(await asyncio.gather(*[storm(t) for t in tasks]))


async def submit(ports: list[int], n: int) -> list[str]:
    providers = ["openai", "apidot", "evolink"]
    async with httpx.AsyncClient(timeout=30) as http:

        async def one(i: int) -> str:
            url = f"http://127.0.0.1:{ports[i % 2]}/v1/tasks"
            body = {
                "provider": providers[i % 3],
                "model": "sora-2",
                "submit": True,
                "request": {"prompt": "p", "duration": 4},
            }
            answer = await http.post(url, json=body, headers=ADMIN)
            assert answer.status_code == 202, answer.text
            return str(answer.json()["ref"])

        return list(await asyncio.gather(*[one(i) for i in range(n)]))


async def settle(database_url: str, n: int) -> list[dict[str, Any]]:
    engine = create_engine(database_url)
    try:
        async with asyncio.timeout(120):
            while True:
                async with engine.connect() as conn:
                    rows = [dict(r) for r in (await conn.execute(sa.select(TASK))).mappings()]
                if sum(1 for r in rows if r["next_poll_at"] is None) >= n:
                    return rows
                await asyncio.sleep(0.5)
    finally:
        await engine.dispose()


async def ledger(database_url: str) -> tuple[dict[str, list[dict[str, object]]], int]:
    engine = create_engine(database_url)
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(TRANSITION).order_by(TRANSITION.c.seq))).mappings()
        by_task: dict[str, list[dict[str, object]]] = {}
        for row in rows:
            by_task.setdefault(str(row["task_ref"]), []).append(dict(row))
        deliveries = int(await conn.scalar(sa.select(sa.func.count()).select_from(DELIVERY)) or 0)
    await engine.dispose()
    assert Counter(len(v) for v in by_task.values())
    return by_task, deliveries
