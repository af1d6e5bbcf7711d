"""API keys on both backends: made with the key shown once and only its hash kept, listed by
prefix, revoked at once here and within the cache's bound elsewhere; the dashboard signs in
with any key, its session as narrow as the key."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from receiver.auth import KEY_CACHE_SECONDS, SESSION_COOKIE, KeyCache, parse_key, secret_digest
from schemas.ledger import Poll
from schemas.states import State
from schemas.store import LedgerStore
from schemas.store.keys import KeyScope
from schemas.tables import API_KEY
from schemas.wire import Observation
from tests.conftest import FakeClock
from tests.support.service import Service, running_service, settings_for

KEY = re.compile(r"tlk_[0-9a-f]{16}_[A-Za-z0-9]{40}")
FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    async with running_service(settings_for(database_url), clock) as service:
        yield service


async def create(service: Service, **body: Any) -> Any:
    return await service.http.post("/v1/keys", json=body, headers=service.admin)


async def new_key(service: Service, scope: str = "read", owner: str | None = None) -> str:
    created = await create(service, name=f"a {scope} key", scope=scope, owner=owner)
    assert created.status_code == 201, created.text
    return str(created.json()["key"])


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def key_id(key: str) -> str:
    parsed = parse_key(key)
    assert parsed is not None
    return parsed[0]


# -- made, listed, revoked ---------------------------------------------------------------------


async def test_a_new_key_is_shown_once_and_only_its_hash_is_kept(
    service: Service, engine: AsyncEngine
) -> None:
    created = (await create(service, name="ci", scope="write", owner="team-a")).json()
    assert KEY.fullmatch(created["key"])
    assert created["prefix"] == f"tlk_{created['id']}_…"
    assert (created["scope"], created["owner"]) == ("write", "team-a")
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(API_KEY))).mappings().one()
    secret = created["key"].split("_", 2)[2]
    assert secret not in str(dict(row))
    assert row["secret_sha256"] == secret_digest(secret)


async def test_keys_are_listed_by_prefix_without_secret_or_hash(service: Service) -> None:
    key = await new_key(service)
    listed = (await service.http.get("/v1/keys", headers=service.admin)).json()["keys"]
    assert [k["prefix"] for k in listed] == [f"tlk_{key_id(key)}_…"]
    assert key.split("_", 2)[2] not in str(listed)
    assert "secret_sha256" not in listed[0]


async def test_a_key_authenticates_and_records_its_last_use(
    service: Service, clock: FakeClock
) -> None:
    key = await new_key(service)
    assert (await service.http.get("/v1/tasks", headers=bearer(key))).status_code == 200
    listed = (await service.http.get("/v1/keys", headers=service.admin)).json()["keys"]
    assert listed[0]["last_used_at"] == clock().isoformat()


async def test_a_wrong_secret_for_a_real_id_is_401(service: Service) -> None:
    key = await new_key(service)
    forged = f"tlk_{key_id(key)}_{'A' * 40}"
    assert (await service.http.get("/v1/tasks", headers=bearer(forged))).status_code == 401


async def test_a_revoked_key_is_refused_at_once_by_the_process_that_revoked_it(
    service: Service,
) -> None:
    key = await new_key(service)
    assert (await service.http.get("/v1/tasks", headers=bearer(key))).status_code == 200
    revoked = await service.http.delete(f"/v1/keys/{key_id(key)}", headers=service.admin)
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert (await service.http.get("/v1/tasks", headers=bearer(key))).status_code == 401


async def test_revoking_twice_keeps_the_first_revocation(
    service: Service, clock: FakeClock
) -> None:
    path = f"/v1/keys/{key_id(await new_key(service))}"
    first = (await service.http.delete(path, headers=service.admin)).json()
    clock.advance(60)
    second = (await service.http.delete(path, headers=service.admin)).json()
    assert second["revoked_at"] == first["revoked_at"]


@pytest.mark.parametrize("key_id", ["0123456789abcdef", "not-a-key-id"], ids=["unknown", "bad"])
async def test_revoking_an_unknown_key_is_404(service: Service, key_id: str) -> None:
    response = await service.http.delete(f"/v1/keys/{key_id}", headers=service.admin)
    assert response.status_code == 404


async def test_other_processes_refuse_a_revoked_key_within_the_cache_bound(
    store: LedgerStore, clock: FakeClock
) -> None:
    """Another process's cache keeps what it looked up for `KEY_CACHE_SECONDS`, no longer."""
    await store.create_key("00000000000000aa", "elsewhere", secret_digest("s"), KeyScope.READ, None)
    cache = KeyCache()
    assert await cache.principal(store, "00000000000000aa", secret_digest("s")) is not None
    await store.revoke_key("00000000000000aa")
    clock.advance(KEY_CACHE_SECONDS - 1)
    assert await cache.principal(store, "00000000000000aa", secret_digest("s")) is not None
    clock.advance(2)
    assert await cache.principal(store, "00000000000000aa", secret_digest("s")) is None


