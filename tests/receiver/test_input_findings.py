"""What the API accepts, from an outside check: one rule for owners (trimmed, never blank) on
tasks, keys and filters; JSON bodies read exactly (no integer rounded, no key twice); the
router's own refusals in the API's error shape; a cursor taken only by its own listing."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import FakeClock
from tests.support.service import Service, running_service, settings_for

JSON = {"content-type": "application/json"}
CURSOR_TIME = "2026-01-01T00:00:00+00:00"


@pytest.fixture
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    async with running_service(settings_for(database_url), clock) as service:
        yield service


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def refused(answer: Any, status: int) -> dict[str, Any]:
    """The answer's error, checked to be in the API's shape with `status`."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()
    assert set(error) == {"error", "message"}
    return dict(error)


# -- owners --------------------------------------------------------------------------------

BLANK_OWNERS = {"empty": "", "space": " ", "tab-and-newline": "\t\n"}


@pytest.mark.parametrize("owner", BLANK_OWNERS.values(), ids=BLANK_OWNERS)
async def test_a_key_for_a_blank_owner_is_refused_not_made_for_every_owner(
    service: Service, owner: str
) -> None:
    answer = await service.http.post(
        "/v1/keys", json={"name": "a", "scope": "write", "owner": owner}, headers=service.admin
    )
    error = await refused(answer, 422)
    assert error["message"].startswith("owner must be")
    assert "not empty" in error["message"]
    keys = await service.http.get("/v1/keys", headers=service.admin)
    assert keys.json()["keys"] == []


@pytest.mark.parametrize("owner", BLANK_OWNERS.values(), ids=BLANK_OWNERS)
async def test_a_task_of_a_blank_owner_is_refused(service: Service, owner: str) -> None:
    answer = await service.http.post(
        "/v1/tasks", json={"provider": "apidot", "owner": owner}, headers=service.admin
    )
    assert (await refused(answer, 422))["message"].startswith("owner must be")


async def test_a_blank_owner_filter_is_refused(service: Service) -> None:
    answer = await service.http.get("/v1/tasks", params={"owner": " "}, headers=service.admin)
    assert (await refused(answer, 422))["message"].startswith("owner must be")


async def test_an_endpoint_filter_of_a_blank_owner_is_refused(service: Service) -> None:
    body = {"url": "https://hooks.example.com/in", "owners": ["team-a", " "]}
    answer = await service.http.post("/v1/endpoints", json=body, headers=service.admin)
    assert (await refused(answer, 422))["message"].startswith("owners must be")


async def test_owners_are_trimmed_alike_on_tasks_keys_and_filters(service: Service) -> None:
    task = await service.register("apidot", owner=" team-b ")
    await service.register("apidot", owner="team-c")
    assert task["owner"] == "team-b"
    made = await service.http.post(
        "/v1/keys", json={"name": "b", "scope": "read", "owner": "\tteam-b "}, headers=service.admin
    )
    assert made.json()["owner"] == "team-b"
    listed = await service.http.get("/v1/tasks", headers=bearer(made.json()["key"]))
    assert [t["ref"] for t in listed.json()["tasks"]] == [task["ref"]]
    filtered = await service.http.get(
        "/v1/tasks", params={"owner": " team-b "}, headers=service.admin
    )
    assert [t["ref"] for t in filtered.json()["tasks"]] == [task["ref"]]


# -- JSON bodies ---------------------------------------------------------------------------

OUT_OF_RANGE = {"2**64": str(2**64), "-(2**63)-1": str(-(2**63) - 1), "10**30": str(10**30)}


@pytest.mark.parametrize("number", OUT_OF_RANGE.values(), ids=OUT_OF_RANGE)
async def test_an_integer_beyond_64_bits_is_refused_not_rounded(
    service: Service, number: str
) -> None:
    body = f'{{"provider":"apidot","request":{{"n":{number}}}}}'
    answer = await service.http.post("/v1/tasks", content=body, headers=service.admin | JSON)
    assert "does not fit in 64 bits" in (await refused(answer, 422))["message"]


@pytest.mark.parametrize("number", [2**63, 2**64 - 1, -(2**63)], ids=str)
async def test_an_integer_within_64_bits_is_kept_exactly(service: Service, number: int) -> None:
    body = f'{{"provider":"apidot","request":{{"n":{number}}}}}'
    answer = await service.http.post("/v1/tasks", content=body, headers=service.admin | JSON)
    assert answer.status_code == 201, answer.text
    assert f'"n":{number}' in answer.text


DUPLICATES = {
    "top-level": '{"provider":"apidot","provider":"evolink"}',
    "nested": '{"provider":"apidot","request":{"a":{"provider":1,"provider":2}}}',
}


