"""PostgreSQL stopped under load, with the spool: callbacks are kept locally and answered
202, none 503 while the spool has room; once PostgreSQL is back every acknowledged one is
in it exactly once; a kill -9 during the outage or during the drain loses none. The server
stopped is each test's own, so these run alongside others."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy as sa

from ops.procfile import web_command
from schemas.clock import utc_now
from schemas.database import create_engine
from schemas.settings import SpoolSettings
from schemas.tables import DELIVERY
from tests.support.postgres import (  # fixtures: a PostgreSQL server of the test's own
    ThrowawayPostgres,
    own_database_url,  # noqa: F401
    own_postgres,  # noqa: F401
)
from tests.support.senders import apidot_body
from tests.support.servers import free_port, receiver_process
from tests.support.service import (
    ADMIN_TOKEN,
    CALLBACK_SECRETS,
    Service,
    migrate,
    running_service,
    settings_for,
)
from tests.support.waiting import eventually, until

JSON = {"content-type": "application/json"}
OUTAGE_SECONDS = 30.0
SENDERS = 4
# Each sender waits this long between callbacks: about 100 a second in all.
PACE_SECONDS = 0.04
TASKS = 100


@dataclass
class Load:
    """Callbacks sent to a receiver, and what it answered: each is a distinct delivery (a
    task's progress, a step further each time), resent like a gateway does on 503."""

    http: httpx.AsyncClient
    paths: list[str]
    answers: Counter[int] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    acked: set[str] = field(default_factory=set)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def callbacks(self) -> Iterator[tuple[str, bytes]]:
        for progress in range(1, 100):
            for i, path in enumerate(self.paths):
                yield path, apidot_body(f"s-{i}", "running", progress)

    async def run(self) -> None:
        callbacks = self.callbacks()
        await asyncio.gather(*[self._sender(callbacks) for _ in range(SENDERS)])

    async def _sender(self, callbacks: Iterator[tuple[str, bytes]]) -> None:
        for path, body in callbacks:
            if self.stop.is_set():
                return
            await self.send(path, body)
            await asyncio.sleep(PACE_SECONDS)

    async def send(self, path: str, body: bytes) -> int:
        answer = await self.http.post(path, content=body, headers=JSON)
        self.answers[answer.status_code] += 1
        if answer.is_success:
            self.outcomes[answer.json()["outcome"]] += 1
            self.acked.add(_key(body))
        return answer.status_code


async def test_callbacks_through_a_30_s_outage_are_all_stored_once(
    postgres: ThrowawayPostgres, database_url: str, tmp_path: Path
) -> None:
    spool = SpoolSettings(dir=str(tmp_path / "spool"))
    async with running_service(settings_for(database_url, spool=spool), utc_now) as service:
        load = Load(service.http, await callback_paths(service, TASKS))
        running = asyncio.create_task(load.run())
        await until(lambda: len(load.acked) >= 50, within=10)
        down = asyncio.create_task(postgres.outage(OUTAGE_SECONDS))
        # While down, readiness keeps the receiver in rotation: its spool has room.
        await until(lambda: load.outcomes["spooled"] > 0, within=OUTAGE_SECONDS)
        readiness = await service.http.get("/readyz")
        await down
        # The load goes on until the drain has emptied the spool and the receiver stores
        # callbacks itself again.
        await eventually(lambda: spool_empty(service.http), within=30)
        applied = load.outcomes["applied"]
        await until(lambda: load.outcomes["applied"] >= applied + 20, within=10)
        load.stop.set()
        await running
        await eventually(lambda: all_stored(database_url, load.acked), within=30)
        counts = await stored_counts(database_url)
    print(
        f"\nspool outage: answers {dict(load.answers)}, outcomes {dict(load.outcomes)},"
        f" acknowledged {len(load.acked)}"
    )
    assert (readiness.status_code, readiness.json()["status"]) == (200, "spooling")
    assert load.answers[503] == 0
    assert set(load.answers) <= {200, 202}
    assert load.outcomes["spooled"] > OUTAGE_SECONDS * SENDERS  # kept all through the outage
    assert set(counts) == load.acked
    assert set(counts.values()) == {1}


async def test_kill_9_during_the_outage_and_during_the_drain_loses_nothing(
    postgres: ThrowawayPostgres, database_url: str, tmp_path: Path
) -> None:
    await migrate(database_url)
    env = receiver_environment(database_url, tmp_path / "spool")
    port = free_port()
    async with receiver_process(env, port) as process, _client(port) as http:
        load = Load(http, await callback_paths(Service(str(http.base_url), http), TASKS))
        await asyncio.to_thread(postgres.stop)
        try:
            for path, body in itertools.islice(load.callbacks(), 3 * TASKS):
                assert await load.send(path, body) == 202
        finally:
            process.send_signal(signal.SIGKILL)  # during the outage, with all of them spooled
            await asyncio.to_thread(postgres.start)
    assert load.outcomes == {"spooled": 3 * TASKS}
    draining = await start_receiver(env, port)
    try:  # killed again halfway through the drain
        await eventually(lambda: _stored_at_least(database_url, TASKS // 2), every=0.01)
    finally:
        draining.send_signal(signal.SIGKILL)
        await draining.wait()
    halfway = len(await stored_counts(database_url))
    print(f"\nspool kill -9: {len(load.acked)} spooled, {halfway} stored at the second kill")
    assert halfway < 3 * TASKS, "the drain ended before the kill"
    async with receiver_process(env, port):
        await eventually(lambda: all_stored(database_url, load.acked), within=30)
    counts = await stored_counts(database_url)
    assert set(counts) == load.acked
    assert set(counts.values()) == {1}


async def test_a_receiver_started_while_postgresql_is_down_spools_and_drains_once_back(
    postgres: ThrowawayPostgres, database_url: str, tmp_path: Path
) -> None:
    """A deploy or a restart during a failover: the receiver starts anyway (its spool has
    room), says `spooling`, keeps what comes, and replays it when PostgreSQL is back."""
    await migrate(database_url)
    env = receiver_environment(database_url, tmp_path / "spool")
    port = free_port()
    async with receiver_process(env, port), _client(port) as http:
        paths = await callback_paths(Service(str(http.base_url), http), TASKS)
    await asyncio.to_thread(postgres.stop)
    down = True
    try:
        async with receiver_process(env, port), _client(port) as http:
            readiness = await http.get("/readyz")
            load = Load(http, paths)
            for path, body in itertools.islice(load.callbacks(), 2 * TASKS):
                assert await load.send(path, body) == 202
            await asyncio.to_thread(postgres.start)
            down = False
            await eventually(lambda: all_stored(database_url, load.acked), within=30)
            await eventually(lambda: spool_empty(http), within=30)
    finally:
        if down:
            await asyncio.to_thread(postgres.start)
    assert (readiness.status_code, readiness.json()["status"]) == (200, "spooling")
    assert load.outcomes == {"spooled": 2 * TASKS}
    counts = await stored_counts(database_url)
    assert set(counts) == load.acked
    assert set(counts.values()) == {1}


def receiver_environment(database_url: str, spool_dir: Path) -> dict[str, str]:
    """The receiver's environment, its spool in `spool_dir`, draining a few at a time (so
    that a kill lands halfway)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TASKLEDGER_")}
    return base | {
        "TASKLEDGER_DATABASE_URL": database_url,
        "TASKLEDGER_ADMIN_TOKEN": ADMIN_TOKEN,
        "TASKLEDGER_CALLBACK_SECRETS": ",".join(CALLBACK_SECRETS),
        "TASKLEDGER_PROVIDERS": "apidot",
        "TASKLEDGER_LOG_LEVEL": "warning",
        "TASKLEDGER_SPOOL_DIR": str(spool_dir),
        "TASKLEDGER_SPOOL_DRAIN_BATCH_SIZE": "4",
    }


async def start_receiver(env: dict[str, str], port: int) -> asyncio.subprocess.Process:
    """The receiver process, not waited for: it drains its spool as it starts."""
    return await asyncio.create_subprocess_exec(
        *web_command("127.0.0.1", port, "--log-level", "warning"),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


@asynccontextmanager
async def _client(port: int) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        yield http


async def callback_paths(service: Service, n: int) -> list[str]:
    """The callback paths of `n` new apidot tasks (`s-0`, `s-1`, ...)."""
    tasks = [await service.register("apidot", provider_task_id=f"s-{i}") for i in range(n)]
    return [httpx.URL(str(task["callback_url"])).path for task in tasks]


async def spool_empty(http: httpx.AsyncClient) -> bool:
    metrics = (await http.get("/metrics")).text
    depth = next(line for line in metrics.splitlines() if line.startswith("taskledger_spool_depth"))
    return float(depth.split()[-1]) == 0


async def stored_counts(database_url: str) -> dict[str, int]:
    """How many delivery rows each key has."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            key = DELIVERY.c.delivery_key
            rows = await conn.execute(sa.select(key, sa.func.count()).group_by(key))
            return {k: int(n) for k, n in rows}
    finally:
        await engine.dispose()


async def all_stored(database_url: str, keys: set[str]) -> bool:
    return keys <= set(await stored_counts(database_url))


async def _stored_at_least(database_url: str, n: int) -> bool:
    return len(await stored_counts(database_url)) >= n


def _key(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()
