"""A `next_cursor` works only for the list that gave it: the same filters (however written),
any limit. Used with other filters it is refused (422, naming `cursor`), never a page that
starts mid-way through another list; an old cursor, or one whose row was changed, too."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import FakeClock
from tests.support.senders import openai_event, signed_headers
from tests.support.service import Service, running_service, settings_for


@pytest.fixture
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    async with running_service(settings_for(database_url), clock) as service:
        for provider in ("apidot", "evolink") * 3:
            await service.register(provider)
            clock.advance(1)
        for n in range(3):
            event = openai_event(f"video_{n}")
            sent = await service.http.post(
                "/webhooks/openai", content=event, headers=signed_headers(event, clock())
            )
            assert sent.status_code == 202, sent.text  # kept with no task
            clock.advance(1)
        yield service


async def page(service: Service, path: str, params: dict[str, Any]) -> httpx.Response:
    return await service.http.get(path, params=params, headers=service.admin)


async def next_cursor(service: Service, path: str, params: dict[str, Any]) -> str:
    answer = await page(service, path, {**params, "limit": "2"})
    assert answer.status_code == 200, answer.text
    cursor = answer.json()["next_cursor"]
    assert cursor
    return str(cursor)


def refusal(answer: httpx.Response) -> str:
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "invalid"
    return str(answer.json()["message"])


def rewritten(cursor: str, change: Callable[[list[Any]], list[Any]]) -> str:
    shown = orjson.loads(base64.urlsafe_b64decode(cursor))
    return base64.urlsafe_b64encode(json.dumps(change(shown)).encode()).decode()


# (path, the filters that gave the cursor, other filters it is used with)
OTHER_FILTERS = {
    "tasks-another-provider": ("/v1/tasks", {"provider": "apidot"}, {"provider": "evolink"}),
    "tasks-a-filter-added": (
        "/v1/tasks",
        {"provider": "apidot"},
        {"provider": "apidot", "state": "submitted"},
    ),
    "tasks-a-filter-dropped": ("/v1/tasks", {"owner": "team-a"}, {}),
    "deliveries-a-filter-added": ("/v1/deliveries", {}, {"outcome": "unmatched"}),
    "deliveries-another-provider": ("/v1/deliveries", {"provider": "openai"}, {"provider": "sora"}),
}


@pytest.mark.parametrize(("path", "given", "used"), OTHER_FILTERS.values(), ids=OTHER_FILTERS)
async def test_a_cursor_used_with_other_filters_is_refused_naming_cursor(
    service: Service, path: str, given: dict[str, str], used: dict[str, str]
) -> None:
    cursor = await next_cursor(service, path, given)
    answer = await page(service, path, {**used, "limit": "2", "cursor": cursor})
    assert refusal(answer).startswith("cursor is not one of this list")


# (path, the filters that gave the cursor, the same filters written otherwise)
SAME_FILTERS = {
    "tasks-flag-words": ("/v1/tasks", {"conflict": "false"}, {"conflict": "0"}),
    "tasks-owner-spaces": ("/v1/tasks", {"owner": "team-a"}, {"owner": " team-a "}),
    "tasks-empty-filter": ("/v1/tasks", {}, {"state": ""}),
    "deliveries-time-zone": (
        "/v1/deliveries",
        {"since": "2020-01-01T00:00:00Z"},
        {"since": "2020-01-01T01:00:00+01:00"},
    ),
}


@pytest.mark.parametrize(("path", "given", "used"), SAME_FILTERS.values(), ids=SAME_FILTERS)
async def test_a_cursor_takes_the_same_filters_however_written_and_any_limit(
    service: Service, path: str, given: dict[str, str], used: dict[str, str]
) -> None:
    rows = "tasks" if path == "/v1/tasks" else "deliveries"
    whole = (await page(service, path, {**given, "limit": "5"})).json()[rows]
    cursor = await next_cursor(service, path, given)
    answer = await page(service, path, {**used, "limit": "3", "cursor": cursor})
    assert answer.status_code == 200, answer.text
    assert answer.json()[rows] == whole[2:5]


async def test_following_cursors_walks_one_list_to_its_end(service: Service) -> None:
    params: dict[str, Any] = {"provider": "apidot", "limit": "2"}
    seen: list[str] = []
    while True:
        answer = (await page(service, "/v1/tasks", params)).json()
        seen += [task["provider"] for task in answer["tasks"]]
        if not answer["next_cursor"]:
            break
        params["cursor"] = answer["next_cursor"]
    assert seen == ["apidot"] * 3


@pytest.mark.parametrize("path", ["/v1/tasks", "/v1/deliveries"])
async def test_a_cursor_of_the_shape_before_filters_had_a_digest_is_refused(
    service: Service, path: str
) -> None:
    cursor = await next_cursor(service, path, {})
    old = rewritten(cursor, lambda shown: [shown[0], *shown[2:]])
    answer = await page(service, path, {"cursor": old})
    assert refusal(answer) == "cursor is not one this API returned"


# A real cursor's row key changed (its list and filters kept): what each list refuses.
FORGED_KEYS = {
    "task-ref-of-41-chars": ("/v1/tasks", "x" * 41),
    "task-ref-a-number": ("/v1/tasks", 10**30),
    "delivery-id-zero": ("/v1/deliveries", 0),
    "delivery-id-a-ref": ("/v1/deliveries", "tl_a_task_ref"),
    "delivery-id-past-a-bigint": ("/v1/deliveries", 2**63),
}


@pytest.mark.parametrize(("path", "key"), FORGED_KEYS.values(), ids=FORGED_KEYS)
async def test_a_cursor_with_a_forged_row_is_refused(service: Service, path: str, key: Any) -> None:
    cursor = await next_cursor(service, path, {})
    forged = rewritten(cursor, lambda shown: [*shown[:3], key])
    answer = await page(service, path, {"cursor": forged})
    assert refusal(answer) == "cursor is not one this API returned"


async def test_a_cursor_with_a_time_past_the_calendar_is_refused(service: Service) -> None:
    cursor = await next_cursor(service, "/v1/tasks", {})
    forged = rewritten(cursor, lambda shown: [*shown[:2], "9999-12-31T23:59:59-05:00", shown[3]])
    answer = await page(service, "/v1/tasks", {"cursor": forged})
    assert refusal(answer) == "cursor is not one this API returned"


async def test_a_keys_own_list_keeps_its_cursor(service: Service) -> None:
    """A key limited to an owner lists that owner's tasks: its cursor is of that list."""
    made = await service.http.post(
        "/v1/keys", json={"name": "r", "scope": "read", "owner": "team-a"}, headers=service.admin
    )
    key = {"authorization": f"Bearer {made.json()['key']}"}
    first = (await service.http.get("/v1/tasks", params={"limit": 2}, headers=key)).json()
    params = {"limit": 2, "cursor": first["next_cursor"]}
    assert (await service.http.get("/v1/tasks", params=params, headers=key)).status_code == 200
    admin = await service.http.get("/v1/tasks", params=params, headers=service.admin)
    assert refusal(admin).startswith("cursor is not one of this list")
