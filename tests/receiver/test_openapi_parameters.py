"""The query parameters `/openapi.json` describes take what their validators take: each
word of an enum, each bound of a number, a date-time; past a bound, another word or another
text is refused (422). Both are derived from the same constants, so this holds as they move.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from receiver.contract import MAX_PAGE, MAX_WAIT_SECONDS
from schemas.states import State
from schemas.store.queries import TASKLESS_OUTCOMES
from tests.conftest import FakeClock
from tests.support.service import Service, running_service, settings_for

A_TIME = "2026-01-01T00:00:00Z"


@pytest.fixture
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    async with running_service(settings_for(database_url), clock) as service:
        await service.register("apidot")  # a change: `/v1/changes` answers without waiting
        yield service


def typed_parameters(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Each GET route of no path parameter, each of its query parameters described by more
    than a type: its path, its name, its schema."""
    for path, item in spec["paths"].items():
        if "{" in path or "get" not in item:
            continue
        for parameter in item["get"].get("parameters", []):
            schema = parameter["schema"]
            if parameter["in"] == "query" and set(schema) - {"type"}:
                yield path, parameter["name"], schema


def taken_and_refused(schema: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Values the schema allows, and values just outside it."""
    if "enum" in schema:
        return list(schema["enum"]), [f"not-{schema['enum'][0]}", schema["enum"][0].upper() + "!"]
    if schema.get("format") == "date-time":
        return [A_TIME], ["yesterday"]
    low, high = schema["minimum"], schema["maximum"]
    past = 1 if schema["type"] == "integer" else 0.5
    return [str(low), str(high)], [str(low - past), str(high + past)]


async def test_every_typed_query_parameter_takes_what_it_is_described_to(
    service: Service, subtests: pytest.Subtests
) -> None:
    spec = (await service.http.get("/openapi.json")).json()
    typed = list(typed_parameters(spec))
    for path, name, schema in typed:
        taken, refused = taken_and_refused(schema)
        for value, status in [*((v, 200) for v in taken), *((v, 422) for v in refused)]:
            with subtests.test(path=path, name=name, value=value):
                answer = await service.http.get(path, params={name: value}, headers=service.admin)
                assert answer.status_code == status, answer.text
                if status == 422:
                    assert answer.json()["message"].startswith(name)
    described = {(path, name) for path, name, _ in typed}
    assert described >= {
        ("/v1/tasks", "state"),
        ("/v1/tasks", "conflict"),
        ("/v1/tasks", "limit"),
        ("/v1/tasks", "since"),
        ("/v1/deliveries", "outcome"),
        ("/v1/export", "format"),
        ("/v1/changes", "after"),
        ("/v1/changes", "wait"),
    }


async def test_the_bounds_and_words_are_those_the_validators_read(service: Service) -> None:
    spec = (await service.http.get("/openapi.json")).json()
    schemas = {(path, name): schema for path, name, schema in typed_parameters(spec)}
    assert schemas["/v1/tasks", "limit"] == {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}
    assert schemas["/v1/changes", "wait"]["maximum"] == MAX_WAIT_SECONDS
    assert schemas["/v1/tasks", "state"]["enum"] == [state.value for state in State]
    assert schemas["/v1/deliveries", "outcome"]["enum"] == list(TASKLESS_OUTCOMES)
    assert schemas["/v1/tasks", "since"] == {"type": "string", "format": "date-time"}
