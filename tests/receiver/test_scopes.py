"""Access with scopes, on both backends: every route of the app's router against every kind of
caller (nobody, a wrong or revoked key, each scope, keys limited to an owner, dashboard
sessions). The table must hold a row for each route the router serves, so a new route
cannot be added without saying who may call it.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from ipaddress import ip_network
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from starlette.routing import Route

from receiver.app import create_app
from receiver.auth import SESSION_COOKIE
from schemas.settings import NotifySettings
from schemas.store.keys import KeyScope
from tests.conftest import FakeClock
from tests.support.senders import apidot_body
from tests.support.service import ADMIN_TOKEN, Service, running_service, settings_for

LOOPBACK = NotifySettings(allow_http=True, allowed_networks=(ip_network("127.0.0.1/32"),))
OWNER = "team-a"
OTHER = "team-b"
SAFE = frozenset({"GET", "HEAD"})
FORM = {"content-type": "application/x-www-form-urlencoded"}


@dataclass(frozen=True)
class Who:
    """A kind of caller: its scope (None: not authenticated), its owner, and whether it
    comes with the dashboard's session cookie instead of a bearer token."""

    name: str
    scope: KeyScope | None
    owner: str | None = None
    session: bool = False


CALLERS = [
    Who("nobody", None),
    Who("unknown-key", None),
    Who("revoked-key", None),
    Who("read", KeyScope.READ),
    Who("write", KeyScope.WRITE),
    Who("admin", KeyScope.ADMIN),
    Who("admin-token", KeyScope.ADMIN),
    Who("read-team-a", KeyScope.READ, OWNER),
    Who("write-team-a", KeyScope.WRITE, OWNER),
    Who("session-read", KeyScope.READ, session=True),
    Who("session-read-team-a", KeyScope.READ, OWNER, session=True),
    Who("session-admin-token", KeyScope.ADMIN, session=True),
]


@dataclass
class Seed:
    """What the table's requests name: a task of each owner, an endpoint, the callers'
    credentials (as request headers)."""

    mine: str
    theirs: str
    endpoint: str
    credentials: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    """Who may call a route, and what it answers then. `needs` None: no key decides (the
    route has its own authentication, or none). `owned`: the request names the other
    owner's task, which a caller limited to `OWNER` is answered `foreign` for."""

    needs: KeyScope | None
    request: Callable[[Seed, Who], tuple[str, dict[str, Any]]]
    ok: int
    owned: bool = False
    foreign: int = 404
    check: Callable[[Any, Who, Seed], str | None] | None = None


def path(template: str, **extra: Any) -> Callable[[Seed, Who], tuple[str, dict[str, Any]]]:
    """A request to `template` with `{ref}` the other owner's task, `{endpoint}` the seed's."""

    def request(seed: Seed, who: Who) -> tuple[str, dict[str, Any]]:
        return template.format(ref=seed.theirs, endpoint=seed.endpoint), dict(extra)

    return request


def new_task(seed: Seed, who: Who) -> tuple[str, dict[str, Any]]:
    return "/v1/tasks", {"json": {"provider": "apidot", "owner": OTHER, "model": who.name}}


def new_key(seed: Seed, who: Who) -> tuple[str, dict[str, Any]]:
    return "/v1/keys", {"json": {"name": f"made by {who.name}", "scope": "read"}}


# -- what a caller limited to an owner is shown ---------------------------------------------


def only_mine(response: Any, who: Who, seed: Seed) -> str | None:
    refs = {task["ref"] for task in response.json()["tasks"]}
    return _visible(refs, who, seed)


def only_my_changes(response: Any, who: Who, seed: Seed) -> str | None:
    refs = {change["task_ref"] for change in response.json()["changes"]}
    return _visible(refs, who, seed)


def only_my_export(response: Any, who: Who, seed: Seed) -> str | None:
    refs = {orjson.loads(line)["ref"] for line in response.text.splitlines()}
    return _visible(refs, who, seed)


def only_my_audit(response: Any, who: Who, seed: Seed) -> str | None:
    audit = response.json()
    tasks = sum(p["tasks"] for p in audit["providers"])
    wanted = 1 if who.owner else 2
    if tasks != wanted:
        return f"the audit counts {tasks} tasks, not {wanted}"
    if ("notifications" in audit) != (who.scope is KeyScope.ADMIN):
        return "the notifications (endpoints) are for the admin scope only"
    return None


