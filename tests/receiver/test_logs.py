"""No secret, token, signature, prompt, body or media URL ever reaches a log line."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from schemas import logs
from tests.conftest import FakeClock
from tests.support.senders import WEBHOOK_SECRET, apidot_body, openai_event, signed_headers
from tests.support.service import ADMIN_TOKEN, CALLBACK_SECRETS, running_service, settings_for

JSON = {"content-type": "application/json"}


async def test_logs_carry_no_secrets_tokens_prompts_or_urls(
    database_url: str, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("debug", json=True)
    prompt = "a secret prompt about a lighthouse"
    async with running_service(settings_for(database_url, log_level="debug"), clock) as service:
        task = await service.register(
            "apidot", provider_task_id="task-log", request={"prompt": prompt}
        )
        path = urlsplit(task["callback_url"]).path
        token = path.rsplit("/", 1)[1]
        body = apidot_body("task-log", "finished", 100)
        await service.http.post(path, content=body, headers=JSON)
        await service.http.post(path[:-2] + "zz", content=body, headers=JSON)
        event = openai_event("video_log")
        headers = signed_headers(event, clock())
        await service.http.post("/webhooks/openai", content=event, headers=headers)
    output = capsys.readouterr().out
    assert "delivery_stored" in output
    secrets = [
        ADMIN_TOKEN,
        *CALLBACK_SECRETS,
        WEBHOOK_SECRET,
        token,
        prompt,
        headers["webhook-signature"],
        "cdn.example",
        body.decode(),
    ]
    assert [s for s in secrets if s in output] == []
