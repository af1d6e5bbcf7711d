"""A receiver running on loopback against a test database, with an admin client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import httpx

from receiver.app import create_app
from schemas.database import create_engine
from schemas.migrate import upgrade
from schemas.settings import ArchiveSettings, ProviderSettings, Settings
from schemas.wire import WireFormat
from tests.support.senders import OLD_WEBHOOK_SECRET, WEBHOOK_SECRET
from tests.support.servers import free_port, serve

ADMIN_TOKEN = "admin-token-for-tests"
CALLBACK_SECRETS = ("callback-secret-new", "callback-secret-old")
# Drop idle connections before uvicorn does (5 s): reusing one it is closing is a ReadError.
KEEPALIVE = httpx.Limits(keepalive_expiry=1.0)


def settings_for(database_url: str, **overrides: Any) -> Settings:
    providers = {
        "openai": ProviderSettings(
            "openai", WireFormat.OPENAI, webhook_secrets=(WEBHOOK_SECRET, OLD_WEBHOOK_SECRET)
        ),
        "apidot": ProviderSettings("apidot", WireFormat.APIDOT),
        "vidgo": ProviderSettings("vidgo", WireFormat.APIDOT),
        "evolink": ProviderSettings("evolink", WireFormat.EVOLINK),
    }
    settings = Settings(
        database_url=database_url,
        callback_secrets=CALLBACK_SECRETS,
        admin_token=ADMIN_TOKEN,
        providers=providers,
        log_json=True,
        archive=ArchiveSettings(url="off"),  # tests that archive say where
    )
    return replace(settings, **overrides)


@dataclass
class Service:
    base_url: str
    http: httpx.AsyncClient

    async def register(self, provider: str, **fields: Any) -> dict[str, Any]:
        response = await self.http.post(
            "/v1/tasks",
            json={"provider": provider, "owner": "team-a", "model": "sora-2", **fields},
            headers=self.admin,
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def task_with_callback(self, provider: str, **fields: Any) -> tuple[str, str]:
        """A new task's ref and the path of its callback URL."""
        task = await self.register(provider, **fields)
        return task["ref"], urlsplit(task["callback_url"]).path

    async def task(self, ref: str) -> dict[str, Any]:
        response = await self.http.get(f"/v1/tasks/{ref}", headers=self.admin)
        assert response.status_code == 200, response.text
        return dict(response.json())

    @property
    def admin(self) -> dict[str, str]:
        return {"authorization": f"Bearer {ADMIN_TOKEN}"}


async def migrate(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


@asynccontextmanager
async def running_service(
    settings: Settings, clock: Any, port: int | None = None
) -> AsyncIterator[Service]:
    await migrate(settings.database_url)
    port = port or free_port()
    settings = replace(settings, public_base_url=f"http://127.0.0.1:{port}")
    app = create_app(settings, clock=clock)
    async with (
        serve(app, port=port) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=30, limits=KEEPALIVE) as http,
    ):
        yield Service(base_url, http)
