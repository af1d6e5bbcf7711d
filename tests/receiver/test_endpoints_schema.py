"""An endpoint's answer fits the schema `/openapi.json` gives it, a recent failure's latency
included: it is measured with its fraction (3.954 ms), so the schema says a number."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from ipaddress import ip_network
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from schemas.ledger import Poll
from schemas.settings import NotifySettings
from schemas.states import State
from schemas.store import AttemptResult, LedgerStore
from schemas.wire import Observation
from tests.conftest import FakeClock
from tests.support.service import Service, running_service, settings_for

LOOPBACK = NotifySettings(allow_http=True, allowed_networks=(ip_network("127.0.0.1/32"),))
LATENCY_MS = 3.954


@pytest.fixture
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    async with running_service(settings_for(database_url, notify=LOOPBACK), clock) as service:
        yield service


async def failed_endpoint(service: Service, store: LedgerStore, clock: FakeClock) -> str:
    """An endpoint whose one event failed after `LATENCY_MS`."""
    created = await service.http.post(
        "/v1/endpoints", json={"url": "http://127.0.0.1:9/hook"}, headers=service.admin
    )
    assert created.status_code == 201, created.text
    task = await service.register("apidot", provider_task_id="t-1")
    observation = Observation("t-1", State.SUCCEEDED, 100)
    await store.ingest([Poll(task["ref"], clock(), None, observation, 200, "{}")])
    await store.fan_out(10)
    (job,) = await store.claim_dispatches("relay", 10, 30)
    failed = AttemptResult(False, 500, LATENCY_MS, "oops", "HTTP 500")
    await store.record_dispatch(job, "relay", failed, timedelta(days=1))
    return str(created.json()["id"])


def described(spec: dict[str, Any], component: str) -> Draft202012Validator:
    """A validator of `component` as the served description gives it."""
    schema = {"$ref": f"#/components/schemas/{component}", "components": spec["components"]}
    return Draft202012Validator(schema)


async def test_a_recent_failures_latency_fits_the_described_endpoint(
    service: Service, store: LedgerStore, clock: FakeClock
) -> None:
    endpoint_id = await failed_endpoint(service, store, clock)
    spec = (await service.http.get("/openapi.json")).json()
    shown = (await service.http.get(f"/v1/endpoints/{endpoint_id}", headers=service.admin)).json()
    listed = (await service.http.get("/v1/endpoints", headers=service.admin)).json()
    (failure,) = shown["health"]["recent_failures"]
    assert failure["latency_ms"] == LATENCY_MS
    assert list(described(spec, "Endpoint").iter_errors(shown)) == []
    assert list(described(spec, "EndpointList").iter_errors(listed)) == []
