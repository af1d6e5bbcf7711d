"""Query parameters are the ones the served description declares: an unknown one (a typo
that would filter nothing) or one given twice is a 422 naming what the route takes; the
callbacks' query stays the provider's own."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import FakeClock
from tests.support.senders import apidot_body
from tests.support.service import Service, running_service, settings_for

JSON = {"content-type": "application/json"}
CALLBACK_PATHS = {"/callbacks/{provider}/{token}", "/webhooks/{source}"}
UNKNOWN = "zz_not_a_parameter"
# A value each declared query parameter may plausibly take (any other gets "x"): the check
# runs before the route's own, so any answer but the check's 422 shows the name was taken.
PLAUSIBLE = {
    "state": "failed",
    "provider": "apidot",
    "owner": "team-a",
    "since": "2026-01-01T00:00:00Z",
    "until": "2026-01-02T00:00:00Z",
    "conflict": "true",
    "recovered": "false",
    "stuck": "true",
    "limit": "5",
    "after": "0",
    "wait": "0",
    "format": "csv",
    "outcome": "unmatched",
    "bucket_seconds": "3600",
}
READ_BY_CLIENTS = {
    *(("/v1/export", name) for name in ("owner", "stuck", "conflict", "recovered", "format")),
    *(("/v1/tasks", name) for name in ("owner", "stuck", "limit", "cursor")),
    ("/v1/changes", "wait"),
    ("/v1/dashboard/outcomes", "bucket_seconds"),
    ("/v1/endpoints/{id}/recover", "since"),
    ("/v1/tasks/{ref}/artifacts/{name}", "token"),
}
PATH_VALUES = {"id": "1", "name": "video.mp4", "msg_id": "msg_1"}


@pytest.fixture
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    async with running_service(settings_for(database_url), clock) as service:
        yield service


async def refused(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()
    assert set(error) == {"error", "message"}
    return dict(error)


def checked_operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, list[str]]]:
    """Each operation whose query is checked (every `/v1/` one, any declaring a query
    parameter, never a callback's): its method, its path template, its query names."""
    for template, item in spec["paths"].items():
        for method, operation in item.items():
            names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
            if template in CALLBACK_PATHS or not (template.startswith("/v1/") or names):
                continue
            yield method, template, names


def takes_it(answer: httpx.Response) -> bool:
    """The answer is not the query check's refusal."""
    if answer.status_code != 422:
        return True
    message = str(answer.json()["message"])
    return not message.startswith("unknown query parameter") and "given twice" not in message


async def test_a_misspelt_filter_is_refused_naming_the_ones_the_route_takes(
    service: Service,
) -> None:
    await service.register("apidot")
    answer = await service.http.get("/v1/tasks", params={"stat": "failed"}, headers=service.admin)
    assert (await refused(answer, 422))["message"] == (
        "unknown query parameter 'stat': this route takes state, provider, owner, since,"
        " until, conflict, recovered, stuck, limit, cursor"
    )


async def test_a_parameter_given_twice_is_refused_not_last_wins(service: Service) -> None:
    answer = await service.http.get("/v1/tasks?state=failed&state=succeeded", headers=service.admin)
    message = (await refused(answer, 422))["message"]
    assert message == "query parameter 'state' is given twice: give it once"


async def test_a_route_that_takes_no_query_says_so(service: Service) -> None:
    answer = await service.http.get("/v1/keys", params={"_": "1700000000"}, headers=service.admin)
    message = (await refused(answer, 422))["message"]
    assert message == "unknown query parameter '_': this route takes no query parameters"


async def test_every_declared_query_parameter_is_taken(service: Service) -> None:
    ref = (await service.register("apidot"))["ref"]
    spec = (await service.http.get("/openapi.json")).json()
    walked: set[tuple[str, str]] = set()
    for method, template, names in checked_operations(spec):
        path = template.format(ref=ref, **PATH_VALUES)
        values = {name: PLAUSIBLE.get(name, "x") for name in names}
        for name, value in values.items():
            answer = await service.http.request(
                method, path, params={name: value}, headers=service.admin
            )
            assert takes_it(answer), (method, path, name, answer.text)
            walked.add((template, name))
        if values:
            answer = await service.http.request(method, path, params=values, headers=service.admin)
            assert takes_it(answer), (method, path, answer.text)
    # What the handlers, the dashboard and the CLI send is declared (the export's filters).
    assert walked >= READ_BY_CLIENTS, READ_BY_CLIENTS - walked


async def test_every_checked_operation_refuses_an_unknown_parameter(service: Service) -> None:
    ref = (await service.register("apidot"))["ref"]
    spec = (await service.http.get("/openapi.json")).json()
    operations = list(checked_operations(spec))
    for method, template, names in operations:
        path = template.format(ref=ref, **PATH_VALUES)
        answer = await service.http.request(
            method, path, params={UNKNOWN: "1"}, headers=service.admin
        )
        takes = f"takes {', '.join(names)}" if names else "takes no query parameters"
        expected = f"unknown query parameter {UNKNOWN!r}: this route {takes}"
        assert (await refused(answer, 422))["message"] == expected, (method, path)
        assert "422" in spec["paths"][template][method]["responses"], (method, template)
    assert len(operations) >= 25


async def test_a_refused_query_runs_nothing(service: Service) -> None:
    body = {"provider": "apidot", "owner": "team-a"}
    answer = await service.http.post(
        "/v1/tasks", params={"submit": "true"}, json=body, headers=service.admin
    )
    assert (await refused(answer, 422))["message"].startswith("unknown query parameter 'submit'")
    listed = await service.http.get("/v1/tasks", headers=service.admin)
    assert listed.json()["tasks"] == []


async def test_the_export_takes_the_filters_the_task_list_takes(service: Service) -> None:
    await service.register("apidot", owner="team-a")
    kept = await service.register("apidot", owner="team-b")
    params = {"owner": "team-b", "stuck": "true", "conflict": "false", "recovered": "false"}
    answer = await service.http.get("/v1/export", params=params, headers=service.admin)
    assert answer.status_code == 200, answer.text
    assert [json.loads(line)["ref"] for line in answer.text.splitlines()] == [kept["ref"]]


async def test_a_callback_keeps_taking_the_providers_own_query(service: Service) -> None:
    task = await service.register("apidot", provider_task_id="t-query")
    path = urlsplit(task["callback_url"]).path
    answer = await service.http.post(
        f"{path}?sig=abc&sig=def&provider_extra=1",
        content=apidot_body("t-query", "running", 40),
        headers=JSON,
    )
    assert answer.status_code == 200, answer.text
    assert (await service.task(task["ref"]))["state"] == "running"


# Times at the ends of what a datetime holds, alone and together: arithmetic on them (a
# default window taken off `until`, an offset taken off year 1) overflows.
EDGE_TIMES = [
    {"until": "0001-01-01T00:00:00Z"},
    {"until": "0001-01-01T00:00:00-23:59"},
    {"since": "0001-01-01T00:00:00+23:59"},
    {"since": "9999-12-31T23:59:59-23:59"},
    {"until": "9999-12-31T23:59:59+23:59"},
    {"since": "0001-01-01T00:00:00Z", "until": "9999-12-31T23:59:59Z"},
]


async def test_times_at_the_ends_of_the_calendar_get_an_answer_not_an_error(
    service: Service, subtests: pytest.Subtests
) -> None:
    """Every route taking `since` or `until` answers them with 200 or a 422 that says why."""
    await service.register("apidot")
    spec = (await service.http.get("/openapi.json")).json()
    for method, template, names in checked_operations(spec):
        if "{" in template or not {"since", "until"} & set(names):
            continue
        for times in EDGE_TIMES:
            params = {k: v for k, v in times.items() if k in names}
            with subtests.test(route=f"{method} {template}", **params):
                answer = await service.http.request(
                    method, template, params=params, headers=service.admin
                )
                assert answer.status_code in (200, 422), answer.text
                if answer.status_code == 422:
                    assert answer.json()["error"] == "invalid"
