"""The dashboard's own reads through real HTTP: what provider health shows each caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from schemas.ledger import Poll
from schemas.store import LedgerStore
from tests.conftest import FakeClock
from tests.support.service import Service, running_service, settings_for

MINE, THEIRS = "team-a", "team-b"
# A provider's error can quote the task's prompt: another owner's must never show.
THEIR_ERROR = "HTTP 500: moderation refused prompt 'team-b launch teaser, product x'"


@pytest.fixture
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    async with running_service(settings_for(database_url), clock) as service:
        yield service


async def failed_poll(service: Service, store: LedgerStore, clock: FakeClock, owner: str) -> str:
    """A task of `owner` whose last poll failed with `THEIR_ERROR`; its ref."""
    task = await service.register("apidot", owner=owner, provider_task_id=f"t-{owner}")
    await store.ingest([Poll(task["ref"], clock(), None, http_status=500, error=THEIR_ERROR)])
    return str(task["ref"])


async def read_key(service: Service, owner: str | None) -> dict[str, str]:
    body = {"name": f"reader of {owner}", "scope": "read", "owner": owner}
    made = await service.http.post("/v1/keys", json=body, headers=service.admin)
    assert made.status_code == 201, made.text
    return {"authorization": f"Bearer {made.json()['key']}"}


async def apidot_health(service: Service, headers: dict[str, str]) -> tuple[str, dict[str, Any]]:
    answer = await service.http.get("/v1/dashboard/providers", headers=headers)
    assert answer.status_code == 200, answer.text
    apidot = next(p for p in answer.json()["providers"] if p["provider"] == "apidot")
    return answer.text, apidot


async def test_a_key_limited_to_an_owner_never_sees_a_poll_errors_text(
    service: Service, store: LedgerStore, clock: FakeClock
) -> None:
    await failed_poll(service, store, clock, THEIRS)
    text, apidot = await apidot_health(service, await read_key(service, MINE))
    assert "moderation refused" not in text
    assert apidot["last_poll_error"] == {
        "at": clock().isoformat(),
        "task_ref": None,
        "http_status": 500,
        "error": None,
    }


async def test_a_key_of_every_owner_sees_the_poll_errors_text_and_task(
    service: Service, store: LedgerStore, clock: FakeClock
) -> None:
    ref = await failed_poll(service, store, clock, THEIRS)
    for headers in (service.admin, await read_key(service, None)):
        _, apidot = await apidot_health(service, headers)
        assert (apidot["last_poll_error"]["error"], apidot["last_poll_error"]["task_ref"]) == (
            THEIR_ERROR,
            ref,
        )


async def viewer(service: Service, headers: dict[str, str]) -> dict[str, Any]:
    answer = await service.http.get("/v1/dashboard/providers", headers=headers)
    return dict(answer.json()["viewer"])


async def test_provider_health_names_the_admin_token_as_who_asks(service: Service) -> None:
    assert await viewer(service, service.admin) == {"scope": "admin", "owner": None, "key": None}


async def test_provider_health_names_a_keys_scope_owner_and_prefix_as_who_asks(
    service: Service,
) -> None:
    headers = await read_key(service, MINE)
    key_id = headers["authorization"].split("_")[1]
    assert await viewer(service, headers) == {
        "scope": "read",
        "owner": MINE,
        "key": f"tlk_{key_id}_…",
    }
