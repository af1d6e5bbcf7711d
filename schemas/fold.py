"""Folds a batch of evidence into the tasks it touches, in memory, deciding every write.

The store loads the rows a batch needs, hands them to `Fold`, and writes what it
decided in one transaction. No SQL and no clock here: `now` is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas import events
from schemas.ledger import (
    Auth,
    Delivery,
    DeliveryId,
    Evidence,
    Expiry,
    Poll,
    Reader,
    Stored,
    Submission,
    SubmissionStatus,
    Unread,
    read_delivery,
    report_of,
    settled,
)
from schemas.media import plan as media
from schemas.records import record
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
from schemas.tables import BODY_KEEP_CHARS, REASON_MAX_CHARS
from schemas.wire import Observation

HELD_REASON = "held until the submit answer settles the task's provider id"
FOREIGN_REASON = "names a task id that is not its task's"
# A task flagged so says why in `attention`; a readable answer clears it.
UNRECOGNIZED_ATTENTION = "provider answers unrecognized"
# The reconciler's flags about polling a task: why, then the last poll's error after
# LAST_ERROR_MARK. Moot once the task's end is confirmed: settling it clears them.
NOT_POLLABLE = "not pollable"
OVERDUE = "overdue"
# A submit that may have reached the provider, its answer never read: why, on the task.
SUBMIT_UNKNOWN = "submitted, answer unknown"
# The flags a task loses once it settles.
POLL_FLAGS = (NOT_POLLABLE, OVERDUE, SUBMIT_UNKNOWN)
LAST_ERROR_MARK = "; last poll error: "
_AWAITING_ANSWER = frozenset({SubmissionStatus.PENDING.value, SubmissionStatus.SENDING.value})


# The working rows here (`TaskWork.row`, the rows of `Writes`) stay dicts, unlike the
# store's typed reads (`schemas.store.rows`): they are internal to the write path, changed
# in place and handed to executemany as they are, on the hot path of every delivery.
# A task row's words as members, by a dict (the enum's call costs a microsecond a task).
_STATES = {state.value: state for state in State}
_SOURCES = {source.value: source for source in Source}
# Rows take an enum's value as `_value_`: the same value as `.value`, without its
# descriptor, a Python call on 3.11 (1.5-2% of a callback's instructions, `bench.instructions`).
_UNMATCHED = Outcome.UNMATCHED.value


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
    # Transitions this batch appended: the version moves at least as often as the state.
    transitions: int = 0
    # What events show of the task changed (state, progress, result, confirmed, conflict):
    # only then does its version move, so an event's version is the task's until the next.
    shown_changed: bool = False

    @classmethod
    def of(cls, row: dict[str, Any]) -> TaskWork:
        snapshot = Snapshot(
            state=_STATES[row["state"]],
            progress=row["progress"],
            result=row["result"],
            source=_SOURCES[row["state_source"]],
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
    seq: int | None = None  # set by the store once written


@record
class _Claim:
    """Whose a delivery is: its task (None: no task known), or why it may not touch the
    task it names; `held` while the task's provider id waits for the submit answer."""

    work: TaskWork | None
    refusal: str | None = None
    held: bool = False


def _identity(row: dict[str, Any]) -> DeliveryId:
    return row["provider"], row["provider_task_id"], row["delivery_key"]


@dataclass(slots=True)
class Writes:
    """Everything one batch writes; rows are dicts ready for executemany."""

    deliveries: list[dict[str, Any]] = field(default_factory=list)
    # Stored deliveries folded in again: `id` and the columns that changed.
    delivery_updates: list[dict[str, Any]] = field(default_factory=list)
    observations: list[dict[str, Any]] = field(default_factory=list)
    duplicates: dict[DeliveryId, int] = field(default_factory=dict)
    transitions: list[Transition] = field(default_factory=list)
    # Outputs to archive, of tasks whose success became authoritative in this batch.
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    # The outbox: the events the batch's changes send, each with its transition (if any),
    # whose `seq` the store fills in once written.
    messages: list[Message] = field(default_factory=list)


