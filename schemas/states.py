"""Task states, their order, and the pure merge rule every write goes through.

The rule is a join: the ledger keeps the greatest report by `precedence`, so any
order and any repetition of the same reports ends in the same task.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from schemas.records import record


class State(StrEnum):
    SUBMITTED = "submitted"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"


class Source(StrEnum):
    """Who told us: a callback (signed or not), a status poll, our own API, or expiry."""

    WEBHOOK = "webhook"
    POLL = "poll"
    API = "api"
    EXPIRY = "expiry"


class Outcome(StrEnum):
    APPLIED = "applied"
    CONFIRMED = "confirmed"
    DUPLICATE = "duplicate"
    STALE = "stale"
    CONFLICT = "conflict"
    UNMATCHED = "unmatched"
    ERROR = "error"
    # Authenticated and kept, but not folded in: the body could not be read (yet), it
    # speaks of no task (an event type we do not follow), it waits for the task's
    # provider id to be settled, or it proposed an id the task turned out not to have.
    UNRECOGNIZED = "unrecognized"
    IGNORED = "ignored"
    HELD = "held"
    FOREIGN = "foreign"


RANK: dict[State, int] = {
    State.SUBMITTED: 0,
    State.QUEUED: 1,
    State.RUNNING: 2,
    State.SUCCEEDED: 3,
    State.FAILED: 3,
    State.CANCELLED: 3,
    State.LOST: 3,
}
TERMINAL = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED, State.LOST})
REAL_TERMINAL = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED})

# Between two different real terminal states from equally trusted sources the
# ledger must still pick one, the same one whatever the arrival order: a success
# carries the produced media, so it is kept over a failure, a failure over a cancel.
_TERMINAL_ORDER: dict[State, int] = {
    State.LOST: 0,
    State.CANCELLED: 1,
    State.FAILED: 2,
    State.SUCCEEDED: 3,
}

# How much a report of a terminal state is trusted: the provider's status endpoint
# beats a signed callback, which beats a callback bound only by our URL token;
# expiry is our own guess and loses to every real report.
_AUTHORITY_EXPIRY = 0
_AUTHORITY_UNSIGNED = 1
_AUTHORITY_SIGNED = 2
_AUTHORITY_PROVIDER = 3


@record
class Report:
    """One thing a source said about a task: its state, progress and result."""

    state: State
    source: Source
    signed: bool = True
    progress: int = 0
    result: dict[str, Any] | None = None

    @property
    def authority(self) -> int:
        if self.source is Source.EXPIRY:
            return _AUTHORITY_EXPIRY
        if self.source is Source.WEBHOOK:
            return _AUTHORITY_SIGNED if self.signed else _AUTHORITY_UNSIGNED
        return _AUTHORITY_PROVIDER


@record
class Snapshot:
    """The ledger's current view of a task, as far as the merge rule cares."""

    state: State = State.SUBMITTED
    progress: int = 0
    result: dict[str, Any] | None = None
    source: Source = Source.API
    authority: int = _AUTHORITY_PROVIDER
    conflict: bool = False

    @property
    def confirmed(self) -> bool:
        """A terminal state counts once a signed callback or the provider's endpoint said it."""
        return self.state not in REAL_TERMINAL or self.authority >= _AUTHORITY_SIGNED


@record
class Decision:
    outcome: Outcome
    snapshot: Snapshot

    def changes_state(self, before: Snapshot) -> bool:
        return self.snapshot.state is not before.state

    def changes_task(self, before: Snapshot) -> bool:
        return self.snapshot != before


def precedence(state: State, progress: int, authority: int) -> tuple[int, int, int]:
    """The total order of reports: rank, then trust and tie-break for terminals, else progress."""
    if state in TERMINAL:
        return (RANK[state], authority, _TERMINAL_ORDER[state])
    return (RANK[state], 0, progress)


def merge(current: Snapshot, report: Report) -> Decision:
    """Fold one report into the current snapshot. Pure: no I/O, no clock."""
    reported = _progress_of(report)
    progress = max(current.progress, reported)
    conflict = _contradicts(current.state, report.state)
    mine = precedence(current.state, current.progress, current.authority)
    theirs = precedence(report.state, reported, report.authority)
    if theirs > mine:
        won = Snapshot(
            state=report.state,
            progress=progress,
            result=_result_after(current, report),
            source=report.source,
            authority=report.authority,
            conflict=current.conflict or conflict,
        )
        return Decision(_outcome_of_win(current, won, conflict), won)
    kept = _kept(current, progress, current.conflict or conflict, current.result)
    if conflict:
        return Decision(Outcome.CONFLICT, kept)
    if theirs == mine or (report.state is current.state and current.state in TERMINAL):
        return Decision(Outcome.DUPLICATE, _fill_result(kept, report))
    return Decision(Outcome.STALE, kept)


def _outcome_of_win(current: Snapshot, won: Snapshot, conflict: bool) -> Outcome:
    if conflict:
        return Outcome.CONFLICT
    if won.state is current.state and won.state in TERMINAL:
        return Outcome.CONFIRMED
    return Outcome.APPLIED


def _kept(
    current: Snapshot, progress: int, conflict: bool, result: dict[str, Any] | None
) -> Snapshot:
    """`current`'s state and source with these values (built directly: the merge runs for
    every delivery, and `dataclasses.replace` costs several times a constructor)."""
    return Snapshot(current.state, progress, result, current.source, current.authority, conflict)


def _fill_result(kept: Snapshot, report: Report) -> Snapshot:
    """A repeat of the same state may carry the result the first report lacked."""
    if kept.result is None and report.result is not None and report.state is kept.state:
        return _kept(kept, kept.progress, kept.conflict, report.result)
    return kept


def _contradicts(a: State, b: State) -> bool:
    return a in REAL_TERMINAL and b in REAL_TERMINAL and a is not b


def _progress_of(report: Report) -> int:
    """A report's progress, 0..100; a success is done, whether or not its body says so
    (Replicate, fal and kie send no percentage). Of the report alone, so that the order
    reports come in cannot change what the ledger ends with."""
    if report.state is State.SUCCEEDED:
        return 100
    return min(100, max(0, report.progress))


# What a task keeps from an earlier result when a later one does not say it again: the
# cost a gateway reserved is reported once (EvoLink: in the submit answer's `usage`).
_CARRIED_RESULT_KEYS = ("cost_credits",)


def _result_after(current: Snapshot, report: Report) -> dict[str, Any] | None:
    """A new state brings its own result; a stronger repeat of the same state may lack one."""
    if report.result is None and report.state is current.state:
        return current.result
    carried = {
        key: current.result[key]
        for key in _CARRIED_RESULT_KEYS
        if current.result and key in current.result and key not in (report.result or {})
    }
    return {**(report.result or {}), **carried} or None
