"""Providers nobody wrote code for: a definition file, and the whole system serves them.

The simulator serves each invented provider from an independent description of it
(tests/simulator/descriptions/), never from the definition files in
tests/schemas/definitions/: a mistake in either shows as a failure.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from reconciler.clients import ProviderClients
from reconciler.process import Reconciler
from schemas.database import create_engine
from schemas.settings import Settings
from schemas.store import LedgerStore
from simulator import Faults, Lifecycle, SimConfig, Simulator, create_app
from tests.conftest import FakeClock
from tests.support.servers import serve
from tests.support.service import ADMIN_TOKEN, CALLBACK_SECRETS, Service, running_service
from tests.support.waiting import until

DEFINITIONS = Path(__file__).parents[1] / "schemas" / "definitions"
DESCRIPTIONS = Path(__file__).parents[1] / "simulator" / "descriptions"
LIFECYCLE = Lifecycle(
    min_duration_s=0.2, max_duration_s=0.6, succeeded_weight=0.7, failed_weight=0.3,
    cancelled_weight=0.0,
)  # fmt: skip
MAX_PASSES = 12


def _settings(database_url: str, sim_url: str) -> Settings:
    environ = {
        "TASKLEDGER_DATABASE_URL": database_url,
        "TASKLEDGER_ADMIN_TOKEN": ADMIN_TOKEN,
        "TASKLEDGER_CALLBACK_SECRETS": ",".join(CALLBACK_SECRETS),
        "TASKLEDGER_PROVIDERS_DIR": str(DEFINITIONS),
        "TASKLEDGER_PROVIDERS": "moviemint,stillpoll",
        "TASKLEDGER_PROVIDER_MOVIEMINT_BASE_URL": f"{sim_url}/moviemint",
        "TASKLEDGER_PROVIDER_MOVIEMINT_API_KEY": "mint-key",
        "TASKLEDGER_PROVIDER_STILLPOLL_BASE_URL": f"{sim_url}/stillpoll",
        "TASKLEDGER_PROVIDER_STILLPOLL_API_KEY": "still-key",
    }
    return Settings.from_environ(environ)


def _simulator(faults: Faults) -> tuple[Any, Simulator]:
    config = SimConfig(
        seed=11,
        time_scale=0.01,
        lifecycle=LIFECYCLE,
        faults=faults,
        described=(str(DESCRIPTIONS / "moviemint.json"), str(DESCRIPTIONS / "stillpoll.json")),
    )
    app = create_app(config)
    return app, app.state.simulator


@pytest.fixture
async def system(
    database_url: str, clock: FakeClock, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Service, Simulator, Settings]]:
    app, sim = _simulator(request.param)
    async with serve(app) as sim_url:
        settings = _settings(database_url, sim_url)
        async with running_service(settings, clock) as service:
            yield service, sim, replace(settings, public_base_url=service.base_url)


async def _register(service: Service, provider: str, n: int) -> list[str]:
    refs = []
    for i in range(n):
        response = await service.http.post(
            "/v1/tasks",
            json={
                "provider": provider,
                "model": "m-1",
                "request": {"prompt": f"{provider}-{i}"},
                "submit": True,
            },
            headers=service.admin,
        )
        assert response.status_code == 202, response.text
        refs.append(response.json()["ref"])
    return refs


async def _settle(
    service: Service, sim: Simulator, settings: Settings, clock: FakeClock, refs: list[str]
) -> None:
    """Submit, let every task end and its callbacks arrive, then poll until all have ended."""
    store = LedgerStore(create_engine(settings.database_url), clock, settings.readers)
    try:
        async with ProviderClients.open(settings.providers.values()) as clients:
            reconciler = Reconciler(settings, store, clients, clock=clock)
            await reconciler.run_pass()
            await until(lambda: all(t["terminal"] for t in sim.truth()), within=10)
            await sim.drain()
            for _ in range(MAX_PASSES):
                clock.advance(120)
                if await _all_ended(service, refs):
                    return
                await reconciler.run_pass()
    finally:
        await store.close()
        await store.engine.dispose()


async def _all_ended(service: Service, refs: list[str]) -> bool:
    tasks = [await service.task(ref) for ref in refs]
    return all(task["state"] in ("succeeded", "failed") for task in tasks)


async def _assert_in_truth(
    service: Service, sim: Simulator, provider: str, refs: list[str]
) -> None:
    truth = {t["task_id"]: t for t in sim.truth() if t["format"] == provider}
    assert len(truth) == len(refs)
    for ref in refs:
        task = await service.task(ref)
        real = truth[task["provider_task_id"]]
        assert task["state"] == real["normalized"], (task, real)
        urls = (task.get("result") or {}).get("urls") or []
        assert urls == real["result_urls"], (task, real)
    submits = sim.stats()["submits_by_prompt"]
    assert {key: n for key, n in submits.items() if key.startswith(provider)} == {
        f"{provider}/{provider}-{i}": 1 for i in range(len(refs))
    }


@pytest.mark.parametrize(
    "system", [Faults(drop_rate=0.4, duplicate_rate=0.5, delay_rate=0.3)], indirect=True
)
async def test_an_invented_gateway_settles_from_its_definition_file_alone(
    system: tuple[Service, Simulator, Settings], clock: FakeClock
) -> None:
    service, sim, settings = system
    refs = await _register(service, "moviemint", 12)
    await _settle(service, sim, settings, clock, refs)
    await _assert_in_truth(service, sim, "moviemint", refs)
    callbacks = sim.stats()["callbacks"]
    assert callbacks["dropped"] > 0
    assert callbacks["duplicated"] > 0
    assert callbacks["delivered"] > 0


@pytest.mark.parametrize(
    "system", [Faults(poll_429_rate=0.2, poll_500_rate=0.2, retry_after_s=0)], indirect=True
)
async def test_a_poll_only_invented_provider_settles_the_same_way(
    system: tuple[Service, Simulator, Settings], clock: FakeClock
) -> None:
    service, sim, settings = system
    refs = await _register(service, "stillpoll", 6)
    await _settle(service, sim, settings, clock, refs)
    await _assert_in_truth(service, sim, "stillpoll", refs)
    assert sim.stats()["callbacks"]["scheduled"] == 0