@dataclass(slots=True)
class Message:
    task_ref: str
    event_type: str
    payload: dict[str, Any]
    unconfirmed: bool
    at: datetime
    transition: Transition | None = None


class Fold:
    """Decides, item by item, what a batch of evidence does to the ledger."""

    def __init__(
        self,
        tasks: list[dict[str, Any]],
        existing: dict[DeliveryId, dict[str, Any]],
        now: datetime,
        *,
        held: Mapping[str, list[dict[str, Any]]] | None = None,
        unmatched: Mapping[tuple[str, str], list[dict[str, Any]]] | None = None,
        readers: Mapping[str, Reader] | None = None,
    ) -> None:
        self.now = now
        self._held = dict(held or {})
        self._unmatched = dict(unmatched or {})
        self._readers = readers or {}
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
        # Ownership first: a body naming another task is refused before anything is
        # stored or counted, even when it repeats a delivery that task already holds.
        claim = self._owner_of(item)
        if claim.refusal:
            return Stored(Outcome.UNMATCHED, refusal=claim.refusal)
        key = item.identity
        if key in self._existing:
            return self._duplicate(key)
        row = self._delivery_row(item, claim.work)
        self._existing[key] = row
        outcome = self._fold_delivery(item, claim, row)
        work = claim.work
        return Stored(outcome, work.ref if work else None, work.snapshot.state if work else None)

    def _fold_delivery(self, item: Delivery, claim: _Claim, row: dict[str, Any]) -> Outcome:
        """Merge a delivery into its task where it can be; say what became of it in `row`."""
        work = claim.work
        outcome, reason = self._unfolded(item, claim)
        if outcome is None and work is not None and item.observation is not None:
            report = report_of(item.observation, Source.WEBHOOK, signed=item.signed)
            outcome = self._merge(work, report, row, Source.WEBHOOK)
            # A thin event lacks the result, an unsigned terminal one needs confirming.
            unconfirmed = work.snapshot.state in TERMINAL and not work.snapshot.confirmed
            work.poll_now = work.poll_now or item.observation.needs_fetch or unconfirmed
        elif outcome is Outcome.UNRECOGNIZED and work is not None:
            work.poll_now = work.changed = True  # the provider's endpoint may say what it meant
        outcome = outcome or Outcome.UNMATCHED
        row["outcome"] = outcome._value_
        row["reason"] = reason
        row["task_ref"] = work.ref if work else None
        return outcome

    @staticmethod
    def _unfolded(item: Delivery, claim: _Claim) -> tuple[Outcome | None, str | None]:
        """Why a delivery is kept without being merged, if it is."""
        if item.unread is not None:
            kept = Outcome.IGNORED if item.unread.ignored else Outcome.UNRECOGNIZED
            return kept, item.unread.detail[:REASON_MAX_CHARS]
        if claim.held:
            return Outcome.HELD, HELD_REASON
        return None, None

    def _duplicate(self, key: DeliveryId) -> Stored:
        self.writes.duplicates[key] = self.writes.duplicates.get(key, 0) + 1
        first = self._existing[key]
        state = State(first["state"]) if first.get("state") else None
        return Stored(Outcome.DUPLICATE, first.get("task_ref"), state)

    def _owner_of(self, item: Delivery) -> _Claim:
        """The task a delivery belongs to, or why it may not touch the one it names."""
        task_id = item.provider_task_id
        if item.task_ref is None:
            return _Claim(self._by_provider_id.get((item.provider, task_id)) if task_id else None)
        work = self.tasks.get(item.task_ref)
        if work is None:
            return _Claim(None)
        if work.row["provider"] != item.provider:
            return _Claim(None, "wrong_provider")
        known = work.row["provider_task_id"]
        if not task_id or known == task_id:
            return _Claim(work)  # a body that names no task is its token's
        holder = self._by_provider_id.get((item.provider, task_id))
        if known is not None or (holder is not None and holder is not work):
            return _Claim(None, "foreign_task")
        if item.observation is None:
            return _Claim(work)  # unread: it proposes nothing
        if work.row["submission"] in _AWAITING_ANSWER:
            # The submit answer is on its way and is the authority for the id.
            return _Claim(work, held=True)
        self._adopt(work, task_id)
        return _Claim(work)

    def _adopt(self, work: TaskWork, task_id: str) -> None:
        """The task learns its provider id (from the submit answer, or a callback)."""
        work.row["provider_task_id"] = task_id
        work.changed = True
        self._by_provider_id[(work.row["provider"], task_id)] = work

    def _delivery_row(self, item: Delivery, work: TaskWork | None) -> dict[str, Any]:
        observation = item.observation
        row: dict[str, Any] = {
            "provider": item.provider,
            "delivery_key": item.delivery_key,
            "task_ref": work.ref if work else None,
            "provider_task_id": item.provider_task_id,
            "body": item.body,
            "headers": item.headers,
            "auth": item.auth._value_,
            "state": observation.state._value_ if observation else None,
            "outcome": _UNMATCHED,
            "reason": None,
            "duplicate_count": 0,
            "received_at": item.received_at,
            "last_seen_at": item.received_at,
        }
        self.writes.deliveries.append(row)
        return row

    # -- deliveries stored earlier, read again -----------------------------------

    def refold(self, row: dict[str, Any]) -> Outcome:
        """Fold a stored delivery in again (unmatched, held or unrecognized before), read
        with the current code: an update of its row, never a second row."""
        item = reread(row, self._readers)
        claim = self._owner_of(item)
        change: dict[str, Any] = {"id": row["id"], "task_ref": row["task_ref"]}
        self.writes.delivery_updates.append(change)
        if claim.refusal:
            change.update(outcome=Outcome.FOREIGN.value, reason=FOREIGN_REASON)
            return Outcome.FOREIGN
        if item.identity != _identity(row) and item.identity in self._existing:
            change.update(outcome=Outcome.DUPLICATE.value, reason="stored again under its task id")
            return Outcome.DUPLICATE
        change["provider_task_id"] = item.provider_task_id
        change["state"] = item.observation.state.value if item.observation else None
        self._existing[item.identity] = change
        return self._fold_delivery(item, claim, change)

    def attach(self, ref: str, provider_task_id: str) -> None:
        """The user's word for a task's provider id: recorded, and the callbacks held for
        the task settled by it, and the unmatched ones for that id folded in."""
        work = self.tasks[ref]
        if work.row["provider_task_id"] is None:
            self._adopt(work, provider_task_id)
        self._settle_held(work, SubmissionStatus.SENT)
        self._fold_unmatched(work, provider_task_id)

    def _settle_held(self, work: TaskWork, status: SubmissionStatus) -> None:
        """The submit answer has spoken (or never will): fold in the callbacks held for it."""
        rows = self._held.pop(work.ref, [])
        if not rows or status is SubmissionStatus.PENDING:
            return
        known = work.row["provider_task_id"]
        proposed = {row["provider_task_id"] for row in rows}
        if known is None and status is SubmissionStatus.UNKNOWN and len(proposed) == 1:
            (only,) = proposed
            if (work.row["provider"], only) not in self._by_provider_id:
                self._adopt(work, only)  # the only word we will get: the callbacks'
                known = only
        if known is None and status is not SubmissionStatus.REJECTED:
            self._attend(work, f"callbacks proposed {len(proposed)} task ids; none confirmed")
            return
        for row in rows:
            if row["provider_task_id"] == known:
                self.refold(row)
            else:
                self.writes.delivery_updates.append(
                    {"id": row["id"], "outcome": Outcome.FOREIGN.value, "reason": FOREIGN_REASON}
                )

    # -- polls and expiry ------------------------------------------------------

    def _poll(self, item: Poll) -> Stored:
        work = self.tasks.get(item.task_ref)
        if work is None:
            return Stored(Outcome.UNMATCHED, refusal="unknown_task")
        row = self._observation_row(item)
        outcome = Outcome.ERROR
        if item.unrecognized is not None:
            outcome = Outcome.UNRECOGNIZED
            self._attend(work, f"{UNRECOGNIZED_ATTENTION}: {item.unrecognized}")
        elif item.observation is not None:
            outcome = self._merge(work, report_of(item.observation, Source.POLL), row, Source.POLL)
            if (work.row["attention"] or "").startswith(UNRECOGNIZED_ATTENTION):
                work.row["attention"] = None
        row["outcome"] = outcome.value
        self._reschedule(work, item.next_poll_at)
        if item.attention is not None:
            self._attend(work, item.attention)
        return Stored(outcome, work.ref, work.snapshot.state)

    @staticmethod
    def _attend(work: TaskWork, why: str) -> None:
        work.row["attention"] = why[:REASON_MAX_CHARS]
        work.changed = True

    def _observation_row(self, item: Poll) -> dict[str, Any]:
        observation = item.observation
        row: dict[str, Any] = {
            "task_ref": item.task_ref,
            "observed_at": item.observed_at,
            "http_status": item.http_status,
            "state": observation.state.value if observation else None,
            "progress": observation.progress if observation else None,
            "body": item.body[:BODY_KEEP_CHARS] if item.body else None,
            "error": item.unrecognized or item.error,
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
            outcome = self._submitted(work, item.observation)
        elif item.status is SubmissionStatus.REJECTED:
            report = Report(State.FAILED, Source.API, result={"error": {"message": item.error}})
            outcome = self._merge(work, report, None, Source.API)
        elif item.status is SubmissionStatus.UNKNOWN and item.error:
            self._attend(work, f"{SUBMIT_UNKNOWN}: {item.error}")
        self._settle_held(work, item.status)
        self._reschedule(work, item.next_poll_at)
        work.row["poll_attempts"] = 0
        return Stored(outcome, work.ref, work.snapshot.state)

    def _submitted(self, work: TaskWork, observation: Observation) -> Outcome:
        """The submit answer: the authority for the task's provider id."""
        task_id = observation.provider_task_id
        known = work.row["provider_task_id"]
        holder = self._by_provider_id.get((work.row["provider"], task_id))
        if holder is not None and holder is not work:
            self._attend(work, f"the provider's task id {task_id[:60]!r} is task {holder.ref}'s")
            return Outcome.CONFLICT
        if known is not None and known != task_id:
            self._attend(work, f"the submit answer named {task_id[:60]!r}, not {known[:60]!r}")
            return Outcome.CONFLICT
        if known is None:
            self._adopt(work, task_id)
        outcome = self._merge(work, report_of(observation, Source.API), None, Source.API)
        self._fold_unmatched(work, task_id)
        return outcome

    def _fold_unmatched(self, work: TaskWork, task_id: str) -> None:
        """Deliveries that came for this id before any task had it (signed events)."""
        for row in self._unmatched.pop((work.row["provider"], task_id), []):
            self.refold(row)

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
        work.shown_changed = work.shown_changed or _shown(after) != _shown(before)
        self._write_snapshot(work.row, after)
        if after.state is not before.state:
            if after.state in TERMINAL:
                work.row["terminal_at"] = self.now
            if source is Source.POLL and _first_real_end(before, after):
                work.row["recovered"] = True
            work.transitions += 1
            transition = Transition(
                work.ref,
                before.state._value_,
                after.state._value_,
                source._value_,
                source_row,
                self.now,
            )
            self.writes.transitions.append(transition)
            self._notify(work, events.event_of(after.state), transition)
        elif after.confirmed and not before.confirmed:
            self._notify(work, events.event_of(after.state))  # the end, confirmed now
        elif after.state in TERMINAL and _shown(after) != _shown(before):
            self._notify(work, events.event_of(after.state))  # the end's result, fetched now
        if after.conflict and not before.conflict:
            self._notify(work, events.CONFLICT)
        return decision.outcome

    def _notify(
        self, work: TaskWork, event_type: str | None, transition: Transition | None = None
    ) -> None:
        """An authoritative change (or an unconfirmed one, marked so) into the outbox, with
        the task as it stands after it: the version it will have once the batch is written."""
        if event_type is None:
            return
        version = work.row["version"] + max(1, work.transitions)
        data = events.task_data(work.row, version=version, updated_at=self.now)
        data["seq"] = None
        payload = events.envelope(event_type, data, self.now)
        unconfirmed = not work.snapshot.confirmed
        self.writes.messages.append(
            Message(work.ref, event_type, payload, unconfirmed, self.now, transition)
        )

    @staticmethod
    def _write_snapshot(row: dict[str, Any], snapshot: Snapshot) -> None:
        row["state"] = snapshot.state._value_
        row["progress"] = snapshot.progress
        row["result"] = snapshot.result
        row["state_source"] = snapshot.source._value_
        row["authority"] = snapshot.authority
        row["confirmed"] = snapshot.confirmed
        row["conflict"] = snapshot.conflict

    def finish(self) -> None:
        """Settle each changed task's schedule and version once, after the whole batch."""
        for work in self.changed_tasks():
            if work.shown_changed:
                work.row["version"] = work.row["version"] + max(1, work.transitions)
            work.row["updated_at"] = self.now
            if work.poll_now:
                work.row["next_poll_at"] = self.now
            elif settled(work.snapshot) or work.snapshot.state is State.LOST:
                work.row["next_poll_at"] = None
            if _newly_settled_success(work):
                self._plan_archive(work)
            if settled(work.snapshot) and (work.row["attention"] or "").startswith(POLL_FLAGS):
                work.row["attention"] = None

    def _plan_archive(self, work: TaskWork) -> None:
        """One `pending` artifact per output, when its provider's outputs are archived.
        A repeat (a result settled again) adds nothing: the store ignores known names."""
        reader = self._readers.get(work.row["provider"])
        if reader is None or not reader.archive:
            return
        result = work.snapshot.result
        deadline = media.expires_at(result, self.now, reader.result_ttl_seconds)
        self.writes.artifacts += [
            {
                "task_ref": work.ref,
                "provider": work.row["provider"],
                "name": output.name,
                "source": output.source,
                "state": "pending",
                "expires_at": deadline,
                "next_attempt_at": self.now,
                "attempts": 0,
                "created_at": self.now,
            }
            for output in media.outputs(result)
        ]


def _newly_settled_success(work: TaskWork) -> bool:
    """The batch made the task's success authoritative, with its result: an unsigned hint
    is not enough, and a success settled before is not planned twice."""
    if work.snapshot.state is not State.SUCCEEDED or not settled(work.snapshot):
        return False
    loaded = work.loaded
    was = loaded["state"] == State.SUCCEEDED.value and loaded["confirmed"] and loaded["result"]
    return not was


def _shown(snapshot: Snapshot) -> tuple[object, ...]:
    """What events carry of a task's merge state."""
    return (
        snapshot.state,
        snapshot.progress,
        snapshot.result,
        snapshot.confirmed,
        snapshot.conflict,
    )


def _first_real_end(before: Snapshot, after: Snapshot) -> bool:
    return after.state in REAL_TERMINAL and before.state not in REAL_TERMINAL


def reread(row: dict[str, Any], readers: Mapping[str, Reader]) -> Delivery:
    """A stored delivery as evidence again, its body read by the current code."""
    reader = readers.get(row["provider"])
    delivery = Delivery(
        provider=row["provider"],
        delivery_key=row["delivery_key"],
        body=row["body"],
        headers=row["headers"] or {},
        auth=Auth(row["auth"]),
        observation=None,
        received_at=row["received_at"],
        task_ref=row["task_ref"],
        task_id=row["provider_task_id"],
        unread=Unread("no_kind", f"provider {row['provider']!r} is not configured"),
    )
    return delivery if reader is None else read_delivery(delivery, reader)
