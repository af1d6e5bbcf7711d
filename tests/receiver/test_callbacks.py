"""The callback and webhook routes through real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest

from receiver.app import create_app
from tests.conftest import FakeClock
from tests.support.senders import (
    OLD_WEBHOOK_SECRET,
    apidot_body,
    evolink_body,
    openai_event,
    signed_headers,
)
from tests.support.service import Service, running_service, settings_for

JSON = {"content-type": "application/json"}


@pytest.fixture
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    async with running_service(settings_for(database_url), clock) as service:
        yield service


def path_of(url: str) -> str:
    return urlsplit(url).path


async def post_event(service: Service, clock: FakeClock, body: bytes, **kw: str) -> httpx.Response:
    return await service.http.post(
        "/webhooks/openai", content=body, headers=signed_headers(body, clock(), **kw)
    )


async def test_signed_completed_event_moves_registered_task_to_succeeded(
    service: Service, clock: FakeClock
) -> None:
    task = await service.register("openai", provider_task_id="video_1")
    response = await post_event(service, clock, openai_event("video_1"))
    assert response.status_code == 200
    assert response.json()["outcome"] == "applied"
    shown = await service.task(task["ref"])
    assert shown["state"] == "succeeded"
    assert shown["confirmed"] is True


async def test_same_event_ten_times_concurrently_is_one_delivery_and_one_transition(
    service: Service, clock: FakeClock
) -> None:
    task = await service.register("openai", provider_task_id="video_2")
    body = openai_event("video_2")
    headers = signed_headers(body, clock(), webhook_id="msg_fixed")
    responses = await asyncio.gather(
        *[service.http.post("/webhooks/openai", content=body, headers=headers) for _ in range(10)]
    )
    assert [r.status_code for r in responses] == [200] * 10
    timeline = (await service.task(task["ref"]))["timeline"]
    assert len(timeline["deliveries"]) == 1
    assert timeline["deliveries"][0]["duplicate_count"] == 9
    to_succeeded = [t for t in timeline["transitions"] if t["to_state"] == "succeeded"]
    assert len(to_succeeded) == 1


async def test_signature_made_with_a_rotated_out_secret_still_verifies(
    service: Service, clock: FakeClock
) -> None:
    await service.register("openai", provider_task_id="video_3")
    body = openai_event("video_3")
    response = await post_event(service, clock, body, secret=OLD_WEBHOOK_SECRET)
    assert response.status_code == 200


async def test_signed_event_for_unknown_task_is_kept_as_unmatched(
    service: Service, clock: FakeClock
) -> None:
    response = await post_event(service, clock, openai_event("video_nobody"))
    assert response.status_code == 202
    assert response.json()["outcome"] == "unmatched"


async def test_unmatched_event_is_applied_when_the_task_id_is_attached(
    service: Service, clock: FakeClock
) -> None:
    await post_event(service, clock, openai_event("video_early", "video.failed"))
    task = await service.register("openai")
    response = await service.http.patch(
        f"/v1/tasks/{task['ref']}", json={"provider_task_id": "video_early"}, headers=service.admin
    )
    assert response.status_code == 200
    shown = await service.task(task["ref"])
    assert shown["state"] == "failed"
    assert shown["timeline"]["deliveries"][0]["outcome"] == "applied"


async def test_gateway_callback_through_its_url_moves_the_task(service: Service) -> None:
    task = await service.register("apidot", provider_task_id="task-unified-1")
    body = apidot_body("task-unified-1", "finished", 100)
    response = await service.http.post(path_of(task["callback_url"]), content=body, headers=JSON)
    assert response.status_code == 200
    shown = await service.task(task["ref"])
    assert shown["state"] == "succeeded"
    assert shown["confirmed"] is False
    assert shown["result"]["urls"] == ["https://cdn.example/task-unified-1.mp4"]


async def test_gateway_callback_before_the_submit_answer_adopts_the_task_id(
    service: Service,
) -> None:
    task = await service.register("evolink")
    body = evolink_body("task-unified-9", "processing", 40)
    response = await service.http.post(path_of(task["callback_url"]), content=body, headers=JSON)
    assert response.status_code == 200
    shown = await service.task(task["ref"])
    assert (shown["provider_task_id"], shown["state"]) == ("task-unified-9", "running")


async def test_tampered_token_is_refused_and_changes_nothing(service: Service) -> None:
    task = await service.register("apidot", provider_task_id="task-a")
    path = path_of(task["callback_url"])
    tampered = path[:-3] + ("xyz" if not path.endswith("xyz") else "abc")
    body = apidot_body("task-a", "failed")
    response = await service.http.post(tampered, content=body, headers=JSON)
    assert response.status_code == 401
    assert (await service.task(task["ref"]))["timeline"]["deliveries"] == []


async def test_token_for_another_provider_is_refused(service: Service) -> None:
    task = await service.register("apidot", provider_task_id="task-b")
    token = path_of(task["callback_url"]).rsplit("/", 1)[1]
    body = apidot_body("task-b", "failed")
    response = await service.http.post(f"/callbacks/vidgo/{token}", content=body, headers=JSON)
    assert response.status_code == 401
    assert (await service.task(task["ref"]))["state"] == "submitted"


async def test_token_whose_task_differs_from_the_body_is_forbidden(service: Service) -> None:
    task = await service.register("apidot", provider_task_id="task-mine")
    body = apidot_body("task-someone-else", "finished", 100)
    response = await service.http.post(path_of(task["callback_url"]), content=body, headers=JSON)
    assert response.status_code == 403
    shown = await service.task(task["ref"])
    assert (shown["state"], shown["timeline"]["deliveries"]) == ("submitted", [])


async def test_completed_before_running_ends_succeeded_without_going_back(
    service: Service,
) -> None:
    task = await service.register("evolink", provider_task_id="task-order")
    url = path_of(task["callback_url"])
    for status, progress in (("completed", 100), ("processing", 50), ("pending", 0)):
        body = evolink_body("task-order", status, progress)
        assert (await service.http.post(url, content=body, headers=JSON)).status_code == 200
    shown = await service.task(task["ref"])
    assert shown["state"] == "succeeded"
    states = [(t["from_state"], t["to_state"]) for t in shown["timeline"]["transitions"]]
    assert states == [(None, "submitted"), ("submitted", "succeeded")]
    outcomes = [d["outcome"] for d in shown["timeline"]["deliveries"]]
    assert outcomes == ["applied", "stale", "stale"]


async def test_resent_gateway_callback_counts_a_duplicate(service: Service) -> None:
    task = await service.register("vidgo", provider_task_id="task-dup")
    body = apidot_body("task-dup", "finished", 100)
    url = path_of(task["callback_url"])
    for _ in range(3):
        assert (await service.http.post(url, content=body, headers=JSON)).status_code == 200
    deliveries = (await service.task(task["ref"]))["timeline"]["deliveries"]
    assert [(d["outcome"], d["duplicate_count"]) for d in deliveries] == [("applied", 2)]


async def test_callback_before_start_up_finished_is_503_with_retry_after(
    database_url: str,
) -> None:
    """A callback that reaches the app before its lifespan start-up (nothing to store it
    with yet) is told to retry, not answered 500."""
    app = create_app(settings_for(database_url))  # lifespan not run
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.post(
            "/callbacks/apidot/some-token",
            content=apidot_body("task-early", "running", 10),
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"] == "unavailable"
