"""Every row of DESIGN.md's answer table, and "never 500", through real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from tests.conftest import FakeClock
from tests.support.senders import apidot_body, openai_event, signed_headers
from tests.support.service import Service, running_service, settings_for

JSON = {"content-type": "application/json"}


@pytest.fixture
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    settings = settings_for(database_url, max_body_bytes=4096)
    async with running_service(settings, clock) as service:
        yield service


@pytest.fixture
async def callback_path(service: Service) -> str:
    task = await service.register("apidot", provider_task_id="task-x")
    return urlsplit(task["callback_url"]).path


async def test_oversized_body_is_413(service: Service, callback_path: str) -> None:
    response = await service.http.post(
        callback_path, content=b"{" + b" " * 5000 + b"}", headers=JSON
    )
    assert response.status_code == 413


async def test_oversized_chunked_body_is_413(service: Service, callback_path: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    response = await service.http.post(callback_path, content=chunks(), headers=JSON)
    assert response.status_code == 413


async def test_timestamp_outside_tolerance_is_401(service: Service, clock: FakeClock) -> None:
    body = openai_event("video_1")
    headers = signed_headers(body, clock())
    clock.advance(301)
    response = await service.http.post("/webhooks/openai", content=body, headers=headers)
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"webhook-id": ""}, "the webhook has no webhook-id header"),
        (
            {"webhook-timestamp": "", "webhook-signature": ""},
            "the webhook has no webhook-timestamp, webhook-signature header",
        ),
        ({"webhook-timestamp": "soon"}, "the webhook-timestamp header is not a time in Unix"),
        ({"webhook-timestamp": "9" * 40}, "the webhook-timestamp header is not a time in Unix"),
        ({"age": "301"}, "the webhook-timestamp is 301 s old, past the 300 s allowed"),
        ({"age": "-400"}, "is 400 s ahead of this server's clock, past the 300 s allowed"),
        ({"webhook-signature": "v2,abc"}, "the webhook-signature header holds no v1 signature"),
        ({"body": "altered"}, "the webhook signature does not verify (another secret, or an"),
    ],
    ids=["no-id", "no-timestamp-nor-signature", "word", "huge", "old", "ahead", "v2", "altered"],
)
async def test_a_refused_webhook_is_told_what_to_mend(
    service: Service, clock: FakeClock, change: dict[str, str], said: str
) -> None:
    """Each check a webhook failed gets its own 401 message (a clock off by minutes is not a
    wrong secret); nothing is stored either way."""
    body = openai_event("video_1")
    headers = dict(signed_headers(body, clock()))
    change = dict(change)  # the parameter's own is shared by each database's run
    clock.advance(float(change.pop("age", "0")))
    if change.pop("body", None):
        body = body.replace(b"video_1", b"video_2")
    headers.update(change)
    response = await service.http.post("/webhooks/openai", content=body, headers=headers)
    assert (response.status_code, response.json()["error"]) == (401, "unauthenticated")
    assert said in response.json()["message"]


@pytest.mark.parametrize(
    "signature",
    [
        b"",
        b"v1",
        b"v1,",
        b"v1,!!!notbase64",
        b"garbage",
        b"v2,abc v1",
        b"v1,a,b,c",
        "v1,ü".encode(),
        b"v1,\xff\xfe",
    ],
    ids=[
        "empty",
        "no-comma",
        "empty-sig",
        "bad-base64",
        "garbage",
        "wrong-version",
        "many-commas",
        "utf-8",
        "not-utf-8",
    ],
)
async def test_malformed_signature_header_is_401(
    service: Service, clock: FakeClock, signature: bytes
) -> None:
    body = openai_event("video_1")
    headers: dict[str, str | bytes] = {
        **signed_headers(body, clock()),
        "webhook-signature": signature,
    }
    response = await service.http.post("/webhooks/openai", content=body, headers=headers)
    assert response.status_code == 401


@pytest.mark.parametrize("timestamp", ["", "soon", "-5", "1e9", "99999999999999999999"])
async def test_malformed_timestamp_header_is_401(
    service: Service, clock: FakeClock, timestamp: str
) -> None:
    body = openai_event("video_1")
    headers = {**signed_headers(body, clock()), "webhook-timestamp": timestamp}
    response = await service.http.post("/webhooks/openai", content=body, headers=headers)
    assert response.status_code == 401


async def test_missing_signature_headers_are_401(service: Service) -> None:
    response = await service.http.post("/webhooks/openai", content=openai_event("v"), headers=JSON)
    assert response.status_code == 401


@pytest.mark.parametrize(
    "path",
    ["/callbacks/nobody/tok", "/webhooks/nobody", "/webhooks/apidot", "/callbacks/openai/t"],
    ids=["unknown-gateway", "unknown-source", "gateway-on-signed-route", "signed-on-token-route"],
)
async def test_unknown_provider_in_the_path_is_404(service: Service, path: str) -> None:
    response = await service.http.post(path, content=b"{}", headers=JSON)
    assert response.status_code == 404


async def test_admin_routes_need_the_bearer_token(service: Service) -> None:
    answers = [
        await service.http.post("/v1/tasks", json={"provider": "apidot"}),
        await service.http.get("/v1/tasks/tl_x", headers={"authorization": "Bearer wrong"}),
        await service.http.patch("/v1/tasks/tl_x", json={"provider_task_id": "x"}),
    ]
    assert [a.status_code for a in answers] == [401, 401, 401]


async def test_registering_an_unknown_provider_is_422(service: Service) -> None:
    response = await service.http.post(
        "/v1/tasks", json={"provider": "nope"}, headers=service.admin
    )
    assert response.status_code == 422


async def test_attaching_a_second_provider_task_id_is_409(service: Service) -> None:
    task = await service.register("apidot", provider_task_id="task-first")
    response = await service.http.patch(
        f"/v1/tasks/{task['ref']}", json={"provider_task_id": "task-second"}, headers=service.admin
    )
    assert response.status_code == 409


async def test_health_ready_and_metrics_answer(service: Service, callback_path: str) -> None:
    await service.http.post(callback_path, content=apidot_body("task-x", "running"), headers=JSON)
    await service.http.post("/webhooks/openai", content=b"{}", headers=JSON)
    assert (await service.http.get("/healthz")).status_code == 200
    assert (await service.http.get("/readyz")).status_code == 200
    metrics = (await service.http.get("/metrics")).text
    assert 'taskledger_deliveries_total{outcome="applied",provider="apidot"} 1.0' in metrics
    assert 'taskledger_rejections_total{provider="openai",reason="unauthenticated"} 1.0' in metrics
    assert "taskledger_ingest_seconds_bucket" in metrics
    assert "taskledger_writer_batch_size_bucket" in metrics
