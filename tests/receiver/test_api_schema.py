"""Schemathesis over `/openapi.json` of a running receiver: no operation answers a server
error, and every answer fits the schema the description gives it (generated from the same
models that validate requests and shape answers: `receiver.contract`).

The generated cases run in a worker thread (schemathesis calls are blocking) while the
service keeps serving on the test's event loop. A 503 is allowed only as documented: with
`Retry-After`, and not as the app's mapping of a crash ("unexpected error").
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import Case
from schemathesis.checks import response_schema_conformance
from schemathesis.core.result import Err

from schemas.ledger import Poll
from schemas.states import State
from schemas.store import AttemptResult, LedgerStore
from schemas.wire import Observation
from tests.conftest import FakeClock
from tests.support.service import ADMIN_TOKEN, Service, running_service, settings_for

EXAMPLES_PER_OPERATION = 50
MISFIT = 0  # an answer's tally when it does not fit its documented schema
LONG_POLL_CAP_SECONDS = 0.2
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
CASES = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture
async def service(
    database_url: str, clock: FakeClock, store: LedgerStore
) -> AsyncIterator[Service]:
    async with running_service(settings_for(database_url), clock) as service:
        await seed(service, store, clock)
        yield service


async def seed(service: Service, store: LedgerStore, clock: FakeClock) -> None:
    """Something in every list, so that answers with rows are checked against their schema
    too: tasks with and without a provider id, an API key, an endpoint with a failed try (put
    in the ledger: through the API its URL must resolve outside, and tests stay off the
    network)."""
    await service.register("apidot")
    seeded = await service.register("openai", provider_task_id="video_seeded")
    answer = await service.http.post(
        "/v1/keys", json={"name": "seeded", "scope": "read"}, headers=service.admin
    )
    assert answer.status_code == 201, answer.text
    await store.create_endpoint(
        {"id": "ep_seeded", "kind": "http", "url": "https://hooks.example.com/taskledger"}
        | {"secrets": [{"secret": "whsec_c2VlZGVk", "expires_at": None}]}
    )
    done = Observation("video_seeded", State.SUCCEEDED, 100)
    await store.ingest([Poll(seeded["ref"], clock(), None, done, 200, "{}")])
    await store.fan_out(10)
    (job,) = await store.claim_dispatches("relay", 10, 30)
    failed = AttemptResult(False, 500, 3.954, "oops", "HTTP 500")  # a latency has a fraction
    await store.record_dispatch(job, "relay", failed, timedelta(days=1))


async def test_no_operation_answers_a_server_error(service: Service) -> None:
    answers = await asyncio.wait_for(asyncio.to_thread(exercise, service.base_url), timeout=90)
    cases = sum(answers.values())
    crashes = {key: n for key, n in answers.items() if key[1] >= 500}
    misfits = {key: n for key, n in answers.items() if key[1] == MISFIT}
    print(
        f"\nschemathesis: {cases} cases over {len({op for op, _ in answers})} operations, "
        f"5xx: {sum(crashes.values())}, answers unlike their schema: {sum(misfits.values())}"
    )
    assert cases >= EXAMPLES_PER_OPERATION
    assert not crashes, crashes
    assert not misfits, misfits


def exercise(base_url: str) -> Counter[tuple[str, int]]:
    """Every operation of the served description, `EXAMPLES_PER_OPERATION` cases each."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    answers: Counter[tuple[str, int]] = Counter()
    session = requests.Session()  # one kept-alive connection, not one per case
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        operation = result.ok()

        @CASES
        @given(case=operation.as_strategy())
        def run(case: Case[Any]) -> None:
            bound_long_poll(case)
            session.cookies.clear()  # each case as a new client would send it
            response = case.call(base_url=base_url, session=session, headers=ADMIN, timeout=10)
            label = f"{case.method.upper()} {case.path}"
            undocumented = response.status_code >= 500 and not documented_503(response)
            answers[label, 599 if undocumented else response.status_code] += 1
            assert not undocumented, f"{label}: {response.status_code} {response.text[:300]}"
            try:
                case.validate_response(response, checks=[response_schema_conformance])
            except Exception as exc:  # schemathesis raises its group of failed checks
                answers[label, MISFIT] += 1
                raise AssertionError(f"{label} {response.status_code}: {exc}") from None

        run()
    session.close()
    return answers


def documented_503(response: schemathesis.Response) -> bool:
    return (
        response.status_code == 503
        and "retry-after" in {name.lower() for name in response.headers}
        and "unexpected error" not in response.text
    )


def bound_long_poll(case: Case[Any]) -> None:
    """`GET /v1/changes?wait=30` is valid and would hold each case for 30 s (a number, as
    the description gives it, or any text)."""
    try:
        seconds = float((case.query or {})["wait"])
    except (KeyError, TypeError, ValueError):
        return
    if math.isfinite(seconds) and seconds > LONG_POLL_CAP_SECONDS:
        case.query["wait"] = str(LONG_POLL_CAP_SECONDS)
