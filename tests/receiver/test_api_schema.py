"""Schemathesis over `/openapi.json` of a running receiver: no operation answers a server error.

The generated cases run in a worker thread (schemathesis calls are blocking) while the
service keeps serving on the test's event loop. A 503 is allowed only as documented: with
`Retry-After`, and not as the app's mapping of a crash ("unexpected error").
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import Case

from tests.conftest import FakeClock
from tests.support.service import ADMIN_TOKEN, Service, running_service, settings_for

EXAMPLES_PER_OPERATION = 50
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
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    async with running_service(settings_for(database_url), clock) as service:
        yield service


async def test_no_operation_answers_a_server_error(service: Service) -> None:
    answers = await asyncio.wait_for(asyncio.to_thread(exercise, service.base_url), timeout=90)
    cases = sum(answers.values())
    crashes = {key: n for key, n in answers.items() if key[1] >= 500}
    print(
        f"\nschemathesis: {cases} cases over {len({op for op, _ in answers})} operations, "
        f"5xx: {sum(crashes.values())}"
    )
    assert cases >= EXAMPLES_PER_OPERATION
    assert not crashes, crashes


def exercise(base_url: str) -> Counter[tuple[str, int]]:
    """Every operation of the served description, `EXAMPLES_PER_OPERATION` cases each."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    answers: Counter[tuple[str, int]] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()

        @CASES
        @given(case=operation.as_strategy())
        def run(case: Case) -> None:
            bound_long_poll(case)
            response = case.call(base_url=base_url, headers=ADMIN, timeout=10)
            label = f"{case.method.upper()} {case.path}"
            undocumented = response.status_code >= 500 and not documented_503(response)
            answers[label, 599 if undocumented else response.status_code] += 1
            assert not undocumented, f"{label}: {response.status_code} {response.text[:300]}"

        run()
    return answers


def documented_503(response: schemathesis.Response) -> bool:
    return (
        response.status_code == 503
        and "retry-after" in {name.lower() for name in response.headers}
        and "unexpected error" not in response.text
    )


def bound_long_poll(case: Case) -> None:
    """`GET /v1/changes?wait=30` is valid and would hold each case for 30 s."""
    wait = (case.query or {}).get("wait")
    if not isinstance(wait, str):
        return
    try:
        seconds = float(wait)
    except ValueError:
        return
    if math.isfinite(seconds) and seconds > LONG_POLL_CAP_SECONDS:
        case.query["wait"] = str(LONG_POLL_CAP_SECONDS)
