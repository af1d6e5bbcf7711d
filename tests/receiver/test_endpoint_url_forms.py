"""An endpoint URL whose host ends in a number must be an address written a.b.c.d: other
forms (a bare number, hex, octal, fewer parts, a leading zero) are read as different
addresses by different parsers, the way past address checks, and the relay's HTTP client
never connects to the all-decimal ones. They are refused when the endpoint is made or
changed, whatever the address policy allows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from ipaddress import ip_network

import pytest

from schemas.settings import NotifySettings
from tests.conftest import FakeClock
from tests.support.service import Service, running_service, settings_for

# Loopback allowed, over plain HTTP: without the host check, these were all made.
LOOPBACK = NotifySettings(allow_http=True, allowed_networks=(ip_network("127.0.0.0/8"),))
LOOPBACK_FORMS = {
    "decimal": "http://2130706433/hook",
    "hex": "http://0x7f.1/hook",
    "octal": "http://017700000001/hook",
    "short": "http://127.1/hook",
    "leading-zero": "http://0127.0.0.1/hook",
    "trailing-dot": "http://127.0.0.1./hook",
    "nats-decimal": "nats://2130706433:4222/taskledger.events",
}
# Public addresses (8.8.8.8) the default policy let through in these forms.
PUBLIC_FORMS = {
    "decimal": "https://134744072/hook",
    "octal-first-part": "https://010.8.8.8/hook",
    "hex-parts": "https://0x8.0x8.0x8.0x8/hook",
}
SAYS = "ends in a number but is not an address written a.b.c.d"


@pytest.fixture
async def loopback(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    async with running_service(settings_for(database_url, notify=LOOPBACK), clock) as service:
        yield service


async def refused_url(service: Service, method: str, path: str, url: str) -> str:
    answer = await service.http.request(method, path, json={"url": url}, headers=service.admin)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "invalid"
    return str(answer.json()["message"])


async def endpoint_urls(service: Service) -> list[str]:
    listed = await service.http.get("/v1/endpoints", headers=service.admin)
    return [endpoint["url"] for endpoint in listed.json()["endpoints"]]


@pytest.mark.parametrize("url", LOOPBACK_FORMS.values(), ids=LOOPBACK_FORMS)
async def test_a_numeric_host_in_another_form_is_refused_at_creation(
    loopback: Service, url: str
) -> None:
    message = await refused_url(loopback, "POST", "/v1/endpoints", url)
    assert message.startswith("url refused: an endpoint URL's host")
    assert SAYS in message
    assert await endpoint_urls(loopback) == []


@pytest.mark.parametrize("url", PUBLIC_FORMS.values(), ids=PUBLIC_FORMS)
async def test_a_public_address_in_another_form_is_refused_too(strict: Service, url: str) -> None:
    assert SAYS in await refused_url(strict, "POST", "/v1/endpoints", url)
    assert await endpoint_urls(strict) == []


async def test_a_url_changed_to_such_a_host_is_refused_and_kept(loopback: Service) -> None:
    made = await loopback.http.post(
        "/v1/endpoints", json={"url": "http://127.0.0.1:9/hook"}, headers=loopback.admin
    )
    assert made.status_code == 201, made.text
    path = f"/v1/endpoints/{made.json()['id']}"
    assert SAYS in await refused_url(loopback, "PATCH", path, "http://2130706433:9/hook")
    assert await endpoint_urls(loopback) == ["http://127.0.0.1:9/hook"]


WRITTEN_PLAINLY = {
    "dotted-quad": "http://127.0.0.1:9/hook",
    "ipv4-mapped-ipv6": "http://[::ffff:127.0.0.1]:9/hook",
}


@pytest.mark.parametrize("url", WRITTEN_PLAINLY.values(), ids=WRITTEN_PLAINLY)
async def test_an_address_written_plainly_is_made(loopback: Service, url: str) -> None:
    answer = await loopback.http.post("/v1/endpoints", json={"url": url}, headers=loopback.admin)
    assert answer.status_code == 201, answer.text
    assert await endpoint_urls(loopback) == [url]
