"""A provider that signs its webhooks, configured without its secrets: none of them could be
verified, so none is asked for (no callback URL is handed out), start-up says which setting
is missing, and a webhook that comes all the same is refused before anything is written."""

from __future__ import annotations

from dataclasses import replace

import structlog.testing

from schemas.settings import ProviderSettings
from schemas.wire import WireFormat
from tests.conftest import FakeClock
from tests.support.senders import openai_event, signed_headers
from tests.support.service import running_service, settings_for


async def test_an_openai_account_without_secrets_hands_out_no_webhook_url(
    database_url: str, clock: FakeClock
) -> None:
    settings = settings_for(database_url)
    unsigned = ProviderSettings("openai", WireFormat.OPENAI)
    settings = replace(settings, providers={**settings.providers, "openai": unsigned})
    with structlog.testing.capture_logs() as logs:
        async with running_service(settings, clock) as service:
            task = await service.register("openai", provider_task_id="video_1")
            body = openai_event("video_1")
            sent = await service.http.post(
                "/webhooks/openai", content=body, headers=signed_headers(body, clock())
            )
            deliveries = await service.http.get("/v1/deliveries", headers=service.admin)
            apidot = await service.register("apidot")
    assert "callback_url" not in task
    assert apidot["callback_url"].startswith(service.base_url + "/callbacks/apidot/")
    assert sent.status_code == 404
    assert "no webhook secret" in sent.json()["message"]
    assert deliveries.json()["deliveries"] == []
    warned = [line for line in logs if line["event"] == "webhooks_refused"]
    assert [(line["provider"], line["missing"]) for line in warned] == [
        ("openai", "TASKLEDGER_PROVIDER_OPENAI_WEBHOOK_SECRETS")
    ]
