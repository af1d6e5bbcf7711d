"""kie's HMAC-signed callbacks on the token route: the signature covers the task id and a
timestamp, not the body, so a callback that verifies is still a hint to confirm by polling.

The signer here is written from kie's documented layout, not from our verifier.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest

from schemas.settings import Settings
from tests.conftest import FakeClock
from tests.support.service import ADMIN_TOKEN, CALLBACK_SECRETS, Service, running_service
from tests.support.signers import KIE_KEY, kie_body, kie_headers

OLD_KEY = "kie-hmac-key-old"
DEFINITION = """
name = "kiesigned"

[auth]
scheme = "bearer"

[submit]
path = "/api/v1/jobs/createTask"
body = "input"
callback = "body:callBackUrl"
task_id = ["data.taskId"]

[poll]
path = "/api/v1/jobs/recordInfo?taskId={task_id}"

[envelope]
code = "code"
ok = [200]
message = "msg"

[fields]
task_id = ["data.taskId", "data.task_id"]
status = ["data.state"]
result_urls = ["data.resultJson|json.resultUrls[]"]
error_code = ["data.failCode"]
error_message = ["data.failMsg"]

[states]
waiting = "queued"
queuing = "queued"
generating = "running"
success = "succeeded"
fail = "failed"

[callbacks]
shape = "envelope"
verify = "hmac-fields"
"""


def _settings(database_url: str, directory: Path, secrets: str) -> Settings:
    (directory / "kiesigned.toml").write_text(DEFINITION, encoding="utf-8")
    environ = {
        "TASKLEDGER_DATABASE_URL": database_url,
        "TASKLEDGER_ADMIN_TOKEN": ADMIN_TOKEN,
        "TASKLEDGER_CALLBACK_SECRETS": ",".join(CALLBACK_SECRETS),
        "TASKLEDGER_PROVIDERS_DIR": str(directory),
        "TASKLEDGER_PROVIDERS": "kiesigned",
    }
    if secrets:
        environ["TASKLEDGER_PROVIDER_KIESIGNED_WEBHOOK_SECRETS"] = secrets
    return Settings.from_environ(environ)


@asynccontextmanager
async def _service(
    database_url: str, clock: FakeClock, directory: Path, secrets: str
) -> AsyncIterator[Service]:
    async with running_service(_settings(database_url, directory, secrets), clock) as service:
        yield service


@pytest.fixture
async def service(database_url: str, clock: FakeClock, tmp_path: Path) -> AsyncIterator[Service]:
    async with _service(database_url, clock, tmp_path, f"{KIE_KEY},{OLD_KEY}") as service:
        yield service


@pytest.mark.parametrize("key", [KIE_KEY, OLD_KEY], ids=["newest-key", "older-key"])
async def test_signed_kie_callback_is_accepted_as_an_unconfirmed_hint(
    service: Service, clock: FakeClock, key: str
) -> None:
    ref, path = await service.task_with_callback("kiesigned", provider_task_id="task_kie_1")
    headers = kie_headers("task_kie_1", clock.unix(), key)
    response = await service.http.post(path, content=kie_body("task_kie_1"), headers=headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"outcome": "applied"}
    task = await service.task(ref)
    assert task["state"] == "succeeded"
    assert task["result"]["urls"] == ["https://tempfile.kie.ai/task_kie_1.mp4"]
    assert task["confirmed"] is False  # the body is not signed: a poll must agree


Headers = Callable[[int], dict[str, str]]
REFUSED: dict[str, Headers] = {
    "wrong-key": lambda now: kie_headers("task_kie_1", now, "not-our-key"),
    "another-task-id": lambda now: kie_headers("task_kie_2", now),
    "stale-timestamp": lambda now: kie_headers("task_kie_1", now - 301),
    "future-timestamp": lambda now: kie_headers("task_kie_1", now + 301),
    "no-signature": lambda now: {"x-webhook-timestamp": str(now)},
    "no-timestamp": lambda now: {
        "x-webhook-signature": kie_headers("task_kie_1", now)["x-webhook-signature"]
    },
    "unsigned": lambda now: {},
}


@pytest.mark.parametrize("headers", REFUSED.values(), ids=REFUSED.keys())
async def test_kie_callback_that_does_not_verify_is_refused_and_nothing_stored(
    service: Service, clock: FakeClock, headers: Headers
) -> None:
    ref, path = await service.task_with_callback("kiesigned", provider_task_id="task_kie_1")
    response = await service.http.post(
        path, content=kie_body("task_kie_1"), headers=headers(clock.unix())
    )
    assert response.status_code == 401, response.text
    task = await service.task(ref)
    assert task["state"] == "submitted"
    assert task["timeline"]["deliveries"] == []


async def test_kie_signature_for_the_body_task_but_a_body_without_one_is_refused(
    service: Service, clock: FakeClock
) -> None:
    ref, path = await service.task_with_callback("kiesigned", provider_task_id="task_kie_1")
    body = orjson.dumps({"code": 200, "msg": "ok", "data": {"state": "success"}})
    response = await service.http.post(
        path, content=body, headers=kie_headers("task_kie_1", clock.unix())
    )
    assert response.status_code == 401, response.text
    assert (await service.task(ref))["timeline"]["deliveries"] == []


async def test_kie_without_a_key_configured_takes_the_token_alone(
    database_url: str, clock: FakeClock, tmp_path: Path
) -> None:
    async with _service(database_url, clock, tmp_path, "") as service:
        ref, path = await service.task_with_callback("kiesigned", provider_task_id="task_kie_1")
        response = await service.http.post(path, content=kie_body("task_kie_1"), headers={})
        assert response.status_code == 200, response.text
        task = await service.task(ref)
        assert task["state"] == "succeeded"
        assert task["confirmed"] is False