@pytest.mark.parametrize("body", DUPLICATES.values(), ids=DUPLICATES)
async def test_a_key_twice_in_an_object_is_refused_by_name(service: Service, body: str) -> None:
    answer = await service.http.post("/v1/tasks", content=body, headers=service.admin | JSON)
    assert (await refused(answer, 422))["message"] == (
        "the key 'provider' appears twice in an object"
    )


async def test_a_body_nested_past_the_stdlib_parser_is_refused_not_crashed(
    service: Service,
) -> None:
    depth = 1000  # orjson reads it (1024 levels); the stdlib's parser runs out of recursion
    body = '{"provider":"apidot","request":{"a":' + "[" * depth + "]" * depth + "}}"
    answer = await service.http.post("/v1/tasks", content=body, headers=service.admin | JSON)
    await refused(answer, 422)


# -- the router's refusals -----------------------------------------------------------------

UNROUTED = {
    "unknown-path": "/v1/nothing-here",
    "encoded-slash-in-a-ref": "/v1/tasks/a%2Fb",
    "ui-subpath": "/ui/nothing-here",
}


@pytest.mark.parametrize("path", UNROUTED.values(), ids=UNROUTED)
async def test_a_path_no_route_has_is_404_in_the_error_shape(service: Service, path: str) -> None:
    answer = await service.http.get(path, headers=service.admin)
    assert (await refused(answer, 404))["error"] == "not_found"


METHODS = {
    "options-on-the-task-list": ("OPTIONS", "/v1/tasks", "GET, HEAD, POST"),
    "delete-on-a-task": ("DELETE", "/v1/tasks/tl_x", "GET, HEAD, PATCH"),
    "get-on-a-callback": ("GET", "/callbacks/apidot/token", "POST"),
}


@pytest.mark.parametrize(("method", "path", "allow"), METHODS.values(), ids=METHODS)
async def test_a_method_the_path_does_not_take_is_405_naming_every_allowed_one(
    service: Service, method: str, path: str, allow: str
) -> None:
    answer = await service.http.request(method, path, headers=service.admin)
    assert (await refused(answer, 405))["error"] == "method_not_allowed"
    assert answer.headers["allow"] == allow


# -- cursors -------------------------------------------------------------------------------


def cursor_of(*parts: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode()


async def next_cursor(service: Service, path: str, **params: str) -> str:
    page = await service.http.get(path, params={"limit": "1", **params}, headers=service.admin)
    assert page.status_code == 200, page.text
    cursor = page.json()["next_cursor"]
    assert cursor
    return str(cursor)


async def test_a_cursor_of_one_task_order_is_refused_by_the_other(
    service: Service, clock: FakeClock
) -> None:
    for _ in range(3):
        await service.register("apidot")  # open, so stuck too
        clock.advance(1)
    newest = await next_cursor(service, "/v1/tasks")
    stuck = await next_cursor(service, "/v1/tasks", stuck="true")
    for cursor, params in ((newest, {"stuck": "true"}), (stuck, {})):
        answer = await service.http.get(
            "/v1/tasks", params={"cursor": cursor, **params}, headers=service.admin
        )
        assert "not one of this list" in (await refused(answer, 422))["message"]


FORGED = {
    "old-shape-huge-integer-ref": cursor_of(CURSOR_TIME, 10**30),
    "old-shape-ref-of-3000-chars": cursor_of(CURSOR_TIME, "x" * 3000),
    "huge-integer-ref": cursor_of("tasks", CURSOR_TIME, 10**30),
    "ref-of-3000-chars": cursor_of("tasks", CURSOR_TIME, "x" * 3000),
    "ref-of-41-chars": cursor_of("tasks", CURSOR_TIME, "x" * 41),
    "time-a-number": cursor_of("tasks", 1, "tl_a"),
    "of-the-delivery-list": cursor_of("deliveries", CURSOR_TIME, 12),
}


@pytest.mark.parametrize("cursor", FORGED.values(), ids=FORGED)
async def test_a_forged_task_cursor_is_refused(service: Service, cursor: str) -> None:
    answer = await service.http.get("/v1/tasks", params={"cursor": cursor}, headers=service.admin)
    await refused(answer, 422)


@pytest.mark.parametrize(
    "cursor",
    [cursor_of("deliveries", CURSOR_TIME, True), cursor_of("tasks", CURSOR_TIME, "12")],
    ids=["id-a-boolean", "of-the-task-list"],
)
async def test_a_forged_delivery_cursor_is_refused(service: Service, cursor: str) -> None:
    answer = await service.http.get(
        "/v1/deliveries", params={"cursor": cursor}, headers=service.admin
    )
    await refused(answer, 422)
