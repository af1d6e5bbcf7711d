"""Deliveries kept with no task, through real HTTP on both backends: `GET /v1/deliveries`
lists them (filters, cursor, newest first), `GET /v1/deliveries/{id}` shows one with its
body; who may read them, and the refusals of bad query values."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest
import schemathesis
from hypothesis import given
from schemathesis import Case
from schemathesis.checks import response_schema_conformance

from schemas.settings import ProviderSettings
from schemas.store.queries import TASKLESS_OUTCOMES
from schemas.wire import WireFormat
from tests.conftest import FakeClock
from tests.receiver.test_api_schema import ADMIN, CASES, documented_503
from tests.support.senders import WEBHOOK_SECRET, apidot_body, openai_event, signed_headers
from tests.support.service import Service, running_service, settings_for

JSON = {"content-type": "application/json"}
LISTED = {
    "id",
    "provider",
    "provider_task_id",
    "delivery_key",
    "outcome",
    "reason",
    "received_at",
    "last_seen_at",
    "duplicate_count",
    "auth",
    "headers",
}


@pytest.fixture
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    settings = settings_for(database_url)
    # A second Standard Webhooks sender, for the provider filter.
    sora = ProviderSettings("sora", WireFormat.OPENAI, webhook_secrets=(WEBHOOK_SECRET,))
    settings = replace(settings, providers={**settings.providers, "sora": sora})
    async with running_service(settings, clock) as service:
        yield service


def signed_bytes(body: bytes, at: datetime) -> dict[str, str]:
    """Standard Webhooks headers for a body that is not text (`signed_headers` signs text)."""
    key = base64.b64decode(WEBHOOK_SECRET.removeprefix("whsec_"))
    stamp = str(int(at.timestamp()))
    digest = hmac.digest(key, b"msg_bytes." + stamp.encode() + b"." + body, hashlib.sha256)
    signature = "v1," + base64.b64encode(digest).decode()
    return {"webhook-id": "msg_bytes", "webhook-timestamp": stamp, "webhook-signature": signature}


async def signed(
    service: Service, clock: FakeClock, body: bytes, source: str = "openai"
) -> dict[str, Any]:
    """Post a signed event; the answer's outcome and the webhook id it was sent under."""
    try:
        headers = signed_headers(body, clock())
    except UnicodeDecodeError:
        headers = signed_bytes(body, clock())
    response = await service.http.post(f"/webhooks/{source}", content=body, headers=headers)
    assert response.status_code in (200, 202), response.text
    return {"outcome": response.json()["outcome"], "webhook_id": headers["webhook-id"]}


async def listed(service: Service, headers: dict[str, str] | None = None, /, **params: Any) -> Any:
    response = await service.http.get(
        "/v1/deliveries", params=params, headers=service.admin if headers is None else headers
    )
    assert response.status_code == 200, response.text
    return response.json()


async def make_key(service: Service, scope: str, owner: str | None = None) -> dict[str, str]:
    body = {"name": f"{scope} {owner}", "scope": scope, "owner": owner}
    response = await service.http.post("/v1/keys", json=body, headers=service.admin)
    assert response.status_code == 201, response.text
    return {"authorization": f"Bearer {response.json()['key']}"}


# -- what is listed ---------------------------------------------------------------------------


async def test_an_unmatched_signed_event_is_listed_with_what_was_kept(
    service: Service, clock: FakeClock
) -> None:
    sent = await signed(service, clock, openai_event("video_nobody"))
    assert sent["outcome"] == "unmatched"
    (delivery,) = (await listed(service))["deliveries"]
    assert set(delivery) == LISTED
    assert delivery["provider"] == "openai"
    assert delivery["provider_task_id"] == "video_nobody"
    assert delivery["outcome"] == "unmatched"
    assert delivery["auth"] == "signature"
    assert delivery["received_at"] == clock().isoformat()
    assert delivery["duplicate_count"] == 0
    assert delivery["headers"]["webhook-id"] == sent["webhook_id"]


