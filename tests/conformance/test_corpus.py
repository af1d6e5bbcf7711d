"""Every documented body in the corpus, through the real callback routes and the real
client's parsing: the answer, the outcome and what the task then holds."""

from __future__ import annotations

import dataclasses

import httpx
import pytest

from reconciler.errors import BadAnswer, ProviderUnavailable
from schemas.ledger import result_of
from schemas.states import State
from schemas.wire import Kind
from tests.conformance.conftest import Ledger
from tests.conformance.corpus import (
    CASES,
    MODEL,
    POLLED_AT,
    ROUTES,
    Case,
    cases_for,
    check_result,
    client_answering,
    client_fetching_result,
    client_with,
)

# One provider account per case: its task ids are its own.
PROVIDERS: dict[str, Kind] = {f"c{n}": case.kind for n, case in enumerate(CASES)}
ACCOUNT = {case.id: f"c{n}" for n, case in enumerate(CASES)}
# What the callback routes answer for each outcome (README: HTTP contract).
ANSWER_CODE = {"unmatched": 202}
UNCHANGED = "submitted"  # a registered task with its provider task id, before any news


def ids(cases: list[Case]) -> list[str]:
    return [case.id for case in cases]


def test_corpus_has_cases_for_every_provider_and_route() -> None:
    assert {case.provider for case in CASES} == {
        "openai",
        "apidot",
        "vidgo",
        "evolink",
        "aivideoapi",
        "replicate",
        "fal",
        "kie",
    }
    assert all(cases_for(route) for route in ROUTES)


@pytest.mark.asyncio(loop_scope="module")  # the receiver runs for the whole module
@pytest.mark.parametrize("case", cases_for("callback"), ids=ids(cases_for("callback")))
async def test_documented_callback_gets_its_outcome_and_sets_the_task(
    ledger: Ledger, case: Case
) -> None:
    response, task = await ledger.deliver(ACCOUNT[case.id], case.kind, case.raw(), case.task_id)
    outcome = case.expect["callback_outcome"]
    assert (response.status_code, response.json()) == (
        ANSWER_CODE.get(outcome, 200),
        {"outcome": outcome},
    )
    if task is None:
        return
    deliveries = task["timeline"]["deliveries"]
    assert [d["outcome"] for d in deliveries] == [outcome]
    if outcome == "applied":
        assert task["state"] == case.expect["state"]
        # The receiver does not pass the provider's URL lifetime yet: a gateway callback's
        # expiry may be missing, never wrong.
        check_result(case, task["result"], ledger.clock(), expiry_optional=True)
    else:
        assert (task["state"], task["result"]) == (UNCHANGED, None)


@pytest.mark.parametrize("case", cases_for("poll"), ids=ids(cases_for("poll")))
async def test_documented_status_answer_is_read_by_the_client(case: Case) -> None:
    async with client_answering(case) as client:
        answer = await client.fetch_status(case.task_id or "task-unnamed", MODEL)
    if case.unrecognized:
        assert (answer.observation, answer.unrecognized) == (None, case.unrecognized)
        return
    assert answer.observation is not None
    assert (answer.observation.provider_task_id, answer.observation.state) == (
        case.task_id,
        State(case.expect["state"]),
    )
    check_result(case, result_of(answer.observation), POLLED_AT)


@pytest.mark.parametrize("case", cases_for("submit"), ids=ids(cases_for("submit")))
async def test_documented_submit_answer_gives_the_task_id(case: Case) -> None:
    async with client_answering(case) as client:
        if case.unrecognized:
            with pytest.raises(BadAnswer):
                await client.submit(MODEL, {"prompt": "a cat"}, None)
            return
        observation = await client.submit(MODEL, {"prompt": "a cat"}, None)
    assert (observation.provider_task_id, observation.state) == (
        case.task_id,
        State(case.expect["state"]),
    )
    check_result(case, result_of(observation), POLLED_AT)


@pytest.mark.parametrize("case", cases_for("result"), ids=ids(cases_for("result")))
async def test_documented_result_answer_tells_how_a_finished_task_ended(case: Case) -> None:
    async with client_fetching_result(case) as client:
        answer = await client.fetch_status(str(case.task_id), MODEL)
    assert answer.observation is not None
    assert (answer.observation.provider_task_id, answer.observation.state) == (
        case.task_id,
        State(case.expect["state"]),
    )
    assert answer.http_status == case.expect["http_status"]
    check_result(case, result_of(answer.observation), POLLED_AT)


@pytest.mark.parametrize("status", [500, 503, 504])
async def test_a_result_error_that_names_no_failure_is_the_endpoints_and_asked_again(
    status: int,
) -> None:
    """fal's request errors name their `error_type`; a bare 5xx (a proxy's page, a
    restart) says nothing of the request, which may have succeeded: not a failure."""
    (case,) = [c for c in cases_for("result") if c.id == "fal/result_request_timeout_504"]
    bare = dataclasses.replace(case, body={"detail": "upstream connect error"})
    completed = {"status": "COMPLETED", "request_id": case.task_id}

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/status"):
            return httpx.Response(200, json=completed)
        return httpx.Response(status, content=bare.raw())

    async with client_with(bare, answer) as client:
        with pytest.raises(ProviderUnavailable):
            await client.fetch_status(str(case.task_id), MODEL)
