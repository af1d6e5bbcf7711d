"""One receiver per test module and backend, with a provider account per name the module
declares in `PROVIDERS` (so each case owns its provider task ids), and the helpers that post
a body through the real callback routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import pytest_asyncio

from schemas.settings import ProviderSettings
from schemas.wire import WireFormat
from tests.conftest import FakeClock
from tests.support.databases import BACKENDS, temporary_database
from tests.support.senders import WEBHOOK_SECRET, signed_headers
from tests.support.service import Service, running_service, settings_for

JSON = {"content-type": "application/json"}


@dataclass
class Ledger:
    """The running receiver and the clock it reads."""

    service: Service
    clock: FakeClock

    async def deliver(
        self, provider: str, kind: WireFormat, body: bytes, task_id: str | None
    ) -> tuple[httpx.Response, dict[str, Any] | None]:
        """Register a task for `task_id` (when the body names one), post `body` as the
        provider would, and answer with the response and that task as it is then."""
        task = None
        if task_id is not None or not kind.signs_callbacks:
            fields = {} if task_id is None else {"provider_task_id": task_id}
            task = await self.service.register(provider, **fields)
        if kind.signs_callbacks:
            headers = signed_headers(body, self.clock())
            response = await self.service.http.post(
                f"/webhooks/{provider}", content=body, headers=headers
            )
        else:
            assert task is not None
            path = urlsplit(task["callback_url"]).path
            response = await self.service.http.post(path, content=body, headers=JSON)
        shown = None if task is None else await self.service.task(task["ref"])
        return response, shown


def provider_settings(providers: dict[str, WireFormat]) -> dict[str, ProviderSettings]:
    return {
        name: ProviderSettings(
            name, kind, webhook_secrets=(WEBHOOK_SECRET,) if kind.signs_callbacks else ()
        )
        for name, kind in providers.items()
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=BACKENDS)
async def ledger(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Ledger]:
    providers = provider_settings(request.module.PROVIDERS)
    clock = FakeClock()
    directory = tmp_path_factory.mktemp("conformance")
    async with temporary_database(request.param, directory) as url:
        settings = replace(settings_for(url), providers=providers)
        async with running_service(settings, clock) as service:
            yield Ledger(service, clock)