async def test_a_signed_body_kept_unread_with_no_task_is_listed_and_shown_with_its_body(
    service: Service, clock: FakeClock
) -> None:
    sent = await signed(service, clock, b"not json at all")
    assert sent["outcome"] == "unrecognized"
    (delivery,) = (await listed(service))["deliveries"]
    assert (delivery["outcome"], delivery["reason"] is not None) == ("unrecognized", True)
    response = await service.http.get(f"/v1/deliveries/{delivery['id']}", headers=service.admin)
    assert response.status_code == 200, response.text
    assert response.json() == delivery | {"encoding": "utf-8", "body": "not json at all"}


async def test_a_body_that_is_not_utf8_is_shown_in_base64(
    service: Service, clock: FakeClock
) -> None:
    body = b"\xff\xfe not text"
    await signed(service, clock, body)
    (delivery,) = (await listed(service))["deliveries"]
    shown = (
        await service.http.get(f"/v1/deliveries/{delivery['id']}", headers=service.admin)
    ).json()
    assert shown["encoding"] == "base64"
    assert base64.b64decode(shown["body"]) == body


async def test_an_event_about_no_video_is_listed_as_ignored(
    service: Service, clock: FakeClock
) -> None:
    sent = await signed(service, clock, openai_event("resp_1", kind="response.completed"))
    assert sent["outcome"] == "ignored"
    (delivery,) = (await listed(service))["deliveries"]
    assert delivery["outcome"] == "ignored"


async def test_a_resent_event_is_listed_once_with_its_duplicates_counted(
    service: Service, clock: FakeClock
) -> None:
    body = openai_event("video_again", event_id="evt_again")
    headers = signed_headers(body, clock(), webhook_id="msg_again")
    for _ in range(3):
        clock.advance(1)
        await service.http.post("/webhooks/openai", content=body, headers=headers)
    (delivery,) = (await listed(service))["deliveries"]
    assert delivery["duplicate_count"] == 2
    assert delivery["last_seen_at"] == clock().isoformat()


async def test_deliveries_of_a_task_are_not_listed_nor_shown(
    service: Service, clock: FakeClock
) -> None:
    task = await service.register("openai", provider_task_id="video_known")
    await signed(service, clock, openai_event("video_known"))
    ref, path = await service.task_with_callback("apidot", provider_task_id="t-1")
    assert (await service.http.post(path, content=apidot_body("t-1", "running"))).status_code == 200
    assert (await listed(service))["deliveries"] == []
    for owner in (task["ref"], ref):
        (kept,) = (await service.task(owner))["timeline"]["deliveries"]
        response = await service.http.get(f"/v1/deliveries/{kept['id']}", headers=service.admin)
        assert response.status_code == 404


async def test_an_unmatched_event_leaves_the_list_when_its_task_is_registered(
    service: Service, clock: FakeClock
) -> None:
    await signed(service, clock, openai_event("video_early"))
    (delivery,) = (await listed(service))["deliveries"]
    await service.register("openai", provider_task_id="video_early")
    assert (await listed(service))["deliveries"] == []
    response = await service.http.get(f"/v1/deliveries/{delivery['id']}", headers=service.admin)
    assert response.status_code == 404


# -- filters and pages ------------------------------------------------------------------------


async def test_the_list_filters_by_provider_and_outcome(service: Service, clock: FakeClock) -> None:
    await signed(service, clock, openai_event("video_a"))
    await signed(service, clock, openai_event("video_b"), source="sora")
    await signed(service, clock, b"<html>", source="sora")
    by_sora = (await listed(service, provider="sora"))["deliveries"]
    assert sorted(d["outcome"] for d in by_sora) == ["unmatched", "unrecognized"]
    unmatched = (await listed(service, outcome="unmatched"))["deliveries"]
    assert sorted(d["provider_task_id"] for d in unmatched) == ["video_a", "video_b"]
    both = (await listed(service, provider="sora", outcome="unmatched"))["deliveries"]
    assert [d["provider_task_id"] for d in both] == ["video_b"]
    assert (await listed(service, provider="apidot"))["deliveries"] == []


