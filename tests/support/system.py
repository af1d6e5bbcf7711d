"""The whole system on loopback: simulator, receiver and reconciler(s) on one database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import sqlalchemy as sa

from reconciler.clients import ProviderClients
from reconciler.process import Reconciler
from reconciler.retry import RetryPolicy
from schemas.clock import utc_now
from schemas.database import create_engine
from schemas.settings import ProviderSettings, Settings
from schemas.store import LedgerStore
from schemas.tables import OBSERVATION, TASK, TRANSITION
from schemas.wire import WireFormat
from simulator import SimConfig, Simulator, create_app
from tests.support.senders import WEBHOOK_SECRET
from tests.support.servers import free_port, serve
from tests.support.service import Service, running_service, settings_for

FORMATS = {"openai": WireFormat.OPENAI, "apidot": WireFormat.APIDOT, "evolink": WireFormat.EVOLINK}
FAST_POLICY = RetryPolicy(
    attempts=2, base_delay_seconds=0.05, max_delay_seconds=0.5, min_poll_delay_seconds=0.3
)


def system_settings(database_url: str, sim_url: str, **provider: Any) -> Settings:
    values = {
        "expected_seconds": 1.0,
        "max_age_seconds": 120.0,
        "rate_limit_per_second": 500.0,
        "concurrency": 32,
        **provider,
    }
    providers = {
        name: ProviderSettings(
            name,
            kind,
            base_url=f"{sim_url}/{name}",
            api_key="sk-test",
            webhook_secrets=(WEBHOOK_SECRET,) if kind is WireFormat.OPENAI else (),
            **values,
        )
        for name, kind in FORMATS.items()
    }
    return replace(
        settings_for(database_url),
        providers=providers,
        lease_seconds=5.0,
        poll_interval_seconds=0.1,
    )


@dataclass
class System:
    service: Service
    simulator: Simulator
    sim_url: str
    settings: Settings
    engine: Any
    reconcilers: list[tuple[Reconciler, asyncio.Task[None]]] = field(default_factory=list)
    unavailable: int = 0

    async def submit(self, provider: str, n: int) -> list[str]:
        async def one(_: int) -> str:
            body = {
                "provider": provider,
                "owner": "e2e",
                "model": "sora-2",
                "submit": True,
                "request": {"prompt": "a lighthouse at dusk", "duration": 4},
            }
            for _attempt in range(10):  # a client honours 503 + Retry-After, as senders do
                response = await self.service.http.post(
                    "/v1/tasks", headers=self.service.admin, json=body
                )
                if response.status_code != 503:
                    break
                self.unavailable += 1
                await asyncio.sleep(min(1.0, float(response.headers["retry-after"])))
            assert response.status_code == 202, response.text
            return str(response.json()["ref"])

        refs: list[str] = []
        for start in range(0, n, 50):
            refs += await asyncio.gather(*[one(i) for i in range(start, min(n, start + 50))])
        return refs

    async def tasks(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(sa.select(TASK))).mappings()]

    async def transitions(self) -> dict[str, list[dict[str, Any]]]:
        by_task: dict[str, list[dict[str, Any]]] = {}
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(TRANSITION).order_by(TRANSITION.c.seq))
            for row in rows.mappings():
                by_task.setdefault(row["task_ref"], []).append(dict(row))
        return by_task

    async def settle(self, count: int, within_seconds: float) -> list[dict[str, Any]]:
        """Wait until `count` tasks are final and confirmed (or lost); return every task.

        Past `within_seconds` it fails naming the tasks still open and their latest polls,
        so a straggler can be told apart from a slow run."""
        deadline = asyncio.get_running_loop().time() + within_seconds
        while True:
            tasks = await self.tasks()
            open_tasks = [t for t in tasks if t["next_poll_at"] is not None]
            if len(tasks) - len(open_tasks) >= count:
                return tasks
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(await self._describe(open_tasks, count, within_seconds))
            await asyncio.sleep(0.25)

    async def _describe(self, open_tasks: list[dict[str, Any]], count: int, within: float) -> str:
        lines = [f"{len(open_tasks)} of {count} tasks still open after {within} s:"]
        async with self.engine.connect() as conn:
            for task in open_tasks[:5]:
                fields = ("ref", "provider", "provider_task_id", "state", "submission")
                lines.append("  " + ", ".join(f"{name}={task[name]!r}" for name in fields))
                polls = await conn.execute(
                    sa.select(OBSERVATION.c.outcome, OBSERVATION.c.http_status, OBSERVATION.c.error)
                    .where(OBSERVATION.c.task_ref == task["ref"])
                    .order_by(OBSERVATION.c.id.desc())
                    .limit(3)
                )
                lines += [f"    latest poll: {dict(row)}" for row in polls.mappings()]
        return "\n".join(lines)

    async def truth(self) -> dict[str, str]:
        async with httpx.AsyncClient(base_url=self.sim_url) as http:
            body = (await http.get("/_sim/truth")).json()
        return {t["task_id"]: t["normalized"] for t in body["tasks"]}

    async def stats(self) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.sim_url) as http:
            return dict((await http.get("/_sim/stats")).json())

    async def start_reconciler(
        self, stack: AsyncExitStack, settings: Settings | None = None
    ) -> Reconciler:
        settings = settings or self.settings
        clients = await stack.enter_async_context(ProviderClients.open(settings.providers.values()))
        store = LedgerStore(self.engine, utc_now)
        reconciler = Reconciler(settings, store, clients, clock=utc_now, policy=FAST_POLICY)
        task = asyncio.create_task(reconciler.run())
        self.reconcilers.append((reconciler, task))
        return reconciler

    async def stop_reconcilers(self) -> None:
        for reconciler, task in self.reconcilers:
            reconciler.stopping.set()
            if not task.done():
                await asyncio.wait_for(task, timeout=30)
        self.reconcilers.clear()


@asynccontextmanager
async def running_system(
    database_url: str, sim: SimConfig, reconcilers: int = 1, **provider: Any
) -> AsyncIterator[System]:
    receiver_port, sim_port = free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    sim = replace(
        sim,
        webhook_url=f"http://127.0.0.1:{receiver_port}/webhooks/openai",
        webhook_secret=WEBHOOK_SECRET,
        api_key="sk-test",
    )
    settings = system_settings(database_url, sim_url, **provider)
    sim_app = create_app(sim)
    engine = create_engine(database_url)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(serve(sim_app, port=sim_port))
        service = await stack.enter_async_context(
            running_service(settings, utc_now, port=receiver_port)
        )
        settings = replace(settings, public_base_url=service.base_url)
        system = System(service, sim_app.state.simulator, sim_url, settings, engine)
        for _ in range(reconcilers):
            await system.start_reconciler(stack)
        try:
            yield system
        finally:
            await system.stop_reconcilers()
            await engine.dispose()
