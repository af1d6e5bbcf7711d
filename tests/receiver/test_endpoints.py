"""The notification endpoints of the admin API on both backends: created with a secret shown
once, read without it, changed, rotated with a grace, refused where they would lead inside,
and what failed sent again; the audit and a task's timeline tell how notifications go."""

from __future__ import annotations

import base64
import re
import socket
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from ipaddress import ip_network
from typing import Any

import pytest

from schemas.ledger import Poll
from schemas.settings import NotifySettings
from schemas.states import State
from schemas.store import AttemptResult, LedgerStore
from schemas.wire import Observation
from tests.conftest import FakeClock
from tests.support.service import Service, running_service, settings_for

LOOPBACK = NotifySettings(allow_http=True, allowed_networks=(ip_network("127.0.0.1/32"),))
HOOK = "http://127.0.0.1:9/hook"
NATS = "nats://relay:s3cret-pass@127.0.0.1:4222/taskledger.events"
DAY = timedelta(days=1)
SECRET = re.compile(r"whsec_[A-Za-z0-9+/]{43}=")
# Names the tests' resolver answers, instead of the DNS.
FAKE_DNS = {"hooks.product.example": "93.184.216.34", "hooks.internal.example": "10.1.2.3"}


@pytest.fixture
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    """A service that may send to loopback over plain HTTP (as the tests' consumers listen)."""
    async with running_service(settings_for(database_url, notify=LOOPBACK), clock) as service:
        yield service


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in FAKE_DNS:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (FAKE_DNS[host], port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)


