"""A task's provider id comes from the provider's own word: the submit answer or the
user's `PATCH`. Callbacks that propose one before either has spoken are kept and held,
and an id another task holds is never adopted, nor ever a write error."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.ledger import Auth, Delivery, Poll, Reader, Submission, SubmissionStatus, read_delivery
from schemas.states import Outcome, State
from schemas.store import LedgerStore, NewTask
from schemas.wire import Observation, WireFormat
from tests.conftest import FakeClock
from tests.support.senders import apidot_body

READERS = {"apidot": Reader(WireFormat.APIDOT), "openai": Reader(WireFormat.OPENAI)}


@pytest.fixture
async def store(engine: AsyncEngine, clock: FakeClock) -> AsyncIterator[LedgerStore]:
    store = LedgerStore(engine, clock, READERS)
    yield store
    await store.close()


def callback(ref: str, body: bytes, now: datetime) -> Delivery:
    raw = Delivery("apidot", f"key-{hash(body)}", body, {}, Auth.TOKEN, None, now, ref)
    return read_delivery(raw, READERS["apidot"])


def answered(ref: str, task_id: str, now: datetime) -> Submission:
    return Submission(
        ref, now, SubmissionStatus.SENT, now, observation=Observation(task_id, State.QUEUED)
    )


async def submitting(store: LedgerStore) -> str:
    row = await store.register(NewTask("apidot", submit=True))
    (claim,) = await store.claim_due("r1", "apidot", 10, 60)
    assert claim.submission == SubmissionStatus.PENDING.value
    return str(row.ref)


async def deliveries(store: LedgerStore, ref: str) -> list[dict[str, object]]:
    return (await store.timeline(ref)).deliveries


async def test_a_wrong_id_before_the_submit_answer_is_held_then_foreign(
    store: LedgerStore, clock: FakeClock
) -> None:
    ref = await submitting(store)
    (held,) = await store.ingest([callback(ref, apidot_body("wrong-id", "finished"), clock())])
    assert held.outcome is Outcome.HELD
    task = await store.get(ref)
    assert task is not None
    assert task.provider_task_id is None
    assert task.state == State.SUBMITTED.value
    await store.ingest([answered(ref, "real-id", clock())])
    task = await store.get(ref)
    assert task is not None
    assert (task.provider_task_id, task.state) == ("real-id", State.QUEUED.value)
    (kept,) = await deliveries(store, ref)
    assert kept.outcome == Outcome.FOREIGN.value
    (genuine,) = await store.ingest([callback(ref, apidot_body("real-id", "running"), clock())])
    assert genuine.outcome is Outcome.APPLIED


async def test_the_genuine_callback_held_is_folded_in_by_the_submit_answer(
    store: LedgerStore, clock: FakeClock
) -> None:
    ref = await submitting(store)
    await store.ingest([callback(ref, apidot_body("real-id", "finished"), clock())])
    await store.ingest([answered(ref, "real-id", clock())])
    task = await store.get(ref)
    assert task is not None
    assert task.state == State.SUCCEEDED.value
    assert task.result["urls"] == ["https://cdn.example/real-id.mp4"]
    (kept,) = await deliveries(store, ref)
    assert kept.outcome == Outcome.APPLIED.value


async def test_an_unknown_submission_adopts_the_one_id_its_callbacks_proposed(
    store: LedgerStore, clock: FakeClock
) -> None:
    ref = await submitting(store)
    await store.ingest([callback(ref, apidot_body("only-id", "running", 30), clock())])
    unknown = Submission(ref, clock(), SubmissionStatus.UNKNOWN, clock(), error="timed out")
    await store.ingest([unknown])
    task = await store.get(ref)
    assert task is not None
    assert (task.provider_task_id, task.state) == ("only-id", State.RUNNING.value)


async def test_an_unknown_submission_with_two_proposed_ids_adopts_neither(
    store: LedgerStore, clock: FakeClock
) -> None:
    ref = await submitting(store)
    for task_id in ("id-one", "id-two"):
        await store.ingest([callback(ref, apidot_body(task_id, "running"), clock())])
    await store.ingest([Submission(ref, clock(), SubmissionStatus.UNKNOWN, clock())])
    task = await store.get(ref)
    assert task is not None
    assert task.provider_task_id is None
    assert "2 task ids" in task.attention
    assert {d.outcome for d in await deliveries(store, ref)} == {Outcome.HELD.value}


async def test_a_submit_answer_naming_another_tasks_id_is_flagged_not_a_write_error(
    store: LedgerStore, clock: FakeClock
) -> None:
    await store.register(NewTask("apidot", provider_task_id="taken"))
    ref = await submitting(store)
    (stored,) = await store.ingest([answered(ref, "taken", clock())])
    assert stored.outcome is Outcome.CONFLICT
    task = await store.get(ref)
    assert task is not None
    assert task.provider_task_id is None
    assert "taken" in task.attention
    assert task.submission == SubmissionStatus.SENT.value


async def test_two_tasks_proposing_one_id_in_one_batch_adopt_it_once(
    store: LedgerStore, clock: FakeClock
) -> None:
    first = await store.register(NewTask("apidot"))
    second = await store.register(NewTask("apidot"))
    body = apidot_body("shared", "running")
    results = await store.ingest(
        [callback(first.ref, body, clock())] * 1 + [callback(second.ref, body, clock())]
    )
    assert [r.refused for r in results] == [False, True]
    task = await store.get(second.ref)
    assert task is not None
    assert task.provider_task_id is None


async def test_patch_folds_in_the_held_callbacks_and_refuses_the_others(
    store: LedgerStore, clock: FakeClock
) -> None:
    ref = await submitting(store)
    await store.ingest([callback(ref, apidot_body("mine", "running", 20), clock())])
    await store.ingest([callback(ref, apidot_body("not-mine", "finished"), clock())])
    task = await store.attach(ref, "mine")
    assert (task.state, task.progress) == (State.RUNNING.value, 20)
    outcomes = sorted(str(d.outcome) for d in await deliveries(store, ref))
    assert outcomes == [Outcome.APPLIED.value, Outcome.FOREIGN.value]


# Found by the chaos runs (tests/e2e/test_wrong_task_ids.py), each reduced to its store calls.


def signed_event(video_id: str, kind: str, now: datetime) -> Delivery:
    """A thin OpenAI event as the webhook route stores it once its signature verified."""
    body = orjson.dumps(
        {"id": "evt_1", "object": "event", "created_at": 1, "type": kind, "data": {"id": video_id}}
    )
    return read_delivery(
        Delivery("openai", f"wh_{video_id}", body, {}, Auth.SIGNATURE, None, now), READERS["openai"]
    )


async def test_a_thin_event_whose_fetch_failed_is_fetched_again(
    store: LedgerStore, clock: FakeClock
) -> None:
    ref = (await store.register(NewTask("openai", provider_task_id="video_1"))).ref
    await store.ingest([signed_event("video_1", "video.completed", clock())])
    retry_at = clock() + timedelta(seconds=5)
    await store.ingest([Poll(ref, clock(), retry_at, http_status=429, error="rate limited")])
    task = await store.get(ref)
    assert task is not None
    assert (task.state, task.result) == (State.SUCCEEDED.value, None)
    assert task.next_poll_at is not None


async def test_a_signed_event_before_the_submit_answer_is_folded_in_by_it(
    store: LedgerStore, clock: FakeClock
) -> None:
    ref = (await store.register(NewTask("openai", submit=True))).ref
    (claim,) = await store.claim_due("r1", "openai", 10, 60)
    assert claim.ref == ref
    (early,) = await store.ingest([signed_event("video_1", "video.completed", clock())])
    assert early.outcome is Outcome.UNMATCHED
    answer = Observation("video_1", State.QUEUED)
    await store.ingest([Submission(ref, clock(), SubmissionStatus.SENT, clock(), answer)])
    task = await store.get(ref)
    assert task is not None
    assert task.provider_task_id == "video_1"
    deliveries = (await store.timeline(ref)).deliveries
    assert [d.outcome for d in deliveries] == [Outcome.APPLIED.value]
    assert task.state == State.SUCCEEDED.value
