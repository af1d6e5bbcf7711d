"""Registration and `PATCH` on both backends: one task per `Idempotency-Key` (racing retries
included), the first answer given again, kept as long as `db prune` promises; bodies with
unknown fields refused by name; `PATCH` answering the whole, updated task.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.retention import RetentionPolicy
from schemas.store import LedgerStore, NewTask, Task
from schemas.store.idempotency import IdempotencyKey
from schemas.tables import IDEMPOTENCY, TASK
from tests.conftest import FakeClock
from tests.support.service import Service, running_service, settings_for

BODY = {"provider": "apidot", "owner": "team-a", "model": "sora-2"}
RACERS = 8


@pytest.fixture
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    async with running_service(settings_for(database_url), clock) as service:
        yield service


async def register(service: Service, key: str | None, body: dict[str, Any] = BODY) -> Any:
    headers = service.admin | ({"idempotency-key": key} if key is not None else {})
    return await service.http.post("/v1/tasks", json=body, headers=headers)


async def task_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(TASK)) or 0)


# -- one task per key -------------------------------------------------------------------------


async def test_a_retry_with_the_same_key_and_body_gets_the_first_answer(
    service: Service, engine: AsyncEngine
) -> None:
    first = await register(service, "retry-1")
    again = await register(service, "retry-1", dict(reversed(BODY.items())))
    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert await task_count(engine) == 1


async def test_the_same_key_with_another_body_is_409(service: Service, engine: AsyncEngine) -> None:
    await register(service, "retry-2")
    other = await register(service, "retry-2", BODY | {"model": "sora-2-pro"})
    assert other.status_code == 409
    assert "another request body" in other.json()["message"]
    assert await task_count(engine) == 1


async def test_without_a_key_each_request_registers_a_task(
    service: Service, engine: AsyncEngine
) -> None:
    await register(service, None)
    await register(service, None)
    assert await task_count(engine) == 2


async def test_a_key_is_its_callers_own(service: Service, engine: AsyncEngine) -> None:
    created = await service.http.post(
        "/v1/keys", json={"name": "writer", "scope": "write"}, headers=service.admin
    )
    writer = {"authorization": f"Bearer {created.json()['key']}", "idempotency-key": "shared"}
    mine = await register(service, "shared")
    theirs = await service.http.post("/v1/tasks", json=BODY, headers=writer)
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["ref"] != theirs.json()["ref"]
    assert await task_count(engine) == 2


async def test_a_registration_with_a_provider_task_id_is_answered_again(service: Service) -> None:
    body = {"provider": "apidot", "provider_task_id": "t-1"}
    first = await register(service, "with-id", body)
    again = await register(service, "with-id", body)
    assert [a.status_code for a in (first, again)] == [201, 201]
    assert again.json() == first.json()


async def test_a_refused_registration_keeps_no_key(service: Service, engine: AsyncEngine) -> None:
    refused = await register(service, "fix-and-retry", {"provider": "nope"})
    accepted = await register(service, "fix-and-retry")
    assert (refused.status_code, accepted.status_code) == (422, 201)
    assert await task_count(engine) == 1


@pytest.mark.parametrize(
    "key", ["", "x" * 201, "caf\u00e9"], ids=["empty", "too-long", "not-ascii"]
)
async def test_an_unusable_key_is_400(service: Service, key: str) -> None:
    headers = service.admin | {"idempotency-key": key}
    response = await service.http.post(
        "/v1/tasks", json=BODY, headers={k: v.encode() for k, v in headers.items()}
    )
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["message"]


async def test_racing_retries_over_http_make_one_task(
    service: Service, engine: AsyncEngine
) -> None:
    answers = await asyncio.gather(*(register(service, "race") for _ in range(RACERS)))
    assert {a.status_code for a in answers} == {201}
    assert len({a.content for a in answers}) == 1
    assert await task_count(engine) == 1


async def test_racing_registrations_in_the_store_make_one_task(
    store: LedgerStore, engine: AsyncEngine
) -> None:
    key = IdempotencyKey("admin", "store-race", "0" * 64)

    def answer(task: Task) -> tuple[int, bytes]:
        return 201, task.ref.encode()

    new = NewTask("apidot", owner="team-a")
    answers = await asyncio.gather(*(store.register_once(new, key, answer) for _ in range(RACERS)))
    assert len({a.body for a in answers}) == 1
    assert sum(not a.replayed for a in answers) == 1
    assert await task_count(engine) == 1


# -- kept as long as promised -------------------------------------------------------------------


async def test_a_key_outlives_a_day_and_goes_with_the_dedup_keys(
    service: Service, engine: AsyncEngine, clock: FakeClock
) -> None:
    policy = RetentionPolicy(retention_days=1, dedup_keep_days=7)
    first = await register(service, "daily")
    clock.advance(timedelta(hours=25).total_seconds())
    store = LedgerStore(engine, clock)
    kept = await store.prune(policy.cutoffs(clock()))
    again = await register(service, "daily")
    clock.advance(timedelta(days=7).total_seconds())
    gone = await store.prune(policy.cutoffs(clock()))
    await store.close()
    fresh = await register(service, "daily")
    assert kept.idempotency_keys_deleted == 0
    assert again.content == first.content
    assert gone.idempotency_keys_deleted == 1
    assert fresh.json()["ref"] != first.json()["ref"]


async def test_only_the_request_hash_and_the_answer_are_kept(
    service: Service, engine: AsyncEngine
) -> None:
    first = await register(service, "kept")
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(IDEMPOTENCY))).mappings().one()
    assert (row["caller"], row["key"], row["status"]) == ("admin", "kept", 201)
    assert row["answer"].encode() == first.content
    assert len(row["request_sha256"]) == 64


# -- bodies and answers -------------------------------------------------------------------------


async def test_unknown_fields_in_a_registration_are_400_naming_them(service: Service) -> None:
    response = await register(service, None, BODY | {"callback": "x", "prio": 1})
    assert response.status_code == 400
    assert response.json()["message"].startswith("unknown field(s): 'callback', 'prio'")


async def test_unknown_fields_in_a_patch_are_400_naming_them(service: Service) -> None:
    task = await service.register("apidot")
    response = await service.http.patch(
        f"/v1/tasks/{task['ref']}",
        json={"provider_task_id": "t-2", "state": "succeeded"},
        headers=service.admin,
    )
    assert response.status_code == 400
    assert "'state'" in response.json()["message"]


async def test_patch_answers_the_whole_task_with_its_callback_url_and_new_updated_at(
    service: Service, clock: FakeClock
) -> None:
    task = await service.register("apidot")
    clock.advance(60)
    response = await service.http.patch(
        f"/v1/tasks/{task['ref']}", json={"provider_task_id": "t-3"}, headers=service.admin
    )
    patched = response.json()
    assert response.status_code == 200
    assert patched["callback_url"] == task["callback_url"]
    assert patched["provider_task_id"] == "t-3"
    assert patched["updated_at"] == clock().isoformat()
    assert set(task) <= set(patched)