async def create(service: Service, **fields: Any) -> dict[str, Any]:
    response = await service.http.post(
        "/v1/endpoints", json={"url": HOOK, **fields}, headers=service.admin
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def refusal(service: Service, method: str, path: str, body: Any) -> tuple[int, str]:
    response = await service.http.request(method, path, json=body, headers=service.admin)
    return response.status_code, str(response.json()["message"])


async def stored_secrets(store: LedgerStore, endpoint_id: str) -> list[dict[str, Any]]:
    endpoint = await store.endpoint(endpoint_id)
    assert endpoint is not None
    return endpoint.secrets


# -- create, read, change, delete ---------------------------------------------------------


async def test_create_answers_the_endpoint_and_its_secret(service: Service) -> None:
    created = await create(service, description="product", event_types=["task.succeeded"])
    assert SECRET.fullmatch(created["secret"])
    assert len(base64.b64decode(created["secret"].removeprefix("whsec_"))) == 32
    assert created["id"].startswith("ep_")
    assert (created["kind"], created["url"], created["enabled"]) == ("http", HOOK, True)
    assert created["event_types"] == ["task.succeeded"]
    assert created["providers"] is None


async def test_the_secret_is_shown_once_and_never_again(
    service: Service, store: LedgerStore
) -> None:
    created = await create(service)
    secret = created["secret"]
    assert await stored_secrets(store, created["id"]) == [{"secret": secret, "expires_at": None}]
    listed = await service.http.get("/v1/endpoints", headers=service.admin)
    shown = await service.http.get(f"/v1/endpoints/{created['id']}", headers=service.admin)
    for answer in (listed, shown):
        assert answer.status_code == 200
        assert secret[len("whsec_") + 4 :] not in answer.text
    assert shown.json()["secrets"] == [{"prefix": secret[:10] + "…", "expires_at": None}]
    assert "secret" not in shown.json()


async def test_a_broker_url_names_its_kind_and_its_credentials_are_never_shown(
    service: Service, subtests: pytest.Subtests
) -> None:
    brokers = {
        "nats": (NATS, "nats", "nats://127.0.0.1:4222/taskledger.events"),
        "amqps": (
            "amqps://relay:s3cret-pass@127.0.0.1/%2F?exchange=events",
            "amqp",
            "amqps://127.0.0.1/%2F?exchange=events",
        ),
    }
    for case, (url, kind, shown) in brokers.items():
        with subtests.test(case=case):
            created = await create(service, url=url)
            listed = await service.http.get("/v1/endpoints", headers=service.admin)
            assert (created["kind"], created["url"]) == (kind, shown)
            assert "s3cret-pass" not in listed.text
            assert "s3cret-pass" not in str(created)


async def test_list_and_show_carry_dispatch_counts_and_recent_failures(
    service: Service, store: LedgerStore, clock: FakeClock
) -> None:
    created = await create(service)
    await failed_events(service, store, clock)
    body = (await service.http.get("/v1/endpoints", headers=service.admin)).json()
    (listed,) = body["endpoints"]
    shown = (await service.http.get(f"/v1/endpoints/{created['id']}", headers=service.admin)).json()
    assert listed["health"]["dispatches"] == {"pending": 0, "delivered": 0, "failed": 2}
    assert shown["health"] == listed["health"]
    failure = shown["health"]["recent_failures"][0]
    assert (failure["status_code"], failure["error"]) == (500, "HTTP 500")


async def test_patch_changes_filters_and_description(service: Service) -> None:
    created = await create(service)
    changes = {
        "description": "only ends",
        "event_types": ["task.succeeded", "task.failed"],
        "providers": ["apidot"],
        "owners": ["team-a"],
        "include_unconfirmed": True,
    }
    response = await service.http.patch(
        f"/v1/endpoints/{created['id']}", json=changes, headers=service.admin
    )
    assert response.status_code == 200, response.text
    assert {name: response.json()[name] for name in changes} == changes


async def test_patch_checks_a_new_url_again(service: Service) -> None:
    created = await create(service)
    path = f"/v1/endpoints/{created['id']}"
    status, message = await refusal(service, "PATCH", path, {"url": "http://10.0.0.7/hook"})
    assert status == 422
    assert "not a public address" in message
    moved = await service.http.patch(path, json={"url": NATS}, headers=service.admin)
    assert (moved.json()["kind"], moved.json()["url"]) == (
        "nats",
        "nats://127.0.0.1:4222/taskledger.events",
    )


async def test_disabling_records_the_operator_and_enabling_clears_it(service: Service) -> None:
    created = await create(service)
    path = f"/v1/endpoints/{created['id']}"
    disabled = (
        await service.http.patch(path, json={"enabled": False}, headers=service.admin)
    ).json()
    assert (disabled["enabled"], disabled["disabled_reason"]) == (False, "disabled by an operator")
    assert disabled["disabled_at"] is not None
    enabled = (await service.http.patch(path, json={"enabled": True}, headers=service.admin)).json()
    assert (enabled["enabled"], enabled["disabled_reason"], enabled["disabled_at"]) == (
        True,
        None,
        None,
    )


async def test_an_endpoint_created_disabled_says_who_disabled_it(service: Service) -> None:
    created = await create(service, enabled=False)
    assert (created["enabled"], created["disabled_reason"]) == (False, "disabled by an operator")


async def test_delete_answers_204_then_the_endpoint_is_gone(service: Service) -> None:
    created = await create(service)
    path = f"/v1/endpoints/{created['id']}"
    assert (await service.http.delete(path, headers=service.admin)).status_code == 204
    assert (await service.http.get(path, headers=service.admin)).status_code == 404
    assert (await service.http.delete(path, headers=service.admin)).status_code == 404


async def test_an_unknown_id_is_404(service: Service, subtests: pytest.Subtests) -> None:
    routes = {
        "show": ("GET", "/v1/endpoints/ep_missing"),
        "patch": ("PATCH", "/v1/endpoints/ep_missing"),
        "rotate": ("POST", "/v1/endpoints/ep_missing/rotate"),
        "recover": ("POST", "/v1/endpoints/ep_missing/recover?since=2025-01-01T00:00:00Z"),
        "retry": ("POST", "/v1/messages/msg_missing/retry"),
    }
    for case, (method, path) in routes.items():
        with subtests.test(case=case):
            body = {"description": "x"} if method == "PATCH" else None
            response = await service.http.request(method, path, json=body, headers=service.admin)
            assert response.status_code == 404


async def test_every_endpoint_route_needs_the_admin_token(
    service: Service, subtests: pytest.Subtests
) -> None:
    routes = [
        ("POST", "/v1/endpoints"),
        ("GET", "/v1/endpoints"),
        ("PATCH", "/v1/endpoints/ep_1"),
        ("DELETE", "/v1/endpoints/ep_1"),
        ("POST", "/v1/endpoints/ep_1/rotate"),
        ("POST", "/v1/messages/msg_1/retry"),
    ]
    for method, path in routes:
        with subtests.test(route=f"{method} {path}"):
            response = await service.http.request(method, path, json={"url": HOOK})
            assert response.status_code == 401


# -- rotation ------------------------------------------------------------------------------


async def test_rotation_keeps_the_old_secret_signing_until_its_grace_ends(
    service: Service, store: LedgerStore, clock: FakeClock
) -> None:
    created = await create(service)
    path = f"/v1/endpoints/{created['id']}/rotate"
    rotated = await service.http.post(path, json={"grace_seconds": 3600}, headers=service.admin)
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["secret"]
    assert SECRET.fullmatch(new)
    assert new != created["secret"]
    until = (clock() + timedelta(hours=1)).isoformat()
    assert await stored_secrets(store, created["id"]) == [
        {"secret": new, "expires_at": None},
        {"secret": created["secret"], "expires_at": until},
    ]
    assert [s["expires_at"] for s in rotated.json()["secrets"]] == [None, until]
    endpoint = await store.endpoint(created["id"])
    assert endpoint is not None
    assert endpoint.signing_secrets(clock()) == [new, created["secret"]]
    assert endpoint.signing_secrets(clock() + timedelta(seconds=3601)) == [new]


async def test_a_secret_past_its_grace_is_dropped_at_the_next_rotation(
    service: Service, store: LedgerStore, clock: FakeClock
) -> None:
    created = await create(service)
    path = f"/v1/endpoints/{created['id']}/rotate"
    second = (
        await service.http.post(path, json={"grace_seconds": 60}, headers=service.admin)
    ).json()
    clock.advance(61)
    third = (await service.http.post(path, headers=service.admin)).json()  # no body: a day
    assert await stored_secrets(store, created["id"]) == [
        {"secret": third["secret"], "expires_at": None},
        {"secret": second["secret"], "expires_at": (clock() + DAY).isoformat()},
    ]


async def test_rotation_refuses_a_bad_grace(service: Service, subtests: pytest.Subtests) -> None:
    created = await create(service)
    path = f"/v1/endpoints/{created['id']}/rotate"
    for grace in (-1, "soon", 10**9):
        with subtests.test(grace=grace):
            status, message = await refusal(service, "POST", path, {"grace_seconds": grace})
            assert status == 422
            assert "grace_seconds" in message


# -- refused URLs, filters and fields -------------------------------------------------------


# (case, URL, what the refusal says): each would lead inside, or nowhere.
REFUSED_URLS: list[tuple[str, Any, str]] = [
    ("http", "http://93.184.216.34/hook", "scheme 'http' is not allowed"),
    ("loopback", "https://127.0.0.1/hook", "127.0.0.1 is not a public address"),
    ("metadata", "https://169.254.169.254/latest/meta-data", "cloud metadata address"),
    ("localhost", "https://localhost/hook", "not a public address"),
    ("resolves-private", "https://hooks.internal.example/hook", "10.1.2.3 is not a public address"),
    ("userinfo", "https://user:pw@hooks.product.example/hook", "userinfo"),
    ("port-zero", "https://93.184.216.34:0/hook", "port is not a number from 1 to 65535"),
    ("ftp", "ftp://hooks.product.example/hook", "scheme 'ftp'"),
    ("nats-no-subject", "nats://127.0.0.1:4222", "needs a subject"),
    ("amqp-no-exchange", "amqp://127.0.0.1/", "needs ?exchange="),
    ("spaces", "not a url", "spaces"),
    ("empty", "", "url must be a string"),
    ("number", 42, "url must be a string"),
]


@pytest.mark.usefixtures("fake_dns")
async def test_a_url_that_would_lead_inside_or_nowhere_is_422(
    strict: Service, subtests: pytest.Subtests
) -> None:
    for case, url, why in REFUSED_URLS:
        with subtests.test(case=case):
            status, message = await refusal(strict, "POST", "/v1/endpoints", {"url": url})
            assert status == 422
            assert why in message
    listed = await strict.http.get("/v1/endpoints", headers=strict.admin)
    assert listed.json()["endpoints"] == []  # none of them was taken


@pytest.mark.usefixtures("fake_dns")
async def test_an_https_url_resolving_to_a_public_address_is_taken(strict: Service) -> None:
    created = await create(strict, url="https://hooks.product.example/taskledger")
    assert created["kind"] == "http"


async def test_the_metadata_address_is_refused_even_inside_an_allowed_network(
    database_url: str, clock: FakeClock
) -> None:
    notify = NotifySettings(allow_http=True, allowed_networks=(ip_network("169.254.0.0/16"),))
    async with running_service(settings_for(database_url, notify=notify), clock) as service:
        allowed = await create(service, url="http://169.254.10.10/hook")
        status, message = await refusal(
            service, "POST", "/v1/endpoints", {"url": "http://169.254.169.254/hook"}
        )
    assert allowed["kind"] == "http"
    assert (status, "cloud metadata address" in message) == (422, True)


# (case, fields beside a good URL, what the refusal names).
BAD_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown-event", {"event_types": ["task.exploded"]}, "event_types: unknown 'task.exploded'"),
    ("empty-events", {"event_types": []}, "event_types must be null"),
    ("events-not-a-list", {"event_types": "task.succeeded"}, "event_types must be null"),
    ("unknown-provider", {"providers": ["nope"]}, "providers: unknown 'nope'"),
    ("empty-owner", {"owners": [""]}, "owners must be null"),
    ("owner-not-text", {"owners": [1]}, "owners must be null"),
    (
        "unconfirmed-not-bool",
        {"include_unconfirmed": "yes"},
        "include_unconfirmed must be true or false",
    ),
    ("enabled-not-bool", {"enabled": 1}, "enabled must be true or false"),
    ("description-not-text", {"description": 5}, "description must be a string"),
    ("description-too-long", {"description": "x" * 201}, "description must be a string"),
]


