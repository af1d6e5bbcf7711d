"""The archive's rows on both backends: planned in the transaction that makes a success
authoritative, leased earliest expiry first, recorded only by their lease holder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.ledger import Auth, Delivery, Poll, Reader
from schemas.states import State
from schemas.store import ArchivedFile, ArtifactState, Attempt, LedgerStore, NewTask, artifacts
from schemas.tables import MESSAGE
from schemas.wire import Observation, WireFormat
from tests.conftest import FakeClock

URL = "https://cdn.example.com/v.mp4?sig=secret"


@pytest.fixture
async def archiving(engine: AsyncEngine, clock: FakeClock) -> AsyncIterator[LedgerStore]:
    readers = {"apidot": Reader(WireFormat.APIDOT, 3600.0, archive=True)}
    store = LedgerStore(engine, clock, readers)
    yield store
    await store.close()


def succeeded(task_id: str, *urls: str, expires_at: datetime | None = None) -> Observation:
    extra = {"expires_at": expires_at.isoformat()} if expires_at else {}
    return Observation(task_id, State.SUCCEEDED, 100, urls, extra=extra)


def unsigned(ref: str, observation: Observation, now: datetime, key: str = "k") -> Delivery:
    return Delivery(
        provider="apidot",
        delivery_key=key,
        body=b"{}",
        headers={},
        auth=Auth.TOKEN,
        observation=observation,
        received_at=now,
        task_ref=ref,
    )


def polled(ref: str, observation: Observation, now: datetime) -> Poll:
    return Poll(ref, now, None, observation=observation, http_status=200, body="{}")


async def task(store: LedgerStore, task_id: str = "t-1") -> str:
    return (await store.register(NewTask(provider="apidot", provider_task_id=task_id))).ref


async def test_an_unsigned_success_plans_nothing_until_a_poll_confirms_it(
    archiving: LedgerStore, clock: FakeClock
) -> None:
    ref = await task(archiving)
    await archiving.ingest([unsigned(ref, succeeded("t-1", URL), clock())])
    assert await archiving.artifacts(ref) == []
    await archiving.ingest([polled(ref, succeeded("t-1", URL), clock())])
    (artifact,) = await archiving.artifacts(ref)
    assert (artifact.name, artifact.source, artifact.state) == ("output-1", "urls:0", "pending")
    assert artifact.expires_at == clock() + timedelta(seconds=3600)


async def test_a_success_confirmed_again_plans_its_outputs_once(
    archiving: LedgerStore, clock: FakeClock
) -> None:
    ref = await task(archiving)
    for _ in range(3):
        await archiving.ingest([polled(ref, succeeded("t-1", URL, URL + "2"), clock())])
    names = [a.name for a in await archiving.artifacts(ref)]
    assert names == ["output-1", "output-2"]


async def test_the_results_own_expiry_is_the_deadline(
    archiving: LedgerStore, clock: FakeClock
) -> None:
    ref = await task(archiving)
    when = clock() + timedelta(minutes=20)
    await archiving.ingest([polled(ref, succeeded("t-1", URL, expires_at=when), clock())])
    (artifact,) = await archiving.artifacts(ref)
    assert artifact.expires_at == when


async def test_a_provider_not_archived_plans_nothing(store: LedgerStore, clock: FakeClock) -> None:
    ref = await task(store)
    await store.ingest([polled(ref, succeeded("t-1", URL), clock())])
    assert await store.artifacts(ref) == []


async def test_a_failure_plans_nothing(archiving: LedgerStore, clock: FakeClock) -> None:
    ref = await task(archiving)
    await archiving.ingest([polled(ref, Observation("t-1", State.FAILED, 0), clock())])
    assert await archiving.artifacts(ref) == []


async def test_claims_go_earliest_expiry_first_and_are_leased(
    archiving: LedgerStore, clock: FakeClock
) -> None:
    late, soon = await task(archiving, "t-late"), await task(archiving, "t-soon")
    for ref, task_id, minutes in ((late, "t-late", 50), (soon, "t-soon", 5)):
        expiry = clock() + timedelta(minutes=minutes)
        await archiving.ingest([polled(ref, succeeded(task_id, URL, expires_at=expiry), clock())])
    jobs = await archiving.claim_artifacts("a", 10, 60)
    assert [job.artifact.task_ref for job in jobs] == [soon, late]
    assert jobs[0].result is not None
    assert jobs[0].result["urls"] == [URL]
    assert await archiving.claim_artifacts("b", 10, 60) == []
    clock.advance(61)
    assert len(await archiving.claim_artifacts("b", 10, 60)) == 2


async def test_concurrent_archivers_never_share_an_artifact(
    archiving: LedgerStore, clock: FakeClock
) -> None:
    for number in range(40):
        ref = await task(archiving, f"t-{number}")
        await archiving.ingest([polled(ref, succeeded(f"t-{number}", URL), clock())])
    batches = await asyncio.gather(
        *[archiving.claim_artifacts(f"owner-{n}", 7, 60) for n in range(8)]
    )
    ids = [job.artifact.id for batch in batches for job in batch]
    assert len(ids) == len(set(ids)) == 40


async def test_only_the_lease_holder_records_an_attempt(
    archiving: LedgerStore, clock: FakeClock
) -> None:
    ref = await task(archiving)
    await archiving.ingest([polled(ref, succeeded("t-1", URL), clock())])
    (job,) = await archiving.claim_artifacts("a", 1, 60)
    stored = ArchivedFile("sha256/ab/cd/x", 10, "ab" * 32, "video/mp4")
    done = Attempt(ArtifactState.ARCHIVED, "cdn.example.com", stored)
    assert not await archiving.record_attempt(job.artifact.id, "someone-else", done)
    assert await archiving.record_attempt(job.artifact.id, "a", done)
    (artifact,) = await archiving.artifacts(ref)
    assert (artifact.state, artifact.size, artifact.attempts) == ("archived", 10, 1)
    assert artifact.archived_at == clock()
    assert artifact.lease_owner is None
    assert (await archiving.timeline(ref)).artifacts == [artifact]


async def test_a_retry_waits_for_its_time(archiving: LedgerStore, clock: FakeClock) -> None:
    ref = await task(archiving)
    await archiving.ingest([polled(ref, succeeded("t-1", URL), clock())])
    (job,) = await archiving.claim_artifacts("a", 1, 60)
    later = clock() + timedelta(seconds=30)
    retry = Attempt(ArtifactState.PENDING, "cdn.example.com", error="timeout", retry_at=later)
    assert await archiving.record_attempt(job.artifact.id, "a", retry)
    assert await archiving.claim_artifacts("a", 1, 60) == []
    clock.advance(30)
    (again,) = await archiving.claim_artifacts("a", 1, 60)
    assert (again.artifact.attempts, again.artifact.last_error) == (1, "timeout")


async def test_prune_deletes_a_file_only_when_no_archived_output_holds_it(
    archiving: LedgerStore, clock: FakeClock
) -> None:
    shared = ArchivedFile("sha256/aa/aa/shared", 1, "aa" * 32, "video/mp4")
    own = ArchivedFile("sha256/bb/bb/own", 1, "bb" * 32, "video/mp4")
    for task_id, files in (("t-old", (shared, own)), ("t-new", (shared,))):
        clock.advance(3600)
        ref = await task(archiving, task_id)
        urls = [f"{URL}{n}" for n in range(len(files))]
        await archiving.ingest([polled(ref, succeeded(task_id, *urls), clock())])
        jobs = await archiving.claim_artifacts("a", 10, 60)
        for job, file in zip(jobs, files, strict=True):
            await archiving.record_attempt(
                job.artifact.id, "a", Attempt(ArtifactState.ARCHIVED, "h", file)
            )
    cutoff = clock() - timedelta(seconds=1800)
    # The dry run names the files the real run then deletes: not the one a newer output holds.
    assert await archiving.prune_artifacts(cutoff, dry_run=True) == (2, [own.storage_key])
    assert await archiving.prune_artifacts(cutoff) == (2, [own.storage_key])
    assert await archiving.prune_artifacts(cutoff) == (0, [])
    states = {a.state for a in await archiving.artifacts(ref)}
    assert states == {"archived"}


async def test_the_last_output_settled_announces_the_archive_once(
    archiving: LedgerStore, clock: FakeClock
) -> None:
    ref = await task(archiving)
    await archiving.ingest([polled(ref, succeeded("t-1", URL, URL + "2"), clock())])
    first, second = await archiving.claim_artifacts("a", 10, 60)
    stored = ArchivedFile("sha256/ab/cd/x", 10, "ab" * 32, "video/mp4")
    await archiving.record_attempt(
        first.artifact.id, "a", Attempt(ArtifactState.ARCHIVED, "h", stored)
    )
    assert await archived_events(archiving) == []
    missed = Attempt(ArtifactState.MISSED, "h", error="expired")
    await archiving.record_attempt(second.artifact.id, "a", missed)
    (event,) = await archived_events(archiving)
    outputs = {a["name"]: a["state"] for a in event["data"]["artifacts"]}
    assert outputs == {"output-1": "archived", "output-2": "missed"}
    assert event["data"]["ref"] == ref
    assert event["data"]["state"] == "succeeded"


async def archived_events(store: LedgerStore) -> list[dict[str, object]]:
    async with store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(MESSAGE.c.payload).where(MESSAGE.c.event_type == "task.archived")
        )
        return [payload for (payload,) in rows]


# SQLite runs one write transaction at a time: there no two can meet this way.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_two_transactions_settling_a_tasks_last_outputs_at_once_announce_it_once(
    archiving: LedgerStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both record their attempt before either checks what is left pending: on PostgreSQL
    they run side by side, and each would see the other's output as still pending."""
    ref = await task(archiving)
    await archiving.ingest([polled(ref, succeeded("t-1", URL, URL + "2"), clock())])
    first, second = await archiving.claim_artifacts("a", 10, 60)
    announce = artifacts._announce_if_settled
    arrived: list[str] = []
    both = asyncio.Event()

    async def after_both_wrote(conn: Any, task_ref: str, now: datetime) -> None:
        arrived.append(task_ref)
        if len(arrived) == 2:
            both.set()
        await both.wait()  # each has written its output, neither has committed
        await announce(conn, task_ref, now)

    monkeypatch.setattr(artifacts, "_announce_if_settled", after_both_wrote)
    stored = ArchivedFile("sha256/ab/cd/x", 10, "ab" * 32, "video/mp4")
    done = Attempt(ArtifactState.ARCHIVED, "h", stored)
    recorded = await asyncio.gather(
        archiving.record_attempt(first.artifact.id, "a", done),
        archiving.record_attempt(second.artifact.id, "a", done),
    )
    assert list(recorded) == [True, True]
    (event,) = await archived_events(archiving)
    assert {a["state"] for a in event["data"]["artifacts"]} == {"archived"}
