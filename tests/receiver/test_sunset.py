"""A provider past its sunset: no new tasks, while the open ones are still received and
reconciled (OpenAI shut the Sora 2 Videos API down on 2026-09-24)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import date

import httpx
import pytest

from reconciler.clients import ProviderClients
from reconciler.process import Reconciler
from schemas.errors import ConfigError
from schemas.settings import ProviderSettings, Settings
from schemas.store import LedgerStore, NewTask
from schemas.wire import WireFormat
from tests.conftest import FakeClock
from tests.support.senders import openai_event, signed_headers
from tests.support.service import Service, running_service, settings_for

PAST = date(2026, 9, 24)
SECRETS = {"TASKLEDGER_ADMIN_TOKEN": "t" * 32, "TASKLEDGER_CALLBACK_SECRETS": "s" * 32}


@pytest.fixture
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    settings = settings_for(database_url)
    providers = dict(settings.providers)
    providers["openai"] = replace(providers["openai"], sunset=PAST)
    async with running_service(replace(settings, providers=providers), clock) as service:
        yield service


@pytest.mark.parametrize("fields", [{}, {"submit": True}], ids=["no-task-id", "submit"])
async def test_a_new_task_after_the_sunset_is_refused_saying_why(
    service: Service, fields: dict[str, object]
) -> None:
    response = await service.http.post(
        "/v1/tasks", json={"provider": "openai", **fields}, headers=service.admin
    )
    assert response.status_code == 422
    assert "shut down on 2026-09-24" in response.json()["message"]


async def test_a_task_created_before_the_sunset_is_still_followed(
    service: Service, clock: FakeClock
) -> None:
    task = await service.register("openai", provider_task_id="video_old")
    body = openai_event("video_old", kind="video.completed")
    answer = await service.http.post(
        "/webhooks/openai", content=body, headers=signed_headers(body, clock())
    )
    assert answer.status_code == 200
    assert (await service.task(task["ref"]))["state"] == "succeeded"


async def test_a_submission_left_pending_at_the_sunset_is_rejected_unsent(
    store: LedgerStore, clock: FakeClock
) -> None:
    provider = ProviderSettings(
        "openai", WireFormat.OPENAI, base_url="https://api.example", sunset=clock().date()
    )
    settings = Settings(callback_secrets=("s",), admin_token="t", providers={"openai": provider})
    row = await store.register(NewTask("openai", model="sora-2", submit=True))
    sent: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(500))
    async with ProviderClients.open(settings.providers.values(), transport=transport) as clients:
        await Reconciler(settings, store, clients, clock=clock).run_pass()
    task = await store.get(row.ref)
    assert task is not None
    assert (task.submission, task.state, sent) == ("rejected", "failed", [])


def test_openai_carries_its_sunset_unless_an_endpoint_outlives_it() -> None:
    assert Settings.from_environ(SECRETS).providers["openai"].sunset == PAST
    compatible = {**SECRETS, "TASKLEDGER_PROVIDER_OPENAI_SUNSET": "none"}
    assert Settings.from_environ(compatible).providers["openai"].sunset is None
    assert Settings.from_environ(SECRETS).providers["apidot"].sunset is None


def test_a_bad_sunset_names_its_variable() -> None:
    with pytest.raises(ConfigError, match="TASKLEDGER_PROVIDER_APIDOT_SUNSET"):
        Settings.from_environ({**SECRETS, "TASKLEDGER_PROVIDER_APIDOT_SUNSET": "soon"})