async def test_a_bad_field_is_422_naming_it(service: Service, subtests: pytest.Subtests) -> None:
    for case, fields, named in BAD_FIELDS:
        with subtests.test(case=case):
            body = {"url": HOOK, **fields}
            status, message = await refusal(service, "POST", "/v1/endpoints", body)
            assert status == 422
            assert named in message
    listed = await service.http.get("/v1/endpoints", headers=service.admin)
    assert listed.json()["endpoints"] == []  # none of them was taken


async def test_unknown_fields_are_400_naming_them(service: Service) -> None:
    body = {"url": HOOK, "secret": "whsec_mine", "colour": "red"}
    status, message = await refusal(service, "POST", "/v1/endpoints", body)
    assert status == 400
    assert "'colour', 'secret'" in message


async def test_patch_refuses_fields_it_cannot_change(service: Service) -> None:
    created = await create(service)
    path = f"/v1/endpoints/{created['id']}"
    assert await refusal(service, "PATCH", path, {"kind": "nats"}) == (
        400,
        "unknown field(s): 'kind'; allowed: url, description, providers, owners, event_types,"
        " include_unconfirmed, enabled",
    )
    assert (await refusal(service, "PATCH", path, {}))[0] == 422


async def test_a_missing_url_is_422(service: Service) -> None:
    assert await refusal(service, "POST", "/v1/endpoints", {"description": "x"}) == (
        422,
        "url is required",
    )


