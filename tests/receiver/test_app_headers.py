"""Every `/v1` answer, success or refusal, through real HTTP: never sniffed as another type,
never kept by a cache (a task's answer holds its callback URL and token). The callback
routes' answers are left as they were."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import FakeClock
from tests.support.senders import apidot_body
from tests.support.service import ADMIN_TOKEN, Service, running_service, settings_for

FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    async with running_service(settings_for(database_url), clock) as service:
        yield service


def assert_private(answer: httpx.Response) -> None:
    assert answer.headers.get_list("x-content-type-options") == ["nosniff"]
    assert answer.headers.get_list("cache-control") == ["no-store"]


async def test_a_tasks_answer_with_its_callback_url_is_never_cached(service: Service) -> None:
    task = await service.register("apidot")
    answer = await service.http.get(f"/v1/tasks/{task['ref']}", headers=service.admin)
    assert answer.status_code == 200
    assert "callback_url" in answer.json()
    assert_private(answer)


async def test_a_sessions_read_is_never_cached(service: Service) -> None:
    await service.http.post("/ui/login", content=f"token={ADMIN_TOKEN}", headers=FORM)
    answer = await service.http.get("/v1/tasks")
    assert answer.status_code == 200
    assert_private(answer)


@pytest.mark.parametrize(
    ("path", "status", "authenticated"),
    [
        ("/v1/tasks/tl_nope", 404, True),
        ("/v1/no-such-route", 404, True),
        ("/v1/tasks", 401, False),
        ("/v1/tasks?stat=failed", 422, True),
        ("/v1/dashboard/outcomes?bucket_seconds=1", 422, True),
    ],
    ids=["unknown-task", "unknown-route", "unauthenticated", "unknown-query", "bad-value"],
)
async def test_a_v1_refusal_is_never_cached(
    service: Service, path: str, status: int, authenticated: bool
) -> None:
    answer = await service.http.get(path, headers=service.admin if authenticated else {})
    assert answer.status_code == status, answer.text
    assert_private(answer)


async def test_a_v1_method_not_allowed_is_never_cached(service: Service) -> None:
    answer = await service.http.put("/v1/tasks", headers=service.admin)
    assert answer.status_code == 405
    assert_private(answer)


async def test_a_callbacks_answer_is_left_as_it_was(service: Service) -> None:
    """The callback routes skip the middleware and the router: nothing is added there."""
    task = await service.register("apidot", provider_task_id="t-hot")
    path = urlsplit(task["callback_url"]).path
    answer = await service.http.post(path, content=apidot_body("t-hot", "running"))
    assert answer.status_code == 200, answer.text
    assert "cache-control" not in answer.headers
    assert "x-content-type-options" not in answer.headers