async def test_the_list_filters_by_when_each_was_received(
    service: Service, clock: FakeClock
) -> None:
    start = clock()
    for n in range(3):
        await signed(service, clock, openai_event(f"video_{n}"))
        clock.advance(10)
    window = {
        "since": (start + timedelta(seconds=5)).isoformat(),
        "until": (start + timedelta(seconds=20)).isoformat(),
    }
    (middle,) = (await listed(service, **window))["deliveries"]
    assert middle["provider_task_id"] == "video_1"
    since_first = await listed(service, since=start.isoformat())
    assert len(since_first["deliveries"]) == 3
    assert (await listed(service, until=start.isoformat()))["deliveries"] == []


async def test_the_list_pages_newest_first_by_cursor(service: Service, clock: FakeClock) -> None:
    sent = []
    for n in range(5):
        await signed(service, clock, openai_event(f"video_{n}"))
        sent.append(f"video_{n}")
        if n != 2:  # two received at the same time: the id orders them
            clock.advance(1)
    seen: list[str] = []
    cursor = ""
    for _ in range(5):
        page = await listed(service, limit=2, cursor=cursor)
        assert len(page["deliveries"]) <= 2
        seen += [d["provider_task_id"] for d in page["deliveries"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(sent))


# -- refusals ---------------------------------------------------------------------------------


async def test_an_unknown_outcome_is_422_naming_those_a_delivery_with_no_task_can_have(
    service: Service,
) -> None:
    response = await service.http.get(
        "/v1/deliveries", params={"outcome": "applied"}, headers=service.admin
    )
    assert response.status_code == 422
    allowed = ", ".join(TASKLESS_OUTCOMES)
    assert response.json()["message"] == f"outcome must be one of: {allowed}"


def cursor_of(*parts: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(parts))).decode()


BAD_QUERIES = {
    "limit-0": {"limit": "0"},
    "limit-too-big": {"limit": "501"},
    "limit-thousands-of-digits": {"limit": "9" * 5000},
    "since-not-a-time": {"since": "yesterday"},
    "until-past-year-9999-in-utc": {"until": "9999-12-31T23:59:59-05:00"},
    "cursor-not-base64-json": {"cursor": "!!"},
    "cursor-time-without-zone": {"cursor": cursor_of("2026-01-01T00:00:00", "12")},
    "provider-with-nul": {"provider": "open\x00ai"},
}
# Cursors the task list takes (a ref is any text), that name no delivery.
BAD_CURSORS = {
    "cursor-of-the-task-list": cursor_of("2026-01-01T00:00:00+00:00", "tl_a_task_ref"),
    "cursor-id-too-long": cursor_of("2026-01-01T00:00:00+00:00", "9" * 5000),
    "cursor-id-zero": cursor_of("2026-01-01T00:00:00+00:00", "0"),
}


@pytest.mark.parametrize("query", BAD_QUERIES.values(), ids=BAD_QUERIES)
async def test_a_bad_query_value_is_422_as_on_the_task_list(
    service: Service, query: dict[str, str]
) -> None:
    response = await service.http.get("/v1/deliveries", params=query, headers=service.admin)
    assert response.status_code == 422, response.text
    tasks = await service.http.get("/v1/tasks", params=query, headers=service.admin)
    assert tasks.status_code == 422, tasks.text


@pytest.mark.parametrize("cursor", BAD_CURSORS.values(), ids=BAD_CURSORS)
async def test_a_cursor_naming_no_delivery_is_422(service: Service, cursor: str) -> None:
    response = await service.http.get(
        "/v1/deliveries", params={"cursor": cursor}, headers=service.admin
    )
    assert response.status_code == 422, response.text
    assert response.json()["message"] == "cursor is not one this API returned"


UNKNOWN_IDS = {
    "unknown": "999999",
    "zero": "0",
    "letters": "abc",
    "negative": "-1",
    "thousands-of-digits": "9" * 5000,
    "fullwidth-digits": "\uff11\uff12",
}


@pytest.mark.parametrize("delivery_id", UNKNOWN_IDS.values(), ids=UNKNOWN_IDS)
async def test_an_unknown_delivery_is_404(service: Service, delivery_id: str) -> None:
    response = await service.http.get(f"/v1/deliveries/{delivery_id}", headers=service.admin)
    assert response.status_code == 404
    assert response.json()["message"] == "no delivery without a task has this id"


