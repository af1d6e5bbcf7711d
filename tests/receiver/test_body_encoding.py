"""An API body is read as sent: one with a Content-Encoding other than identity (gzip, br)
is a 415 saying to send it uncompressed, not a 400 calling valid JSON malformed. A
provider's callback body is kept as it came, whatever its encoding."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from tests.conftest import FakeClock
from tests.support.senders import apidot_body
from tests.support.service import Service, running_service, settings_for

JSON = {"content-type": "application/json"}
# (method, path with `{ref}` for a registered task's, body): every kind of API body read.
ROUTES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "register": ("POST", "/v1/tasks", {"provider": "apidot", "owner": "team-a"}),
    "attach": ("PATCH", "/v1/tasks/{ref}", {"provider_task_id": "t-1"}),
    "key": ("POST", "/v1/keys", {"name": "k", "scope": "read"}),
    "endpoint": ("POST", "/v1/endpoints", {"url": "https://hooks.example.com/in"}),
    "rotate": ("POST", "/v1/endpoints/ep_none/rotate", {"grace_seconds": 60}),
}
CODINGS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "gzip": ("gzip", gzip.compress),
    "deflate": ("deflate", zlib.compress),
    "gzip-after-identity": ("identity, gzip", gzip.compress),
}


@pytest.fixture
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    async with running_service(settings_for(database_url), clock) as service:
        yield service


async def send(
    service: Service, route: tuple[str, str, dict[str, Any]], body: bytes, coding: str
) -> Any:
    method, path, _ = route
    ref = (await service.register("apidot"))["ref"]
    headers = service.admin | JSON | {"content-encoding": coding}
    return await service.http.request(method, path.format(ref=ref), content=body, headers=headers)


@pytest.mark.parametrize("route", ROUTES.values(), ids=ROUTES)
@pytest.mark.parametrize("coding", CODINGS.values(), ids=CODINGS)
async def test_a_compressed_body_is_415_saying_to_send_it_uncompressed(
    service: Service,
    route: tuple[str, str, dict[str, Any]],
    coding: tuple[str, Callable[[bytes], bytes]],
) -> None:
    name, compress = coding
    answer = await send(service, route, compress(orjson.dumps(route[2])), name)
    assert answer.status_code == 415, answer.text
    assert answer.json()["error"] == "compressed"
    assert answer.json()["message"].startswith("the body must be sent uncompressed")


async def test_a_compressed_registration_registers_nothing(service: Service) -> None:
    body = gzip.compress(orjson.dumps(ROUTES["register"][2]))
    headers = service.admin | JSON | {"content-encoding": "gzip"}
    answer = await service.http.post("/v1/tasks", content=body, headers=headers)
    assert answer.status_code == 415, answer.text
    listed = await service.http.get("/v1/tasks", headers=service.admin)
    assert listed.json()["tasks"] == []


@pytest.mark.parametrize("coding", ["identity", "IDENTITY", ""], ids=["identity", "upper", "empty"])
async def test_a_body_said_to_be_identity_is_read(service: Service, coding: str) -> None:
    body = orjson.dumps(ROUTES["register"][2])
    answer = await send(service, ROUTES["register"], body, coding)
    assert answer.status_code == 201, answer.text


async def test_a_compressed_callback_is_kept_as_it_came(service: Service) -> None:
    task = await service.register("apidot", provider_task_id="t-gz")
    path = urlsplit(task["callback_url"]).path
    body = gzip.compress(apidot_body("t-gz", "running", 40))
    headers = JSON | {"content-encoding": "gzip"}
    answer = await service.http.post(path, content=body, headers=headers)
    assert answer.status_code in (200, 202), answer.text
    assert answer.json()["outcome"] == "unrecognized"
