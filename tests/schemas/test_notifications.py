"""The outbox and its dispatches on both backends: an event per authoritative change,
written with its transition, fanned out by filters, leased, retried and recorded."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import sqlalchemy as sa

from schemas import events
from schemas.ledger import Auth, Delivery, Poll
from schemas.states import State
from schemas.store import AttemptResult, LedgerStore, NewTask
from schemas.store.notifications import DispatchJob
from schemas.tables import MESSAGE, TRANSITION
from schemas.wire import Observation
from tests.conftest import FakeClock

DAY = timedelta(days=1)


async def task(store: LedgerStore, task_id: str = "t-1", owner: str = "acme") -> str:
    row = await store.register(NewTask(provider="apidot", provider_task_id=task_id, owner=owner))
    return row.ref


def polled(ref: str, state: State, clock: FakeClock, task_id: str = "t-1") -> Poll:
    observation = Observation(task_id, state, 100 if state is State.SUCCEEDED else 10)
    return Poll(ref, clock(), None, observation=observation, http_status=200, body="{}")


def unsigned(ref: str, state: State, clock: FakeClock) -> Delivery:
    return Delivery(
        provider="apidot",
        delivery_key=f"k-{state}",
        body=b"{}",
        headers={},
        auth=Auth.TOKEN,
        observation=Observation("t-1", state, 100),
        received_at=clock(),
        task_ref=ref,
    )


async def messages(store: LedgerStore) -> list[dict[str, Any]]:
    async with store.engine.connect() as conn:
        rows = await conn.execute(sa.select(MESSAGE).order_by(MESSAGE.c.id))
        return [dict(row) for row in rows.mappings()]


async def endpoint(store: LedgerStore, name: str = "ep_1", **values: Any) -> str:
    base = {"id": name, "kind": "http", "url": "https://example.com/hook", "secrets": []}
    await store.create_endpoint(base | values)
    return name


async def test_each_transition_writes_one_event_with_its_seq(
    store: LedgerStore, clock: FakeClock
) -> None:
    ref = await task(store)
    await store.ingest([polled(ref, State.RUNNING, clock)])
    await store.ingest([polled(ref, State.SUCCEEDED, clock)])
    found = await messages(store)
    assert [m["event_type"] for m in found] == ["task.running", "task.succeeded"]
    async with store.engine.connect() as conn:
        seqs = [seq for (seq,) in await conn.execute(sa.select(TRANSITION.c.seq).offset(1))]
    assert [m["seq"] for m in found] == [m["payload"]["data"]["seq"] for m in found] == seqs
    final = found[-1]["payload"]
    assert final["schema_version"] == "1"
    assert final["data"]["state"] == "succeeded"
    assert final["data"]["version"] == (await store.get(ref)).version  # type: ignore[union-attr]
    assert len({m["msg_id"] for m in found}) == 2


async def test_an_unsigned_end_is_marked_unconfirmed_and_its_confirmation_sends_again(
    store: LedgerStore, clock: FakeClock
) -> None:
    ref = await task(store)
    await store.ingest([unsigned(ref, State.SUCCEEDED, clock)])
    await store.ingest([polled(ref, State.SUCCEEDED, clock)])
    found = await messages(store)
    assert [(m["event_type"], m["unconfirmed"]) for m in found] == [
        ("task.succeeded", True),
        ("task.succeeded", False),
    ]
    assert found[1]["seq"] is None  # a confirmation moves no state
    assert found[1]["payload"]["data"]["confirmed"] is True


async def test_a_batch_with_two_moves_versions_each_event(
    store: LedgerStore, clock: FakeClock
) -> None:
    ref = await task(store)
    await store.ingest([polled(ref, State.RUNNING, clock), polled(ref, State.SUCCEEDED, clock)])
    versions = [m["payload"]["data"]["version"] for m in await messages(store)]
    assert versions == [2, 3]
    assert (await store.get(ref)).version == 3  # type: ignore[union-attr]


async def test_fan_out_follows_each_endpoints_filters(store: LedgerStore, clock: FakeClock) -> None:
    await endpoint(store, "ep_all")
    await endpoint(store, "ep_ends", event_types=["task.succeeded"])
    await endpoint(store, "ep_other", owners=["someone-else"])
    await endpoint(store, "ep_hints", include_unconfirmed=True)
    ref = await task(store)
    await store.ingest([polled(ref, State.RUNNING, clock)])
    await store.ingest([unsigned(ref, State.SUCCEEDED, clock)])
    await store.ingest([polled(ref, State.SUCCEEDED, clock)])
    assert await store.fan_out(100) == 3
    assert await store.fan_out(100) == 0
    jobs = await store.claim_dispatches("relay", 100, 30)
    seen = sorted((j.endpoint.id, j.event_type, j.payload["data"]["confirmed"]) for j in jobs)
    assert seen == [
        ("ep_all", "task.running", True),
        ("ep_all", "task.succeeded", True),
        ("ep_ends", "task.succeeded", True),
        ("ep_hints", "task.running", True),
        ("ep_hints", "task.succeeded", False),
        ("ep_hints", "task.succeeded", True),
    ]


async def test_relays_never_share_a_dispatch(store: LedgerStore, clock: FakeClock) -> None:
    await endpoint(store)
    for number in range(30):
        ref = await task(store, f"t-{number}")
        await store.ingest([polled(ref, State.RUNNING, clock, f"t-{number}")])
    await store.fan_out(100)
    batches = await asyncio.gather(*[store.claim_dispatches(f"r{n}", 7, 30) for n in range(6)])
    ids = [job.id for batch in batches for job in batch]
    assert len(ids) == len(set(ids)) == 30


async def one_dispatch_claimed(store: LedgerStore, clock: FakeClock) -> tuple[str, DispatchJob]:
    """An endpoint, a task that ran, and the one dispatch of its event, claimed."""
    await endpoint(store)
    ref = await task(store)
    await store.ingest([polled(ref, State.RUNNING, clock)])
    await store.fan_out(10)
    (job,) = await store.claim_dispatches("relay", 10, 30)
    return ref, job


async def test_a_failure_waits_for_its_retry_and_a_spent_schedule_fails(
    store: LedgerStore, clock: FakeClock
) -> None:
    ref, job = await one_dispatch_claimed(store, clock)
    retry = AttemptResult(False, 500, 12.0, "oops", "HTTP 500", clock() + timedelta(seconds=5))
    assert await store.record_dispatch(job, "relay", retry, DAY)
    assert await store.claim_dispatches("relay", 10, 30) == []
    clock.advance(5)
    (again,) = await store.claim_dispatches("relay", 10, 30)
    assert again.attempts == 1
    await store.record_dispatch(again, "relay", AttemptResult(False, 500, error="HTTP 500"), DAY)
    clock.advance(3600)
    assert await store.claim_dispatches("relay", 10, 30) == []
    (message,) = await store.messages_of_task(ref)
    (dispatch,) = message["dispatches"]
    assert (dispatch["state"], dispatch["attempts"]) == ("failed", 2)
    assert [a["status_code"] for a in dispatch["attempts_made"]] == [500, 500]
    assert await store.retry_message(message["msg_id"]) == 1
    assert len(await store.claim_dispatches("relay", 10, 30)) == 1


async def test_a_410_disables_the_endpoint_and_its_dispatches_wait(
    store: LedgerStore, clock: FakeClock
) -> None:
    await endpoint(store)
    for number in range(2):
        ref = await task(store, f"t-{number}")
        await store.ingest([polled(ref, State.RUNNING, clock, f"t-{number}")])
    await store.fan_out(10)
    (first,) = await store.claim_dispatches("relay", 1, 30)
    await store.record_dispatch(first, "relay", AttemptResult(False, 410, gone=True), DAY)
    found = await store.endpoint("ep_1")
    assert found is not None
    assert not found.enabled
    assert found.disabled_reason == "the endpoint answered 410 Gone"
    clock.advance(60)
    assert await store.claim_dispatches("relay", 10, 30) == []
    await store.update_endpoint("ep_1", {"enabled": True})
    assert len(await store.claim_dispatches("relay", 10, 30)) == 1


async def test_an_endpoint_failing_everything_too_long_is_disabled(
    store: LedgerStore, clock: FakeClock
) -> None:
    await endpoint(store)
    ref = await task(store)
    await store.ingest([polled(ref, State.RUNNING, clock)])
    await store.fan_out(10)
    for _ in range(3):
        (job,) = await store.claim_dispatches("relay", 10, 30)
        retry = AttemptResult(False, 500, error="HTTP 500", retry_at=clock() + DAY)
        await store.record_dispatch(job, "relay", retry, timedelta(days=2))
        clock.advance(DAY.total_seconds())
    found = await store.endpoint("ep_1")
    assert found is not None
    assert not found.enabled
    assert found.disabled_reason == "every attempt failed for 2 days"


async def test_recover_resends_what_failed_since_a_time(
    store: LedgerStore, clock: FakeClock
) -> None:
    await endpoint(store)
    ref = await task(store)
    await store.ingest([polled(ref, State.RUNNING, clock)])
    since = clock()
    clock.advance(10)
    await store.ingest([polled(ref, State.SUCCEEDED, clock)])
    await store.fan_out(10)
    for job in await store.claim_dispatches("relay", 10, 30):
        await store.record_dispatch(job, "relay", AttemptResult(False, 500, error="x"), DAY)
    clock.advance(1)
    assert await store.recover_endpoint("ep_1", since + timedelta(seconds=5)) == 1
    (job,) = await store.claim_dispatches("relay", 10, 30)
    assert job.event_type == "task.succeeded"


async def test_recover_sends_what_was_made_while_the_endpoint_was_disabled(
    store: LedgerStore, clock: FakeClock
) -> None:
    """Messages fanned out while an endpoint was disabled had no dispatch for it: once it
    is enabled, recover sends each one it wants, once, beside what failed."""
    await endpoint(store)
    since = clock()
    await store.update_endpoint("ep_1", {"enabled": False})
    for number in range(3):
        ref = await task(store, f"t-{number}")
        await store.ingest([polled(ref, State.RUNNING, clock, f"t-{number}")])
    await store.fan_out(10)
    await store.update_endpoint("ep_1", {"enabled": True})
    assert await store.claim_dispatches("relay", 10, 30) == []  # none was made for it
    assert await store.recover_endpoint("ep_1", since) == 3
    assert len(await store.claim_dispatches("relay", 10, 30)) == 3
    assert await store.recover_endpoint("ep_1", since) == 0  # each once


async def test_a_message_sent_again_gets_the_whole_retry_schedule(
    store: LedgerStore, clock: FakeClock
) -> None:
    ref, job = await one_dispatch_claimed(store, clock)
    await store.record_dispatch(job, "relay", AttemptResult(False, 500, error="x"), DAY)
    (message,) = await store.messages_of_task(ref)
    assert await store.retry_message(message["msg_id"]) == 1
    (again,) = await store.claim_dispatches("relay", 10, 30)
    assert again.attempts == 0  # a retry schedule counted from here, not one try more


async def test_every_event_matches_the_json_schema_that_ships(
    store: LedgerStore, clock: FakeClock
) -> None:
    schema = json.loads((Path(events.__file__).parent / "task-event.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    ref = await task(store)
    await store.ingest([polled(ref, State.QUEUED, clock)])
    await store.ingest([unsigned(ref, State.SUCCEEDED, clock)])
    await store.ingest([polled(ref, State.SUCCEEDED, clock)])
    failed = await task(store, "t-2")
    await store.ingest([polled(failed, State.FAILED, clock, "t-2")])
    found = await messages(store)
    assert {m["event_type"] for m in found} == {"task.queued", "task.succeeded", "task.failed"}
    for message in found:
        validator.validate(message["payload"])
    assert set(schema["properties"]["type"]["enum"]) == set(events.EVENT_TYPES)