async def test_a_body_that_is_not_json_is_400(service: Service) -> None:
    response = await service.http.post(
        "/v1/endpoints",
        content=b"{url",
        headers={**service.admin, "content-type": "application/json"},
    )
    assert response.status_code == 400


# -- sending again ------------------------------------------------------------------------


def polled(ref: str, state: State, clock: FakeClock) -> Poll:
    observation = Observation("t-1", state, 100 if state is State.SUCCEEDED else 10)
    return Poll(ref, clock(), None, observation=observation, http_status=200, body="{}")


async def failed_events(service: Service, store: LedgerStore, clock: FakeClock) -> str:
    """A task that ran and succeeded; both its events failed at every endpoint."""
    task = await service.register("apidot", provider_task_id="t-1")
    await store.ingest([polled(task["ref"], State.RUNNING, clock)])
    clock.advance(10)
    await store.ingest([polled(task["ref"], State.SUCCEEDED, clock)])
    await store.fan_out(10)
    for job in await store.claim_dispatches("relay", 10, 30):
        await store.record_dispatch(
            job, "relay", AttemptResult(False, 500, 12.5, "oops", "HTTP 500"), DAY
        )
    return str(task["ref"])


async def test_recover_requeues_what_failed_since_a_time(
    service: Service, store: LedgerStore, clock: FakeClock
) -> None:
    created = await create(service)
    started = clock()
    await failed_events(service, store, clock)
    path = f"/v1/endpoints/{created['id']}/recover"
    since = (started + timedelta(seconds=5)).isoformat()
    response = await service.http.post(path, params={"since": since}, headers=service.admin)
    assert (response.status_code, response.json()) == (200, {"requeued": 1})
    (job,) = await store.claim_dispatches("relay", 10, 30)
    assert job.event_type == "task.succeeded"