def _visible(refs: set[str], who: Who, seed: Seed) -> str | None:
    wanted = {seed.mine} if who.owner else {seed.mine, seed.theirs}
    return None if refs == wanted else f"saw {sorted(refs)}, not {sorted(wanted)}"


def raw_payloads_for_admins(response: Any, who: Who, seed: Seed) -> str | None:
    """A delivery's kept headers are a raw payload: shown to the admin scope only."""
    shown = [d["headers"] is not None for d in response.json()["timeline"]["deliveries"]]
    wanted = [who.scope is KeyScope.ADMIN]
    return None if shown == wanted else f"headers shown: {shown}, not {wanted}"


def no_such_output(response: Any, who: Who, seed: Seed) -> str | None:
    """The output is missing, not the task: the caller saw the task."""
    if response.request.method == "HEAD":
        return None
    message = response.json()["message"]
    return None if "no output" in message else f"refused as {message!r}"


def no_such_task(response: Any, who: Who, seed: Seed) -> str | None:
    if response.request.method == "HEAD":
        return None
    message = response.json()["message"]
    return None if message == "no task has this ref" else f"refused as {message!r}"


READ, WRITE, ADMIN = KeyScope.READ, KeyScope.WRITE, KeyScope.ADMIN
SINCE = {"params": {"since": "2020-01-01T00:00:00+00:00"}}
TABLE: dict[tuple[str, str], Row] = {
    # Their own authentication (a URL token, a signature): a key changes nothing.
    ("POST", "/callbacks/{provider}/{token}"): Row(
        None, path("/callbacks/apidot/not-a-token", content=b"{}"), 401
    ),
    ("POST", "/webhooks/{source}"): Row(None, path("/webhooks/openai", content=b"{}"), 401),
    ("GET", "/healthz"): Row(None, path("/healthz"), 200),
    ("GET", "/readyz"): Row(None, path("/readyz"), 200),
    ("GET", "/metrics"): Row(None, path("/metrics"), 200),
    ("GET", "/openapi.json"): Row(None, path("/openapi.json"), 200),
    ("POST", "/ui/login"): Row(None, path("/ui/login", content=b"token=wrong", headers=FORM), 401),
    ("POST", "/ui/logout"): Row(None, path("/ui/logout"), 303),
    # The dashboard: any caller that reads.
    ("GET", "/ui"): Row(READ, path("/ui"), 200),
    ("GET", "/ui/static/{name}"): Row(READ, path("/ui/static/ui.js"), 200),
    # The ledger: read.
    ("GET", "/v1/tasks"): Row(READ, path("/v1/tasks"), 200, check=only_mine),
    ("GET", "/v1/changes"): Row(READ, path("/v1/changes"), 200, check=only_my_changes),
    ("GET", "/v1/audit"): Row(READ, path("/v1/audit"), 200, check=only_my_audit),
    ("GET", "/v1/export"): Row(READ, path("/v1/export"), 200, check=only_my_export),
    ("GET", "/v1/deliveries"): Row(READ, path("/v1/deliveries"), 200),
    # The seed's one delivery is a task's: no delivery without a task has its id.
    ("GET", "/v1/deliveries/{id}"): Row(ADMIN, path("/v1/deliveries/1"), 404),
    ("GET", "/v1/tasks/{ref}"): Row(
        READ, path("/v1/tasks/{ref}"), 200, owned=True, check=raw_payloads_for_admins
    ),
    ("GET", "/v1/tasks/{ref}/artifacts"): Row(
        READ, path("/v1/tasks/{ref}/artifacts"), 200, owned=True
    ),
    ("GET", "/v1/tasks/{ref}/artifacts/{name}"): Row(
        READ, path("/v1/tasks/{ref}/artifacts/video"), 404, owned=True, check=no_such_output
    ),
    ("GET", "/v1/dashboard/outcomes"): Row(READ, path("/v1/dashboard/outcomes"), 200),
    ("GET", "/v1/dashboard/providers"): Row(READ, path("/v1/dashboard/providers"), 200),
    # Tasks: write.
    ("POST", "/v1/tasks"): Row(WRITE, new_task, 201, owned=True, foreign=403),
    ("PATCH", "/v1/tasks/{ref}"): Row(
        WRITE, path("/v1/tasks/{ref}", json={"provider_task_id": "t-theirs"}), 200, owned=True
    ),
    # Everything else: admin.
    ("GET", "/v1/tasks/{ref}/deliveries/{id}"): Row(
        ADMIN, path("/v1/tasks/{ref}/deliveries/1"), 200
    ),
    ("GET", "/v1/tasks/{ref}/polls/{id}"): Row(ADMIN, path("/v1/tasks/{ref}/polls/1"), 404),
    ("POST", "/v1/endpoints"): Row(
        ADMIN, path("/v1/endpoints", json={"url": "http://127.0.0.1:9/hook"}), 201
    ),
    ("GET", "/v1/endpoints"): Row(ADMIN, path("/v1/endpoints"), 200),
    ("GET", "/v1/endpoints/{id}"): Row(ADMIN, path("/v1/endpoints/{endpoint}"), 200),
    ("PATCH", "/v1/endpoints/{id}"): Row(
        ADMIN, path("/v1/endpoints/{endpoint}", json={"description": "changed"}), 200
    ),
    ("DELETE", "/v1/endpoints/{id}"): Row(ADMIN, path("/v1/endpoints/ep_missing"), 404),
    ("POST", "/v1/endpoints/{id}/rotate"): Row(ADMIN, path("/v1/endpoints/{endpoint}/rotate"), 200),
    ("POST", "/v1/endpoints/{id}/recover"): Row(
        ADMIN, path("/v1/endpoints/{endpoint}/recover", **SINCE), 200
    ),
    ("POST", "/v1/messages/{msg_id}/retry"): Row(
        ADMIN, path("/v1/messages/msg_missing/retry"), 404
    ),
    ("POST", "/v1/keys"): Row(ADMIN, new_key, 201),
    ("GET", "/v1/keys"): Row(ADMIN, path("/v1/keys"), 200),
    ("DELETE", "/v1/keys/{id}"): Row(ADMIN, path("/v1/keys/0123456789abcdef"), 404),
}
# A `HEAD` of the archived file asks what its `GET` does.
HEADS = {("HEAD", "/v1/tasks/{ref}/artifacts/{name}")}


