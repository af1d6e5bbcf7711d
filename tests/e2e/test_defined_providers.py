"""Providers nobody wrote code for: a definition file, and the whole system serves them.

Each fake provider here is written from its own (invented) documentation, independently of
the definition files in tests/schemas/definitions/: a mistake in either shows as a failure.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from reconciler.clients import ProviderClients
from reconciler.process import Reconciler
from schemas.database import create_engine
from schemas.settings import Settings
from schemas.store import LedgerStore
from tests.conftest import FakeClock
from tests.support.service import ADMIN_TOKEN, CALLBACK_SECRETS, Service, running_service

DEFINITIONS = Path(__file__).parents[1] / "schemas" / "definitions"
BASE = "https://mint.example"


@dataclass
class MovieMint:
    """MovieMint as its docs describe it: renders move waiting -> rendering -> delivered."""

    renders: dict[str, dict[str, Any]] = field(default_factory=dict)
    notify: dict[str, str] = field(default_factory=dict)
    submits: int = 0
    keys_seen: set[str] = field(default_factory=set)
    ids: Any = field(default_factory=lambda: itertools.count(1))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.keys_seen.add(request.headers.get("x-mint-key", ""))
        if request.method == "POST" and request.url.path == "/api/v2/renders":
            return self._create(orjson.loads(request.content))
        render_id = request.url.path.rsplit("/", 1)[-1]
        if render_id not in self.renders:
            return httpx.Response(404, json={"ok_code": 4, "error_text": "no such render"})
        return httpx.Response(200, json={"ok_code": 0, "result": self.renders[render_id]})

    def _create(self, body: dict[str, Any]) -> httpx.Response:
        self.submits += 1
        render_id = f"mint-{next(self.ids)}"
        self.renders[render_id] = {"render_id": render_id, "phase": "waiting", "percent": 0}
        self.notify[render_id] = body["notify_url"]
        assert body["input"]["prompt"], "the request travels under `input`"
        return httpx.Response(200, json={"ok_code": 0, "result": {"render_id": render_id}})

    def deliver(self, render_id: str) -> bytes:
        self.renders[render_id] = {
            "render_id": render_id,
            "phase": "delivered",
            "percent": 100,
            "outputs": [{"href": f"https://cdn.mint.example/{render_id}.mp4"}],
        }
        return orjson.dumps({"ok_code": 0, "result": self.renders[render_id]})


def _settings(database_url: str) -> Settings:
    environ = {
        "TASKLEDGER_DATABASE_URL": database_url,
        "TASKLEDGER_ADMIN_TOKEN": ADMIN_TOKEN,
        "TASKLEDGER_CALLBACK_SECRETS": ",".join(CALLBACK_SECRETS),
        "TASKLEDGER_PROVIDERS_DIR": str(DEFINITIONS),
        "TASKLEDGER_PROVIDERS": "moviemint,stillpoll",
        "TASKLEDGER_PROVIDER_MOVIEMINT_BASE_URL": BASE,
        "TASKLEDGER_PROVIDER_MOVIEMINT_API_KEY": "mint-key",
        "TASKLEDGER_PROVIDER_STILLPOLL_BASE_URL": "https://still.example",
        "TASKLEDGER_PROVIDER_STILLPOLL_API_KEY": "still-key",
    }
    return Settings.from_environ(environ)


@pytest.fixture
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    async with running_service(_settings(database_url), clock) as service:
        yield service


async def _register(service: Service, provider: str, n: int) -> list[str]:
    refs = []
    for i in range(n):
        response = await service.http.post(
            "/v1/tasks",
            json={
                "provider": provider,
                "model": "m-1",
                "request": {"prompt": f"p{i}"},
                "submit": True,
            },
            headers=service.admin,
        )
        assert response.status_code == 202, response.text
        refs.append(response.json()["ref"])
    return refs


async def _reconcile(
    settings: Settings,
    database_url: str,
    clock: FakeClock,
    transport: httpx.MockTransport,
    passes: int,
) -> None:
    store = LedgerStore(create_engine(database_url), clock, settings.readers)
    async with ProviderClients.open(settings.providers.values(), transport=transport) as clients:
        reconciler = Reconciler(settings, store, clients, clock=clock)
        for _ in range(passes):
            await reconciler.run_pass()
            clock.advance(120)
    await store.close()
    await store.engine.dispose()


async def test_an_invented_gateway_settles_from_its_definition_file_alone(
    service: Service, database_url: str, clock: FakeClock
) -> None:
    settings = replace(_settings(database_url), public_base_url=service.base_url)
    mint = MovieMint()
    refs = await _register(service, "moviemint", 6)
    await _reconcile(settings, database_url, clock, httpx.MockTransport(mint), passes=1)
    assert mint.submits == 6
    assert mint.keys_seen == {"mint-key"}
    # Callbacks as MovieMint sends them: one dropped, one sent twice, the rest once.
    render_ids = sorted(mint.notify)
    for n, render_id in enumerate(render_ids):
        body = mint.deliver(render_id)
        if n == 0:
            continue  # dropped: the poll must find it
        path = urlsplit(mint.notify[render_id]).path
        for _ in range(2 if n == 1 else 1):
            answer = await service.http.post(path, content=body)
            assert answer.status_code == 200, answer.text
    await _reconcile(settings, database_url, clock, httpx.MockTransport(mint), passes=4)
    for ref in refs:
        task = await service.task(ref)
        assert task["state"] == "succeeded", task
        assert task["result"]["urls"] == [
            f"https://cdn.mint.example/{task['provider_task_id']}.mp4"
        ]
        assert task["confirmed"] is True
    assert mint.submits == 6


@dataclass
class StillPoll:
    """StillPoll as its docs describe it: poll only, upper-case states, a version header."""

    jobs: dict[str, int] = field(default_factory=dict)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            job_id = f"job-{len(self.jobs) + 1}"
            self.jobs[job_id] = 0
            return httpx.Response(201, json={"job": {"id": job_id, "state": "PENDING"}})
        if request.headers.get("x-api-version") != "2026-01-01":
            return httpx.Response(400, json={"error": "x-api-version is required"})
        job_id = request.url.path.rsplit("/", 1)[-1]
        self.jobs[job_id] += 1
        state = ["ACTIVE", "ACTIVE", "DONE"][min(self.jobs[job_id] - 1, 2)]
        artifacts = [f"https://still.example/{job_id}.png"] if state == "DONE" else []
        return httpx.Response(
            200, json={"job": {"id": job_id, "state": state, "artifacts": artifacts}}
        )


async def test_a_poll_only_invented_provider_settles_the_same_way(
    service: Service, database_url: str, clock: FakeClock
) -> None:
    settings = replace(_settings(database_url), public_base_url=service.base_url)
    still = StillPoll()
    refs = await _register(service, "stillpoll", 3)
    await _reconcile(settings, database_url, clock, httpx.MockTransport(still), passes=8)
    for ref in refs:
        task = await service.task(ref)
        assert task["state"] == "succeeded", task
        assert task["result"]["urls"] == [f"https://still.example/{task['provider_task_id']}.png"]
    assert len(still.jobs) == 3