# -- refused bodies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"name": "x", "scope": "root"}, 422, "scope must be one of: read, write, admin"),
        ({"scope": "read"}, 422, "name is required"),
        ({"name": "x", "scope": "admin", "owner": "team-a"}, 422, "an admin key sees every"),
        ({"name": "x", "scope": "read", "ttl": 3}, 400, "unknown field(s): 'ttl'"),
    ],
    ids=["unknown-scope", "no-name", "admin-with-owner", "unknown-field"],
)
async def test_a_key_body_is_refused_with_a_reason(
    service: Service, body: dict[str, Any], status: int, message: str
) -> None:
    response = await create(service, **body)
    assert response.status_code == status
    assert message in response.json()["message"]


@pytest.mark.parametrize("scope", ["read", "write"])
async def test_only_an_admin_manages_keys(service: Service, scope: str) -> None:
    key = await new_key(service, scope)
    answers = [
        await service.http.get("/v1/keys", headers=bearer(key)),
        await service.http.post(
            "/v1/keys", json={"name": "x", "scope": "admin"}, headers=bearer(key)
        ),
        await service.http.delete(f"/v1/keys/{key_id(key)}", headers=bearer(key)),
    ]
    assert [a.status_code for a in answers] == [403, 403, 403]


# -- the dashboard --------------------------------------------------------------------------------


async def sign_in(service: Service, key: str) -> Any:
    return await service.http.post("/ui/login", content=f"token={key}", headers=FORM)


async def test_the_dashboard_signs_in_with_a_read_key(service: Service) -> None:
    signed_in = await sign_in(service, await new_key(service))
    assert signed_in.status_code == 303
    assert SESSION_COOKIE in signed_in.cookies
    assert (await service.http.get("/ui")).status_code == 200
    assert (await service.http.get("/v1/tasks")).status_code == 200


async def test_a_read_keys_session_reads_as_the_key_does(service: Service) -> None:
    await service.register("apidot", owner="team-a")
    await service.register("apidot", owner="team-b")
    await sign_in(service, await new_key(service, "read", "team-a"))
    listed = (await service.http.get("/v1/tasks")).json()["tasks"]
    assert [t["owner"] for t in listed] == ["team-a"]
    assert (await service.http.get("/v1/keys")).status_code == 403


async def test_a_revoked_keys_session_ends(service: Service) -> None:
    key = await new_key(service)
    await sign_in(service, key)
    await service.http.delete(f"/v1/keys/{key_id(key)}", headers=service.admin)
    assert (await service.http.get("/ui")).status_code == 401


async def test_a_polls_raw_answer_is_for_the_admin_scope_only(
    service: Service, store: LedgerStore, clock: FakeClock
) -> None:
    task = await service.register("apidot", provider_task_id="t-raw")
    observation = Observation("t-raw", State.RUNNING, 40)
    await store.ingest([Poll(task["ref"], clock(), None, observation, 200, '{"raw": 1}')])
    path = f"/v1/tasks/{task['ref']}"
    as_reader = (await service.http.get(path, headers=bearer(await new_key(service)))).json()
    as_admin = (await service.http.get(path, headers=service.admin)).json()
    assert [p["body"] for p in as_reader["timeline"]["polls"]] == [None]
    assert [p["body"] for p in as_admin["timeline"]["polls"]] == ['{"raw": 1}']
