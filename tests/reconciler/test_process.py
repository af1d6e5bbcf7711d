"""`python -m reconciler` as a process: SIGTERM finishes in-flight polls and gives leases back."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import httpx
import orjson
import pytest
import sqlalchemy as sa
import structlog.testing
from prometheus_client import generate_latest

from ops.envfile import webhook_secret
from reconciler.clients import ProviderClients
from reconciler.metrics import ReconcilerMetrics
from reconciler.process import Reconciler
from reconciler.retry import RetryPolicy
from schemas.clock import utc_now
from schemas.database import create_engine
from schemas.fold import SUBMIT_UNKNOWN
from schemas.migrate import upgrade
from schemas.settings import ProviderSettings, Settings, builtin_definitions
from schemas.store import LedgerStore, NewTask
from schemas.tables import TASK
from schemas.wire import WireFormat
from simulator import Faults, Lifecycle, SimConfig, create_app
from tests.conftest import FakeClock
from tests.support.servers import serve
from tests.support.service import ADMIN_TOKEN, CALLBACK_SECRETS

SLOW = SimConfig(
    api_key="sk-test",
    lifecycle=Lifecycle(min_duration_s=60, max_duration_s=90),
    faults=Faults(poll_slow_rate=1.0, slow_poll_s=1.0),
)


async def test_sigterm_finishes_in_flight_polls_releases_leases_and_exits_zero(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    engine = create_engine(url)
    await upgrade(engine)
    async with serve(create_app(SLOW)) as sim_url, httpx.AsyncClient(base_url=sim_url) as http:
        await _register_running_tasks(LedgerStore(engine, utc_now), http, 12)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "reconciler",
            env=_environ(url, sim_url),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        await _wait_for_polls_in_flight(http)
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), timeout=20)
    async with engine.connect() as conn:
        leased = await conn.scalar(sa.select(sa.func.count()).where(TASK.c.lease_owner.isnot(None)))
        polled = await conn.scalar(sa.select(sa.func.count()).where(TASK.c.poll_attempts > 0))
    await engine.dispose()
    assert process.returncode == 0, output.decode()
    assert b"reconciler_stopped" in output
    assert leased == 0
    assert polled is not None
    assert polled >= 1


async def _register_running_tasks(store: LedgerStore, http: httpx.AsyncClient, n: int) -> None:
    for _ in range(n):
        answer = await http.post(
            "/apidot/api/generate/submit",
            headers={"authorization": "Bearer sk-test"},
            json={"model": "sora-2-official", "input": {"prompt": "x", "duration": 4}},
        )
        task_id = answer.json()["data"]["task_id"]
        await store.register(
            NewTask(provider="apidot", provider_task_id=task_id, expected_seconds=0.001)
        )


async def _wait_for_polls_in_flight(http: httpx.AsyncClient) -> None:
    async with asyncio.timeout(20):
        while (await http.get("/_sim/stats")).json()["in_flight"] == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def _environ(url: str, sim_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "TASKLEDGER_DATABASE_URL": url,
        "TASKLEDGER_ADMIN_TOKEN": ADMIN_TOKEN,
        "TASKLEDGER_CALLBACK_SECRETS": ",".join(CALLBACK_SECRETS),
        "TASKLEDGER_PROVIDERS": "apidot",
        "TASKLEDGER_PROVIDER_APIDOT_BASE_URL": f"{sim_url}/apidot",
        "TASKLEDGER_PROVIDER_APIDOT_API_KEY": "sk-test",
        "TASKLEDGER_PROVIDER_APIDOT_RATE_LIMIT": "100",
        "TASKLEDGER_PROVIDER_APIDOT_CONCURRENCY": "4",
        "TASKLEDGER_LOG_JSON": "true",
    }


async def test_task_of_a_provider_without_base_url_still_expires_to_lost(
    store: LedgerStore, clock: FakeClock
) -> None:
    provider = ProviderSettings("apidot", WireFormat.APIDOT, expected_seconds=1, max_age_seconds=60)
    settings = Settings(callback_secrets=("s",), admin_token="t", providers={"apidot": provider})
    row = await store.register(
        NewTask(provider="apidot", provider_task_id="t-1", expected_seconds=1)
    )
    async with ProviderClients.open(settings.providers.values()) as clients:
        reconciler = Reconciler(settings, store, clients, clock=clock)
        clock.advance(2)
        first = await reconciler.run_pass()
        clock.advance(60)
        second = await reconciler.run_pass()
    task = await store.get(row.ref)
    assert task is not None
    assert (first.lost, second.lost, task.state) == (0, 1, "lost")


async def test_leases_of_a_reconciler_killed_mid_pass_expire_and_another_finishes(
    database_url: str,
) -> None:
    url = database_url
    engine = create_engine(url)
    await upgrade(engine)
    quick = SimConfig(
        api_key="sk-test",
        lifecycle=Lifecycle(min_duration_s=0.2, max_duration_s=0.5),
        faults=Faults(poll_slow_rate=1.0, slow_poll_s=0.5),
    )
    env_extra = {"TASKLEDGER_LEASE_SECONDS": "2", "TASKLEDGER_POLL_INTERVAL_SECONDS": "0.2"}
    async with serve(create_app(quick)) as sim_url, httpx.AsyncClient(base_url=sim_url) as http:
        await _register_running_tasks(LedgerStore(engine, utc_now), http, 12)
        env = {**_environ(url, sim_url), **env_extra}
        doomed = await _reconciler(env)
        await _wait_for_polls_in_flight(http)
        doomed.kill()  # SIGKILL: no chance to give the leases back
        await doomed.wait()
        held = await _count(engine, TASK.c.lease_owner.isnot(None))
        survivor = await _reconciler(env)
        try:
            async with asyncio.timeout(30):
                while await _count(engine, TASK.c.next_poll_at.isnot(None)):  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
        finally:
            survivor.send_signal(signal.SIGTERM)
            await asyncio.wait_for(survivor.wait(), timeout=20)
        truth = {
            t["task_id"]: t["normalized"] for t in (await http.get("/_sim/truth")).json()["tasks"]
        }
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(TASK.c.provider_task_id, TASK.c.state))).all()
    await engine.dispose()
    assert held > 0
    assert {task_id: state for task_id, state in rows} == truth


async def _reconciler(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "reconciler",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def _count(engine: sa.ext.asyncio.AsyncEngine, condition: sa.ColumnElement[bool]) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).where(condition)) or 0)


async def test_a_submit_that_may_have_reached_the_provider_is_never_sent_again(
    store: LedgerStore, clock: FakeClock
) -> None:
    """A 500 after sending: the task may exist at the provider, so it is `unknown`, logged
    with its cause, never submitted twice, and left to its callback or to expiry."""
    provider = ProviderSettings(
        "evolink",
        WireFormat.EVOLINK,
        base_url="https://provider.example",
        expected_seconds=1,
        max_age_seconds=60,
    )
    settings = Settings(callback_secrets=("s",), admin_token="t", providers={"evolink": provider})
    row = await store.register(
        NewTask(provider="evolink", model="sora-2", request={"prompt": "x"}, submit=True)
    )
    sent: list[httpx.Request] = []

    def provider_answers(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500, json={"error": {"message": "internal"}})

    transport = httpx.MockTransport(provider_answers)
    async with ProviderClients.open(settings.providers.values(), transport=transport) as clients:
        reconciler = Reconciler(settings, store, clients, clock=clock)
        with structlog.testing.capture_logs() as logs:
            await reconciler.run_pass()
        for _ in range(4):
            clock.advance(10)
            await reconciler.run_pass()
        unknown = await store.get(row.ref)
        clock.advance(30)
        await reconciler.run_pass()
    final = await store.get(row.ref)
    assert [request.method for request in sent] == ["POST"]
    assert unknown is not None
    assert (unknown.submission, unknown.state, unknown.provider_task_id) == (
        "unknown",
        "submitted",
        None,
    )
    assert unknown.attention is not None
    assert unknown.attention.startswith(SUBMIT_UNKNOWN + ": ")  # why, on the task itself
    assert "server error" in unknown.attention
    [failed] = [line for line in logs if line["event"] == "submit_failed"]
    assert failed["task_ref"] == row.ref
    assert failed["submission"] == "unknown"
    assert "server error" in failed["error"]
    assert final is not None
    assert final.state == "lost"


async def test_start_up_names_the_pollable_providers_and_those_not_configured(
    store: LedgerStore, clock: FakeClock
) -> None:
    providers = {
        "apidot": ProviderSettings("apidot", WireFormat.APIDOT, base_url="https://api.example"),
        "evolink": ProviderSettings("evolink", WireFormat.EVOLINK),
    }
    settings = Settings(callback_secrets=("s",), admin_token="t", providers=providers)
    async with ProviderClients.open(settings.providers.values()) as clients:
        reconciler = Reconciler(settings, store, clients, clock=clock)
        reconciler.stopping.set()
        with structlog.testing.capture_logs() as logs:
            await reconciler.run()
    (started,) = [line for line in logs if line["event"] == "reconciler_started"]
    assert (started["pollable"], started["not_configured"]) == (["apidot"], ["evolink"])
    (warned,) = [line for line in logs if line["event"] == "provider_not_pollable"]
    assert warned["missing"] == "TASKLEDGER_PROVIDER_EVOLINK_BASE_URL"


@pytest.mark.parametrize("secrets", [(), (webhook_secret(),)], ids=["no-secret", "secret"])
async def test_replicate_is_asked_for_webhooks_only_when_they_can_be_verified(
    store: LedgerStore, clock: FakeClock, secrets: tuple[str, ...]
) -> None:
    """Replicate signs every webhook: without its secret each would be refused, so none is
    asked for (the task is polled), and start-up names the missing setting."""
    kind = builtin_definitions()["replicate"]
    provider = ProviderSettings(
        "replicate", kind, base_url="https://api.example", webhook_secrets=secrets
    )
    settings = Settings(
        callback_secrets=("s",),
        admin_token="t",
        providers={"replicate": provider},
        public_base_url="https://hooks.example",
    )
    await store.register(
        NewTask(provider="replicate", model="o/m", request={"input": {}}, submit=True)
    )
    sent: list[dict[str, object]] = []

    def provider_answers(request: httpx.Request) -> httpx.Response:
        sent.append(orjson.loads(request.content))
        return httpx.Response(201, json={"id": "p-1", "status": "starting"})

    transport = httpx.MockTransport(provider_answers)
    async with ProviderClients.open(settings.providers.values(), transport=transport) as clients:
        reconciler = Reconciler(settings, store, clients, clock=clock)
        await reconciler.run_pass()
        reconciler.stopping.set()
        with structlog.testing.capture_logs() as logs:
            await reconciler.run()
    [body] = sent
    warned = [line for line in logs if line["event"] == "webhooks_refused"]
    if secrets:
        assert body["webhook"] == "https://hooks.example/webhooks/replicate"
        assert warned == []
    else:
        assert "webhook" not in body
        assert [line["missing"] for line in warned] == [
            "TASKLEDGER_PROVIDER_REPLICATE_WEBHOOK_SECRETS"
        ]


@pytest.mark.parametrize(
    ("status", "label"),
    [(404, "rejected"), (429, "rate_limited"), (503, "provider_unavailable")],
)
async def test_poll_results_are_labelled_in_lowercase_snake_case(
    store: LedgerStore, clock: FakeClock, status: int, label: str
) -> None:
    provider = ProviderSettings(
        "evolink", WireFormat.EVOLINK, base_url="https://api.example", expected_seconds=1
    )
    settings = Settings(callback_secrets=("s",), admin_token="t", providers={"evolink": provider})
    await store.register(NewTask("evolink", provider_task_id="t-1", expected_seconds=1))
    clock.advance(2)
    metrics = ReconcilerMetrics()
    transport = httpx.MockTransport(lambda _request: httpx.Response(status))
    policy = RetryPolicy(attempts=1, base_delay_seconds=0.0)
    async with ProviderClients.open(
        settings.providers.values(), transport=transport, policy=policy
    ) as clients:
        reconciler = Reconciler(settings, store, clients, clock=clock, metrics=metrics)
        await reconciler.run_pass()
    exposed = generate_latest(metrics.registry).decode()
    assert f'taskledger_polls_total{{provider="evolink",result="{label}"}} 1.0' in exposed
    results = re.findall(r'taskledger_polls_total\{provider="evolink",result="([^"]*)"\}', exposed)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", result) for result in results)