async def test_recover_needs_an_iso_time(service: Service, subtests: pytest.Subtests) -> None:
    created = await create(service)
    path = f"/v1/endpoints/{created['id']}/recover"
    for case, params in {"missing": {}, "not-a-time": {"since": "yesterday"}}.items():
        with subtests.test(case=case):
            response = await service.http.post(path, params=params, headers=service.admin)
            assert response.status_code == 422
            assert "since" in response.json()["message"]


async def test_retry_requeues_a_message_for_every_endpoint_it_went_to(
    service: Service, store: LedgerStore, clock: FakeClock
) -> None:
    await create(service)
    await create(service, url=NATS)
    ref = await failed_events(service, store, clock)
    first = (await store.messages_of_task(ref))[0]
    response = await service.http.post(
        f"/v1/messages/{first['msg_id']}/retry", headers=service.admin
    )
    assert (response.status_code, response.json()) == (200, {"requeued": 2})
    jobs = await store.claim_dispatches("relay", 10, 30)
    assert {job.msg_id for job in jobs} == {first["msg_id"]}


# -- audit and timeline -------------------------------------------------------------------


async def test_audit_shows_a_disabled_endpoint_and_the_backlog(
    service: Service, store: LedgerStore, clock: FakeClock
) -> None:
    healthy = await create(service)
    gone = await create(service, url=NATS)
    task = await service.register("apidot", provider_task_id="t-1")
    await store.ingest([polled(task["ref"], State.RUNNING, clock)])
    await store.fan_out(10)
    clock.advance(30)
    (job,) = [
        j for j in await store.claim_dispatches("relay", 10, 30) if j.endpoint.id == gone["id"]
    ]
    await store.record_dispatch(job, "relay", AttemptResult(False, 410, gone=True), DAY)
    audit = (await service.http.get("/v1/audit", headers=service.admin)).json()
    assert audit["notifications"] == {
        "endpoints": 2,
        "disabled": [
            {
                "id": gone["id"],
                "url": "nats://127.0.0.1:4222/taskledger.events",
                "reason": "the endpoint answered 410 Gone",
                "disabled_at": clock().isoformat(),
            }
        ],
        "pending": 1,
        "oldest_pending_seconds": 30.0,
        "unsent": 0,
    }
    assert healthy["id"] not in str(audit["notifications"]["disabled"])


async def test_audit_with_nothing_to_send_says_so(service: Service) -> None:
    audit = (await service.http.get("/v1/audit", headers=service.admin)).json()
    assert audit["notifications"] == {
        "endpoints": 0,
        "disabled": [],
        "pending": 0,
        "oldest_pending_seconds": None,
        "unsent": 0,
    }


async def test_a_tasks_timeline_lists_its_events_and_each_try(
    service: Service, store: LedgerStore, clock: FakeClock
) -> None:
    created = await create(service, url=NATS)
    ref = await failed_events(service, store, clock)
    messages = (await service.task(ref))["timeline"]["messages"]
    assert [(m["event_type"], m["seq"] is not None) for m in messages] == [
        ("task.running", True),
        ("task.succeeded", True),
    ]
    dispatch = messages[0]["dispatches"][0]
    assert {k: dispatch[k] for k in ("endpoint_id", "endpoint_url", "state", "attempts")} == {
        "endpoint_id": created["id"],
        "endpoint_url": "nats://127.0.0.1:4222/taskledger.events",
        "state": "failed",
        "attempts": 1,
    }
    (attempt,) = dispatch["attempt_log"]
    assert {k: attempt[k] for k in ("status_code", "latency_ms", "answer", "error")} == {
        "status_code": 500,
        "latency_ms": 12.5,
        "answer": "oops",
        "error": "HTTP 500",
    }
    assert datetime.fromisoformat(attempt["at"]) == clock()
