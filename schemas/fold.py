"""Folds a batch of evidence into the tasks it touches, in memory, deciding every write.

The store loads the rows a batch needs, hands them to `Fold`, and writes what it
decided in one transaction. No SQL and no clock here: `now` is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas.ledger import (
    Delivery,
    DeliveryId,
    Evidence,
    Expiry,
    Poll,
    Stored,
    Submission,
    SubmissionStatus,
    report_of,
    settled,
)
from schemas.states import (
    REAL_TERMINAL,
    TERMINAL,
    Outcome,
    Report,
    Snapshot,
    Source,
    State,
    merge,
)

BODY_KEEP_CHARS = 4_000


@dataclass(slots=True)
class TaskWork:
    """A task row being changed by the batch, with its merge-relevant view."""

    row: dict[str, Any]
    snapshot: Snapshot
    # The row as loaded, to write back only what the batch changed.
    loaded: dict[str, Any]
    changed: bool = False
    # Set when a thin or unconfirmed report means the provider should be asked now.
    poll_now: bool = False

    @classmethod
    def of(cls, row: dict[str, Any]) -> TaskWork:
        snapshot = Snapshot(
            state=State(row["state"]),
            progress=row["progress"],
            result=row["result"],
            source=Source(row["state_source"]),
            authority=row["authority"],
            conflict=row["conflict"],
        )
        return cls(row=dict(row), snapshot=snapshot, loaded=row)

    def changed_fields(self, fields: tuple[str, ...]) -> tuple[str, ...]:
        """Those of `fields` whose value the batch changed, in the order given."""
        row, loaded = self.row, self.loaded
        return tuple(name for name in fields if row[name] != loaded[name])

    @property
    def ref(self) -> str:
        return str(self.row["ref"])


@dataclass(slots=True)
class Transition:
    task_ref: str
    from_state: str | None
    to_state: str
    source: str
    source_row: dict[str, Any] | None
    at: datetime


@dataclass(slots=True)
class Writes:
    """Everything one batch writes; rows are dicts ready for executemany."""

    deliveries: list[dict[str, Any]] = field(default_factory=list)
    observations: list[dict[str, Any]] = field(default_factory=list)
    duplicates: dict[DeliveryId, int] = field(default_factory=dict)
    transitions: list[Transition] = field(default_factory=list)


class Fold:
    """Decides, item by item, what a batch of evidence does to the ledger."""

    def __init__(
        self,
        tasks: list[dict[str, Any]],
        existing: dict[DeliveryId, dict[str, Any]],
        now: datetime,
    ) -> None:
        self.now = now
        self.tasks = {row["ref"]: TaskWork.of(row) for row in tasks}
        self._by_provider_id = {
            (w.row["provider"], w.row["provider_task_id"]): w
            for w in self.tasks.values()
            if w.row["provider_task_id"]
        }
        self._existing = existing
        self.writes = Writes()

    def apply(self, item: Evidence) -> Stored:
        if isinstance(item, Delivery):
            return self._delivery(item)
        if isinstance(item, Poll):
            return self._poll(item)
        if isinstance(item, Submission):
            return self._submission(item)
        return self._expiry(item)

    def changed_tasks(self) -> list[TaskWork]:
        return [work for work in self.tasks.values() if work.changed]

    # -- callbacks -------------------------------------------------------------

    def _delivery(self, item: Delivery) -> Stored:
        key = item.identity
        if key in self._existing:
            return self._duplicate(key)
        work, refusal = self._owner_of(item)
        if refusal:
            return Stored(Outcome.UNMATCHED, refusal=refusal)
        row = self._delivery_row(item, work)
        self._existing[key] = row
        if work is None:
            return Stored(Outcome.UNMATCHED)
        report = report_of(item.observation, Source.WEBHOOK, signed=item.signed)
        outcome = self._merge(work, report, row, Source.WEBHOOK)
        row["outcome"] = outcome.value
        # A thin event lacks the result, an unsigned terminal one needs confirming: ask now.
        unconfirmed = work.snapshot.state in TERMINAL and not work.snapshot.confirmed
        work.poll_now = work.poll_now or item.observation.needs_fetch or unconfirmed
        return Stored(outcome, work.ref, work.snapshot.state)

    def _duplicate(self, key: DeliveryId) -> Stored:
        self.writes.duplicates[key] = self.writes.duplicates.get(key, 0) + 1
        first = self._existing[key]
        state = State(first["state"]) if first.get("state") else None
        return Stored(Outcome.DUPLICATE, first.get("task_ref"), state)

    def _owner_of(self, item: Delivery) -> tuple[TaskWork | None, str | None]:
        """The task a delivery belongs to, or why it may not touch the one it names."""
        task_id = item.observation.provider_task_id
        if item.task_ref is None:
            return self._by_provider_id.get((item.provider, task_id)), None
        work = self.tasks.get(item.task_ref)
        if work is None:
            return None, None
        if work.row["provider"] != item.provider:
            return None, "wrong_provider"
        known = work.row["provider_task_id"]
        if known is None:
            return self._adopt(work, task_id)
        return (work, None) if known == task_id else (None, "foreign_task")

    def _adopt(self, work: TaskWork, task_id: str) -> tuple[TaskWork | None, str | None]:
        """The callback beat the submit response: the task learns its provider id here."""
        holder = self._by_provider_id.get((work.row["provider"], task_id))
        if holder is not None and holder is not work:
            return None, "foreign_task"
        work.row["provider_task_id"] = task_id
        work.changed = True
        self._by_provider_id[(work.row["provider"], task_id)] = work
        return work, None

    def _delivery_row(self, item: Delivery, work: TaskWork | None) -> dict[str, Any]:
        row: dict[str, Any] = {
            "provider": item.provider,
            "delivery_key": item.delivery_key,
            "task_ref": work.ref if work else None,
            "provider_task_id": item.observation.provider_task_id,
            "body": item.body,
            "headers": item.headers,
            "auth": item.auth.value,
            "state": item.observation.state.value,
            "outcome": Outcome.UNMATCHED.value,
            "duplicate_count": 0,
            "received_at": item.received_at,
            "last_seen_at": item.received_at,
        }
        self.writes.deliveries.append(row)
        return row

    # -- polls and expiry ------------------------------------------------------

    def _poll(self, item: Poll) -> Stored:
        work = self.tasks.get(item.task_ref)
        if work is None:
            return Stored(Outcome.UNMATCHED, refusal="unknown_task")
        row = self._observation_row(item)
        outcome = Outcome.ERROR
        if item.observation is not None:
            outcome = self._merge(work, report_of(item.observation, Source.POLL), row, Source.POLL)
        row["outcome"] = outcome.value
        self._reschedule(work, item.next_poll_at)
        return Stored(outcome, work.ref, work.snapshot.state)

    def _observation_row(self, item: Poll) -> dict[str, Any]:
        observation = item.observation
        row: dict[str, Any] = {
            "task_ref": item.task_ref,
            "observed_at": item.observed_at,
            "http_status": item.http_status,
            "state": observation.state.value if observation else None,
            "progress": observation.progress if observation else None,
            "body": item.body[:BODY_KEEP_CHARS] if item.body else None,
            "error": item.error,
            "outcome": Outcome.ERROR.value,
        }
        self.writes.observations.append(row)
        return row

    def _reschedule(self, work: TaskWork, next_poll_at: datetime | None) -> None:
        work.row["poll_attempts"] = work.row["poll_attempts"] + 1
        work.row["next_poll_at"] = next_poll_at
        work.row["lease_owner"] = None
        work.row["lease_until"] = None
        work.poll_now = False
        work.changed = True

    def _expiry(self, item: Expiry) -> Stored:
        work = self.tasks.get(item.task_ref)
        if work is None:
            return Stored(Outcome.UNMATCHED, refusal="unknown_task")
        report = Report(State.LOST, Source.EXPIRY, result={"lost_reason": item.reason})
        outcome = self._merge(work, report, None, Source.EXPIRY)
        self._reschedule(work, None)
        return Stored(outcome, work.ref, work.snapshot.state)

    def _submission(self, item: Submission) -> Stored:
        work = self.tasks.get(item.task_ref)
        if work is None:
            return Stored(Outcome.UNMATCHED, refusal="unknown_task")
        work.row["submission"] = item.status.value
        outcome = Outcome.ERROR
        if item.observation is not None:
            if work.row["provider_task_id"] is None:
                work.row["provider_task_id"] = item.observation.provider_task_id
            outcome = self._merge(work, report_of(item.observation, Source.API), None, Source.API)
        elif item.status is SubmissionStatus.REJECTED:
            report = Report(State.FAILED, Source.API, result={"error": {"message": item.error}})
            outcome = self._merge(work, report, None, Source.API)
        self._reschedule(work, item.next_poll_at)
        work.row["poll_attempts"] = 0
        return Stored(outcome, work.ref, work.snapshot.state)

    # -- the merge -------------------------------------------------------------

    def _merge(
        self, work: TaskWork, report: Report, source_row: dict[str, Any] | None, source: Source
    ) -> Outcome:
        before = work.snapshot
        decision = merge(before, report)
        work.row["last_event_at"] = self.now
        work.changed = True
        if not decision.changes_task(before):
            return decision.outcome
        after = decision.snapshot
        work.snapshot = after
        self._write_snapshot(work.row, after)
        if after.state is not before.state:
            if after.state in TERMINAL:
                work.row["terminal_at"] = self.now
            if source is Source.POLL and _first_real_end(before, after):
                work.row["recovered"] = True
            self.writes.transitions.append(
                Transition(
                    work.ref,
                    before.state.value,
                    after.state.value,
                    source.value,
                    source_row,
                    self.now,
                )
            )
        return decision.outcome

    @staticmethod
    def _write_snapshot(row: dict[str, Any], snapshot: Snapshot) -> None:
        row["state"] = snapshot.state.value
        row["progress"] = snapshot.progress
        row["result"] = snapshot.result
        row["state_source"] = snapshot.source.value
        row["authority"] = snapshot.authority
        row["confirmed"] = snapshot.confirmed
        row["conflict"] = snapshot.conflict

    def finish(self) -> None:
        """Settle each changed task's schedule and version once, after the whole batch."""
        for work in self.changed_tasks():
            work.row["version"] = work.row["version"] + 1
            work.row["updated_at"] = self.now
            if work.poll_now:
                work.row["next_poll_at"] = self.now
            elif settled(work.snapshot) or work.snapshot.state is State.LOST:
                work.row["next_poll_at"] = None


def _first_real_end(before: Snapshot, after: Snapshot) -> bool:
    return after.state in REAL_TERMINAL and before.state not in REAL_TERMINAL
