"""Retention: finished tasks' old evidence is pruned in short batches, dedup keys outlive bodies."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from ops import cli
from ops.cli import main
from schemas.database import create_engine
from schemas.errors import ConfigError
from schemas.ledger import Auth, Delivery, Poll, Reader, read_delivery
from schemas.retention import PruneReport, RetentionCutoffs, RetentionPolicy
from schemas.settings import retention_policy
from schemas.states import Outcome, State
from schemas.store import LedgerStore, NewTask
from schemas.tables import DELIVERY
from schemas.wire import Observation, WireFormat, registry
from tests.conftest import FakeClock
from tests.support.senders import apidot_body

DAY_SECONDS = 86_400
# Bodies go after 30 days, dedup keys after 60: the window where only keys remain.
SPLIT = RetentionPolicy(retention_days=30, dedup_keep_days=60)
NOW = datetime(2025, 6, 1, tzinfo=UTC)
# A status word this release cannot read, and the next one learns.
NEW_WORD = "rendering"


def callback(task_id: str, key: str, state: State, now: datetime, ref: str | None) -> Delivery:
    return Delivery(
        provider="apidot",
        delivery_key=key,
        body=b'{"status": "finished"}',
        headers={"user-agent": "provider/1.0"},
        auth=Auth.TOKEN,
        observation=Observation(task_id, state, 50),
        received_at=now,
        task_ref=ref,
    )


def poll(ref: str, task_id: str, state: State, now: datetime) -> Poll:
    return Poll(
        task_ref=ref,
        observed_at=now,
        next_poll_at=None,
        http_status=200,
        observation=Observation(task_id, state, 100),
        body="{}",
    )


async def finished_task(store: LedgerStore, task_id: str, deliveries: int = 2) -> str:
    """A task that ran, succeeded (`deliveries` callbacks) and was confirmed by one poll."""
    row = await store.register(NewTask(provider="apidot", provider_task_id=task_id))
    ref = str(row.ref)
    now = store.clock()
    running = [
        callback(task_id, f"{task_id}-{n}", State.RUNNING, now, ref) for n in range(deliveries - 1)
    ]
    done = callback(task_id, f"{task_id}-done", State.SUCCEEDED, now, ref)
    await store.ingest([*running, done])
    await store.ingest([poll(ref, task_id, State.SUCCEEDED, now)])
    return ref


async def open_task(store: LedgerStore, task_id: str) -> str:
    row = await store.register(NewTask(provider="apidot", provider_task_id=task_id))
    ref = str(row.ref)
    now = store.clock()
    await store.ingest([callback(task_id, f"{task_id}-0", State.RUNNING, now, ref)])
    await store.ingest([poll(ref, task_id, State.RUNNING, now)])
    return ref


async def stored_bodies(engine: AsyncEngine, ref: str) -> list[tuple[bytes, Any]]:
    query = sa.select(DELIVERY.c.body, DELIVERY.c.headers).where(DELIVERY.c.task_ref == ref)
    async with engine.connect() as conn:
        return [(bytes(body), headers) for body, headers in await conn.execute(query)]


def later(clock: FakeClock, days: float) -> None:
    clock.advance(days * DAY_SECONDS)


# -- the policy (pure) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "bodies_days", "keys_days"),
    [
        (RetentionPolicy(), 30, 30),
        (RetentionPolicy(retention_days=3, dedup_keep_days=7), 3, 7),
        (RetentionPolicy(retention_days=30, dedup_keep_days=60), 30, 60),
    ],
    ids=["defaults", "keys-outlive-bodies", "long-dedup"],
)
def test_cutoffs_keep_keys_for_the_longer_of_retention_and_dedup_window(
    policy: RetentionPolicy, bodies_days: int, keys_days: int
) -> None:
    assert policy.cutoffs(NOW) == RetentionCutoffs(
        bodies_before=NOW - timedelta(days=bodies_days),
        keys_before=NOW - timedelta(days=keys_days),
    )


def test_policy_refuses_a_dedup_window_shorter_than_a_week() -> None:
    with pytest.raises(ValueError, match="dedup_keep_days"):
        RetentionPolicy(retention_days=30, dedup_keep_days=6)


def test_settings_read_retention_from_the_environment() -> None:
    environ = {"TASKLEDGER_RETENTION_DAYS": "14", "TASKLEDGER_DEDUP_KEEP_DAYS": "10"}
    assert retention_policy(environ) == RetentionPolicy(retention_days=14, dedup_keep_days=10)
    assert retention_policy({}) == RetentionPolicy(retention_days=30, dedup_keep_days=7)


def test_settings_name_the_variable_of_a_too_short_dedup_window() -> None:
    with pytest.raises(ConfigError, match="TASKLEDGER_DEDUP_KEEP_DAYS"):
        retention_policy({"TASKLEDGER_DEDUP_KEEP_DAYS": "3"})


# -- the store -------------------------------------------------------------------


async def test_old_bodies_go_but_a_resend_is_still_a_duplicate(
    store: LedgerStore, engine: AsyncEngine, clock: FakeClock
) -> None:
    ref = await finished_task(store, "t-1")
    later(clock, 31)
    report = await store.prune(SPLIT.cutoffs(clock()))
    assert (report.bodies_stripped, report.deliveries_deleted) == (2, 0)
    assert await stored_bodies(engine, ref) == [(b"", None), (b"", None)]
    [stored] = await store.ingest([callback("t-1", "t-1-done", State.SUCCEEDED, clock(), ref)])
    assert stored.outcome is Outcome.DUPLICATE
    deliveries = (await store.timeline(ref)).deliveries
    assert sorted(d.duplicate_count for d in deliveries) == [0, 1]


async def test_polls_of_finished_tasks_go_after_retention(
    store: LedgerStore, clock: FakeClock
) -> None:
    ref = await finished_task(store, "t-1")
    later(clock, 31)
    report = await store.prune(SPLIT.cutoffs(clock()))
    assert report.observations_deleted == 1
    assert (await store.timeline(ref)).polls == []


async def test_deliveries_past_the_dedup_window_are_deleted_but_task_and_transitions_stay(
    store: LedgerStore, clock: FakeClock
) -> None:
    ref = await finished_task(store, "t-1")
    before = await store.timeline(ref)
    later(clock, 61)
    report = await store.prune(SPLIT.cutoffs(clock()))
    after = await store.timeline(ref)
    task = await store.get(ref)
    assert (report.deliveries_deleted, report.bodies_stripped) == (2, 0)
    assert after.deliveries == []
    assert after.transitions == before.transitions
    assert task is not None
    assert task.state == "succeeded"


async def test_short_retention_still_keeps_dedup_keys_for_a_week(
    store: LedgerStore, clock: FakeClock
) -> None:
    policy = RetentionPolicy(retention_days=3, dedup_keep_days=7)
    ref = await finished_task(store, "t-1")
    later(clock, 4)
    first = await store.prune(policy.cutoffs(clock()))
    later(clock, 4)
    second = await store.prune(policy.cutoffs(clock()))
    assert (first.bodies_stripped, first.deliveries_deleted) == (2, 0)
    assert (second.bodies_stripped, second.deliveries_deleted) == (0, 2)
    assert (await store.timeline(ref)).deliveries == []


async def test_open_tasks_are_never_pruned(store: LedgerStore, clock: FakeClock) -> None:
    ref = await open_task(store, "t-open")
    before = await store.timeline(ref)
    later(clock, 365)
    report = await store.prune(SPLIT.cutoffs(clock()))
    assert report == PruneReport()
    assert await store.timeline(ref) == before


async def test_unmatched_deliveries_go_only_after_the_dedup_window(
    store: LedgerStore, clock: FakeClock
) -> None:
    [stored] = await store.ingest([callback("nobody", "k-1", State.SUCCEEDED, clock(), None)])
    assert stored.outcome is Outcome.UNMATCHED
    later(clock, 31)
    kept = await store.prune(SPLIT.cutoffs(clock()))
    later(clock, 30)
    gone = await store.prune(SPLIT.cutoffs(clock()))
    assert (kept.bodies_stripped, kept.deliveries_deleted) == (0, 0)
    assert gone.deliveries_deleted == 1


async def test_dry_run_changes_nothing_and_predicts_the_real_run(
    store: LedgerStore, clock: FakeClock
) -> None:
    old = await finished_task(store, "t-old", deliveries=3)
    later(clock, 35)
    middle = await finished_task(store, "t-middle", deliveries=2)
    await open_task(store, "t-open")
    later(clock, 31)
    cutoffs = SPLIT.cutoffs(clock())
    before = [await store.timeline(ref) for ref in (old, middle)]
    dry = await store.prune(cutoffs, batch_size=2, dry_run=True)
    assert [await store.timeline(ref) for ref in (old, middle)] == before
    real = await store.prune(cutoffs, batch_size=2)
    assert dry == PruneReport(
        bodies_stripped=2, deliveries_deleted=3, observations_deleted=2, batches=4, dry_run=True
    )
    assert real == PruneReport(
        bodies_stripped=2, deliveries_deleted=3, observations_deleted=2, batches=4
    )


async def test_each_batch_is_its_own_bounded_transaction(
    store: LedgerStore, clock: FakeClock
) -> None:
    await finished_task(store, "t-1", deliveries=5)
    later(clock, 61)
    report = await store.prune(SPLIT.cutoffs(clock()), batch_size=2)
    # 5 deliveries in 2 + 2 + 1, and the single poll in one more.
    assert (report.deliveries_deleted, report.observations_deleted) == (5, 1)
    assert report.batches == 3 + 1


async def test_ingestion_keeps_succeeding_during_a_large_prune(
    store: LedgerStore, clock: FakeClock
) -> None:
    for n in range(6):
        await finished_task(store, f"t-{n}", deliveries=500)
    later(clock, 61)
    live = await open_task(store, "t-live")

    async def keep_ingesting() -> list[Outcome]:
        outcomes = []
        for n in range(60):
            delivery = callback("t-live", f"live-{n}", State.RUNNING, clock(), live)
            [stored] = await store.ingest([delivery])
            outcomes.append(stored.outcome)
        return outcomes

    report, outcomes = await asyncio.gather(
        store.prune(SPLIT.cutoffs(clock()), batch_size=100), keep_ingesting()
    )
    assert report.deliveries_deleted == 3_000
    assert report.batches >= 30
    assert len(outcomes) == 60
    assert len((await store.timeline(live)).deliveries) == 61


# -- deliveries not read yet -------------------------------------------------------


async def kept_unread(store: LedgerStore, task_id: str, ref: str | None) -> bytes:
    """A callback whose status word this release cannot read, kept `unrecognized`."""
    body = apidot_body(task_id, NEW_WORD, 40)
    raw = Delivery("apidot", f"{task_id}-new", body, {}, Auth.TOKEN, None, store.clock(), ref)
    [stored] = await store.ingest([read_delivery(raw, Reader(WireFormat.APIDOT))])
    assert stored.outcome is Outcome.UNRECOGNIZED
    return body


async def unread_bodies(engine: AsyncEngine) -> list[bytes]:
    query = sa.select(DELIVERY.c.body).where(DELIVERY.c.outcome == Outcome.UNRECOGNIZED.value)
    async with engine.connect() as conn:
        return [bytes(body) for body in await conn.scalars(query)]


@pytest.mark.parametrize("of_a_task", [True, False], ids=["finished-task", "no-task"])
async def test_prune_keeps_an_unread_delivery_for_refold_to_read(
    store: LedgerStore,
    engine: AsyncEngine,
    database_url: str,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    of_a_task: bool,
) -> None:
    ref = await finished_task(store, "t-1") if of_a_task else None
    body = await kept_unread(store, "t-1" if of_a_task else "nobody", ref)
    later(clock, 365)
    await store.prune(SPLIT.cutoffs(clock()))
    assert await unread_bodies(engine) == [body]
    monkeypatch.setitem(registry.DEFINITIONS[WireFormat.APIDOT].states, NEW_WORD, State.RUNNING)
    environ = {"TASKLEDGER_DATABASE_URL": database_url, "TASKLEDGER_PROVIDERS": "apidot"}
    counts = await cli._refold(environ, None, None, dry_run=False)
    assert counts["seen"] == 1
    assert Outcome.UNRECOGNIZED.value not in counts


async def test_a_delivery_once_read_is_pruned_as_any_other(
    store: LedgerStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    await kept_unread(store, "nobody", None)
    later(clock, 61)
    kept = await store.prune(SPLIT.cutoffs(clock()))
    monkeypatch.setitem(registry.DEFINITIONS[WireFormat.APIDOT].states, NEW_WORD, State.RUNNING)
    reading = LedgerStore(store.engine, clock, {"apidot": Reader(WireFormat.APIDOT)})
    try:
        assert await reading.refold() == {"seen": 1, "unmatched": 1}
    finally:
        await reading.close()
    gone = await store.prune(SPLIT.cutoffs(clock()))
    assert (kept.deliveries_deleted, gone.deliveries_deleted) == (0, 1)


# -- the command -----------------------------------------------------------------


async def test_prune_command_prints_what_it_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TASKLEDGER_DATABASE_URL", url)
    assert await asyncio.to_thread(main, ["db", "upgrade"]) == 0
    await _seed_old_finished_task(url)
    argv = ["db", "prune", "--retention-days", "30"]
    assert await asyncio.to_thread(main, [*argv, "--dry-run"]) == 0
    assert await asyncio.to_thread(main, argv) == 0
    out = capsys.readouterr().out
    assert "would prune (dry run)" in out
    assert len(re.findall(r"deliveries deleted +2\n", out)) == 2
    assert len(re.findall(r"observations deleted +1\n", out)) == 2
    assert len(re.findall(r"idempotency keys deleted +0\n", out)) == 2


async def _seed_old_finished_task(url: str) -> None:
    engine = create_engine(url)
    try:
        past = FakeClock(datetime.now(UTC) - timedelta(days=100))
        await finished_task(LedgerStore(engine, past), "t-old")
    finally:
        await engine.dispose()
