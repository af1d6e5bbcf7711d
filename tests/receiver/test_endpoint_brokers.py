"""Broker endpoint URLs (nats://, amqp(s)://) at registration: their host is checked against
the notify address policy as a webhook's is, a literal address at once, a name by every
address it resolves to; refused with the same 422 a webhook URL gets."""

from __future__ import annotations

import socket
from ipaddress import ip_network
from typing import Any

import pytest

from schemas.settings import NotifySettings
from tests.conftest import FakeClock
from tests.support.service import Service, running_service, settings_for

# Names the tests' resolver answers, instead of the DNS.
FAKE_DNS = {
    "bus.product.example": "93.184.216.34",
    "bus.internal.example": "10.1.2.3",
    "bus.metadata.example": "169.254.169.254",
}
NOWHERE = "bus.nowhere.example"
PRIVATE = NotifySettings(allowed_networks=(ip_network("10.0.0.0/8"),))
LINK_LOCAL = NotifySettings(allowed_networks=(ip_network("169.254.0.0/16"),))


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == NOWHERE:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if host in FAKE_DNS:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (FAKE_DNS[host], port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)


async def post(service: Service, url: str) -> tuple[int, dict[str, Any]]:
    response = await service.http.post("/v1/endpoints", json={"url": url}, headers=service.admin)
    return response.status_code, dict(response.json())


# (case, URL, what the refusal says): each would lead inside, or nowhere.
INSIDE = [
    (
        "nats-metadata",
        "nats://169.254.169.254:4222/x",
        "169.254.169.254 is a cloud metadata address",
    ),
    ("nats-metadata-ipv4-mapped", "nats://[::ffff:169.254.169.254]/x", "cloud metadata address"),
    ("nats-private", "nats://10.0.0.5:4222/x", "10.0.0.5 is not a public address"),
    ("nats-loopback", "nats://127.0.0.1:4222/x", "127.0.0.1 is not a public address"),
    ("nats-localhost", "nats://localhost:6379/x", "is not a public address"),
    (
        "nats-name-resolving-private",
        "nats://relay:s3cret@bus.internal.example/x",
        "10.1.2.3 is not a public address",
    ),
    ("nats-name-resolving-metadata", "nats://bus.metadata.example/x", "cloud metadata address"),
    (
        "amqp-loopback",
        "amqp://u:s3cret@127.0.0.1:5672/%2f?exchange=x&routing_key=y",
        "127.0.0.1 is not a",
    ),
    ("amqps-ipv6-loopback", "amqps://[::1]/?exchange=x", "::1 is not a public address"),
    ("amqp-private", "amqp://192.168.1.20/?exchange=x", "192.168.1.20 is not a public address"),
    (
        "amqps-name-resolving-private",
        "amqps://bus.internal.example/prod?exchange=x",
        "10.1.2.3 is not a public address",
    ),
    ("nats-unresolvable", f"nats://{NOWHERE}/x", f"{NOWHERE} does not resolve"),
]


@pytest.mark.usefixtures("fake_dns")
async def test_a_broker_url_that_would_lead_inside_is_422(
    strict: Service, subtests: pytest.Subtests
) -> None:
    for case, url, why in INSIDE:
        with subtests.test(case=case):
            status, answer = await post(strict, url)
            assert status == 422
            assert why in answer["message"]
            assert "s3cret" not in str(answer)
    listed = await strict.http.get("/v1/endpoints", headers=strict.admin)
    assert listed.json()["endpoints"] == []  # none of them was taken


async def test_a_broker_url_is_refused_as_a_webhook_url_to_the_same_address(
    strict: Service,
) -> None:
    webhook = await post(strict, "https://127.0.0.1/hook")
    for url in ("nats://127.0.0.1:4222/x", "amqps://127.0.0.1/?exchange=x"):
        assert await post(strict, url) == webhook


@pytest.mark.usefixtures("fake_dns")
async def test_a_broker_url_resolving_to_a_public_address_is_taken(
    strict: Service, subtests: pytest.Subtests
) -> None:
    for url in (
        "nats://relay:pw@bus.product.example:4222/taskledger.events",
        "amqps://bus.product.example/?exchange=x",
    ):
        with subtests.test(scheme=url.partition(":")[0]):
            status, created = await post(strict, url)
            assert status == 201, created


@pytest.mark.usefixtures("fake_dns")
async def test_a_private_broker_is_taken_when_its_network_is_allowed(
    database_url: str, clock: FakeClock, subtests: pytest.Subtests
) -> None:
    private = {
        "nats-literal": "nats://10.0.0.5:4222/x",
        "nats-name": "nats://bus.internal.example/x",
        "amqp-literal": "amqp://u:p@10.9.8.7:5672/%2f?exchange=x&routing_key=y",
    }
    async with running_service(settings_for(database_url, notify=PRIVATE), clock) as service:
        for case, url in private.items():
            with subtests.test(case=case):
                status, created = await post(service, url)
                assert status == 201, created


@pytest.mark.usefixtures("fake_dns")
async def test_the_metadata_address_is_refused_for_a_broker_even_inside_an_allowed_network(
    database_url: str, clock: FakeClock
) -> None:
    async with running_service(settings_for(database_url, notify=LINK_LOCAL), clock) as service:
        allowed, _ = await post(service, "nats://169.254.10.10/x")
        refused = [
            await post(service, url)
            for url in ("nats://169.254.169.254/x", "amqp://bus.metadata.example/?exchange=x")
        ]
    assert allowed == 201
    for status, answer in refused:
        assert (status, "cloud metadata address" in answer["message"]) == (422, True)


async def test_patch_checks_a_new_broker_url(database_url: str, clock: FakeClock) -> None:
    async with running_service(settings_for(database_url, notify=PRIVATE), clock) as service:
        status, created = await post(service, "nats://10.0.0.5:4222/x")
        path = f"/v1/endpoints/{created['id']}"
        moved = await service.http.patch(
            path, json={"url": "amqp://127.0.0.1/?exchange=x"}, headers=service.admin
        )
        kept = (await service.http.get(path, headers=service.admin)).json()
    assert status == 201
    assert moved.status_code == 422
    assert "127.0.0.1 is not a public address" in moved.json()["message"]
    assert kept["url"] == "nats://10.0.0.5:4222/x"