# -- who may read them ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/deliveries", "/v1/deliveries/1"])
async def test_reading_deliveries_needs_a_token(service: Service, path: str) -> None:
    assert (await service.http.get(path)).status_code == 401
    wrong = {"authorization": "Bearer not-the-token"}
    assert (await service.http.get(path, headers=wrong)).status_code == 401


async def test_a_read_key_lists_them_without_their_headers(
    service: Service, clock: FakeClock
) -> None:
    await signed(service, clock, openai_event("video_nobody"))
    for scope in ("read", "write"):
        (delivery,) = (await listed(service, await make_key(service, scope)))["deliveries"]
        assert delivery["provider_task_id"] == "video_nobody"
        assert delivery["headers"] is None
    (delivery,) = (await listed(service, await make_key(service, "admin")))["deliveries"]
    assert delivery["headers"] is not None


async def test_a_key_limited_to_an_owner_sees_no_delivery_with_no_task(
    service: Service, clock: FakeClock
) -> None:
    await signed(service, clock, openai_event("video_nobody"))
    key = await make_key(service, "read", "team-a")
    page = await listed(service, key)
    assert page == {"deliveries": [], "next_cursor": None}
    refused = await service.http.get("/v1/deliveries", params={"outcome": "x"}, headers=key)
    assert refused.status_code == 422


async def test_a_delivery_with_its_body_is_for_the_admin_scope_only(
    service: Service, clock: FakeClock
) -> None:
    await signed(service, clock, openai_event("video_nobody"))
    (delivery,) = (await listed(service))["deliveries"]
    path = f"/v1/deliveries/{delivery['id']}"
    for scope, owner in (("read", None), ("write", None), ("read", "team-a")):
        response = await service.http.get(path, headers=await make_key(service, scope, owner))
        assert response.status_code == 403, (scope, owner)
    response = await service.http.get(path, headers=await make_key(service, "admin"))
    assert response.status_code == 200
    assert orjson.loads(response.json()["body"])["data"]["id"] == "video_nobody"


# -- the description --------------------------------------------------------------------------


async def test_answers_fit_the_description(service: Service, clock: FakeClock) -> None:
    """Schemathesis over the two operations, with deliveries of every kind to list, and
    each of them asked for by its id."""
    await signed(service, clock, openai_event("video_nobody"))
    await signed(service, clock, openai_event("resp_1", kind="response.completed"))
    await signed(service, clock, b"\xff not json")
    ids = [str(d["id"]) for d in (await listed(service))["deliveries"]]
    answers = await asyncio.wait_for(asyncio.to_thread(exercise, service.base_url, ids), timeout=90)
    assert {label for label, _ in answers} == {"GET /v1/deliveries", "GET /v1/deliveries/{id}"}
    assert answers["GET /v1/deliveries/{id}", 200] >= len(ids)


def exercise(base_url: str, ids: list[str]) -> Counter[tuple[str, int]]:
    """Generated cases of the deliveries' operations, and one case of each of `ids`."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    answers: Counter[tuple[str, int]] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an invalid one raises here
        if not operation.path.startswith("/v1/deliveries"):
            continue
        check = checker(base_url, operation.path, answers)
        CASES(given(case=operation.as_strategy())(check))()
        if "{id}" in operation.path:
            for delivery_id in ids:
                check(operation.Case(path_parameters={"id": delivery_id}))
    return answers


def checker(
    base_url: str, path: str, answers: Counter[tuple[str, int]]
) -> Callable[[Case[Any]], None]:
    """Call a case as the admin: no undocumented 5xx, and an answer that fits its schema."""

    def check(case: Case[Any]) -> None:
        response = case.call(base_url=base_url, headers=ADMIN, timeout=10)
        label = f"{case.method.upper()} {path}"
        answers[label, response.status_code] += 1
        crashed = response.status_code >= 500 and not documented_503(response)
        assert not crashed, f"{label}: {response.status_code} {response.text[:300]}"
        case.validate_response(response, checks=[response_schema_conformance])

    return check
