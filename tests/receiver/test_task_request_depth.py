"""A task's `request` is refused (422) when it nests deeper than the ledger can write,
instead of failing the write as "storage unavailable" (503, retried for ever)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from receiver.contract import REQUEST_MAX_DEPTH
from tests.conftest import FakeClock
from tests.support.service import Service, running_service, settings_for


@pytest.fixture
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    async with running_service(settings_for(database_url), clock) as service:
        yield service


def nested(depth: int) -> str:
    """A JSON object `depth` levels deep (the request itself is the first level)."""
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize("depth", [REQUEST_MAX_DEPTH + 1, 255])
async def test_a_request_nested_too_deep_is_refused(service: Service, depth: int) -> None:
    body = '{"provider": "apidot", "owner": "o", "model": "m", "request": ' + nested(depth) + "}"
    response = await service.http.post(
        "/v1/tasks", content=body, headers={**service.admin, "content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert f"at most {REQUEST_MAX_DEPTH} levels" in response.json()["message"]


async def test_a_request_at_the_limit_is_kept_whole(service: Service) -> None:
    body = '{"provider": "apidot", "request": ' + nested(REQUEST_MAX_DEPTH) + "}"
    response = await service.http.post(
        "/v1/tasks", content=body, headers={**service.admin, "content-type": "application/json"}
    )
    assert response.status_code == 201, response.text
    shown = await service.task(response.json()["ref"])
    assert shown["request"] == response.json()["request"]
    inner, levels = shown["request"], 0
    while isinstance(inner, dict):
        inner, levels = inner["a"], levels + 1
    assert levels == REQUEST_MAX_DEPTH