def served_routes() -> set[tuple[str, str]]:
    """(method, path) of every route the app's router serves; Starlette adds a `HEAD` to
    each `GET`, which answers as the `GET` does (checked for the archive's files)."""
    app = create_app(settings_for("sqlite+aiosqlite:///unused.db"))
    served = set()
    for route in app.routes:
        assert isinstance(route, Route), route
        for method in route.methods or ():
            if method != "HEAD" or (method, route.path) in HEADS:
                served.add((method, route.path))
    return served


def test_every_route_has_a_row_saying_who_may_call_it() -> None:
    served = served_routes()
    missing = sorted(served - set(TABLE) - HEADS)
    assert missing == [], f"routes without a row in TABLE: {missing}"


def expected(method: str, row: Row, who: Who) -> tuple[int, str]:
    """The status the caller should get, and why: `refused`, `foreign` (the other owner's
    task) or `ok`."""
    if row.needs is None:
        return row.ok, "ok"
    if who.scope is None or (who.session and method not in SAFE):
        return 401, "refused"
    if not who.scope.includes(row.needs):
        return 403, "refused"
    if row.owned and who.owner not in (None, OTHER):
        return row.foreign, "foreign"
    return row.ok, "ok"


def judged(method: str, row: Row, who: Who, response: Any, seed: Seed) -> str | None:
    """What is wrong with the answer, if anything."""
    status, why = expected(method, row, who)
    if response.status_code != status:
        return f"{response.status_code}, not {status}: {response.text[:120]}"
    if why == "foreign" and status == 404:
        return no_such_task(response, who, seed)
    if why == "ok" and row.check is not None:
        return row.check(response, who, seed)
    return None


@pytest.fixture
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    async with running_service(settings_for(database_url, notify=LOOPBACK), clock) as service:
        yield service


@pytest.mark.parametrize("who", CALLERS, ids=[who.name for who in CALLERS])
async def test_each_route_answers_each_caller_as_its_scope_and_owner_allow(
    service: Service, who: Who
) -> None:
    seed = await seeded(service)
    served = served_routes()
    wrong = []
    for method, route in sorted(served):
        row = TABLE[("GET", route) if method == "HEAD" else (method, route)]
        target, extra = row.request(seed, who)
        headers = {**extra.pop("headers", {}), **seed.credentials[who.name]}
        response = await service.http.request(method, target, headers=headers, **extra)
        problem = judged(method, row, who, response, seed)
        if problem:
            wrong.append(f"{method} {target}: {problem}")
    assert not wrong, "\n".join(wrong)


# -- the seed ---------------------------------------------------------------------------------


async def seeded(service: Service) -> Seed:
    mine = await service.register("apidot", owner=OWNER, provider_task_id="t-mine")
    theirs = await service.register("apidot", owner=OTHER, provider_task_id="t-theirs")
    callback = urlsplit(theirs["callback_url"]).path
    delivered = await service.http.post(callback, content=apidot_body("t-theirs", "running"))
    assert delivered.status_code == 200, delivered.text
    endpoint = await service.http.post(
        "/v1/endpoints", json={"url": "http://127.0.0.1:9/hook"}, headers=service.admin
    )
    assert endpoint.status_code == 201, endpoint.text
    seed = Seed(mine["ref"], theirs["ref"], endpoint.json()["id"])
    revoked = await make_key(service, "revoked", KeyScope.READ)
    gone = await service.http.delete(f"/v1/keys/{revoked.split('_')[1]}", headers=service.admin)
    assert gone.status_code == 200
    unknown = f"tlk_{secrets.token_hex(8)}_{'x' * 40}"
    for who in CALLERS:
        seed.credentials[who.name] = await credentials(service, who, revoked, unknown)
    return seed


async def credentials(service: Service, who: Who, revoked: str, unknown: str) -> dict[str, str]:
    if who.name == "nobody":
        return {}
    if who.scope is None:
        return bearer(revoked if who.name == "revoked-key" else unknown)
    token = ADMIN_TOKEN
    if "admin-token" not in who.name:
        token = await make_key(service, who.name, who.scope, who.owner)
    if not who.session:
        return bearer(token)
    return {"cookie": f"{SESSION_COOKIE}={await session_of(service, token)}"}


async def make_key(service: Service, name: str, scope: KeyScope, owner: str | None = None) -> str:
    body = {"name": name, "scope": scope.value, "owner": owner}
    response = await service.http.post("/v1/keys", json=body, headers=service.admin)
    assert response.status_code == 201, response.text
    return str(response.json()["key"])


async def session_of(service: Service, token: str) -> str:
    response = await service.http.post("/ui/login", content=f"token={token}", headers=FORM)
    assert response.status_code == 303, response.text
    cookie = response.cookies[SESSION_COOKIE]
    service.http.cookies.clear()  # each caller sends its own credentials, nothing else
    return str(cookie)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# -- filters refused by name ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ({"state": "bogus"}, "state must be one of: submitted, queued, running"),
        ({"conflict": "maybe"}, "conflict must be true or false (or 1 or 0, yes or no)"),
        ({"stuck": "often"}, "stuck must be true or false (or 1 or 0, yes or no)"),
    ],
    ids=["state", "conflict", "stuck"],
)
async def test_a_list_filter_with_an_unknown_value_is_422_naming_the_allowed_ones(
    service: Service, query: dict[str, str], named: str
) -> None:
    response = await service.http.get("/v1/tasks", params=query, headers=service.admin)
    assert response.status_code == 422
    assert named in response.json()["message"]


async def test_an_export_in_an_unknown_format_is_422_naming_the_formats(service: Service) -> None:
    response = await service.http.get("/v1/export", params={"format": "xml"}, headers=service.admin)
    assert response.status_code == 422
    assert response.json()["message"] == "format must be one of: jsonl, csv"


async def test_a_key_limited_to_an_owner_asking_for_another_owner_gets_no_task(
    service: Service,
) -> None:
    await service.register("apidot", owner=OTHER)
    token = await make_key(service, "team-a reader", KeyScope.READ, OWNER)
    response = await service.http.get("/v1/tasks", params={"owner": OTHER}, headers=bearer(token))
    assert response.json()["tasks"] == []


async def test_a_key_limited_to_an_owner_registers_for_it_when_the_body_names_none(
    service: Service,
) -> None:
    token = await make_key(service, "team-a writer", KeyScope.WRITE, OWNER)
    response = await service.http.post(
        "/v1/tasks", json={"provider": "apidot"}, headers=bearer(token)
    )
    assert response.status_code == 201
    assert response.json()["owner"] == OWNER
