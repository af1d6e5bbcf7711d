"""The merge rule, table-tested for every pair of states and property-tested for order."""

from __future__ import annotations

import itertools
from functools import reduce

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.states import (
    RANK,
    REAL_TERMINAL,
    TERMINAL,
    Outcome,
    Report,
    Snapshot,
    Source,
    State,
    merge,
)

ALL_STATES = list(State)
PAIRS = list(itertools.product(ALL_STATES, ALL_STATES))


def at(state: State, source: Source = Source.POLL, *, signed: bool = True) -> Snapshot:
    """The snapshot a task has after a single report of `state` from `source`."""
    return merge(Snapshot(), Report(state, source, signed=signed)).snapshot


def expected_outcome(current: State, incoming: State) -> Outcome:
    """DESIGN.md's rule, written independently of the implementation's ordering."""
    if current in REAL_TERMINAL and incoming in REAL_TERMINAL and current is not incoming:
        return Outcome.CONFLICT
    if current is incoming:
        return Outcome.DUPLICATE
    if current is State.LOST and incoming in REAL_TERMINAL:
        return Outcome.APPLIED
    if RANK[incoming] > RANK[current]:
        return Outcome.APPLIED
    return Outcome.STALE


@pytest.mark.parametrize(("current", "incoming"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_merge_outcome_for_every_pair_of_polled_states(current: State, incoming: State) -> None:
    source = Source.EXPIRY if current is State.LOST else Source.POLL
    incoming_source = Source.EXPIRY if incoming is State.LOST else Source.POLL
    before = at(current, source)
    decision = merge(before, Report(incoming, incoming_source))
    assert decision.outcome is expected_outcome(current, incoming)


@pytest.mark.parametrize(("current", "incoming"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_merge_never_moves_a_task_to_a_lower_rank(current: State, incoming: State) -> None:
    before = at(current)
    after = merge(before, Report(incoming, Source.WEBHOOK, signed=False)).snapshot
    assert RANK[after.state] >= RANK[before.state]


def test_merge_keeps_the_larger_progress_at_equal_rank() -> None:
    running = merge(Snapshot(), Report(State.RUNNING, Source.POLL, progress=60)).snapshot
    decision = merge(running, Report(State.RUNNING, Source.WEBHOOK, progress=30))
    assert decision.snapshot.progress == 60
    assert decision.outcome is Outcome.STALE


def test_merge_calls_the_same_state_and_progress_again_a_duplicate() -> None:
    running = merge(Snapshot(), Report(State.RUNNING, Source.POLL, progress=60)).snapshot
    decision = merge(running, Report(State.RUNNING, Source.WEBHOOK, progress=60))
    assert decision.outcome is Outcome.DUPLICATE


def test_merge_applies_more_progress_without_a_state_change() -> None:
    running = merge(Snapshot(), Report(State.RUNNING, Source.POLL, progress=30)).snapshot
    decision = merge(running, Report(State.RUNNING, Source.POLL, progress=70))
    assert (decision.outcome, decision.snapshot.progress) == (Outcome.APPLIED, 70)
    assert not decision.changes_state(running)


def test_merge_lets_a_poll_beat_a_contradicting_callback() -> None:
    hinted = at(State.SUCCEEDED, Source.WEBHOOK, signed=False)
    decision = merge(hinted, Report(State.FAILED, Source.POLL))
    assert decision.outcome is Outcome.CONFLICT
    assert decision.snapshot.state is State.FAILED
    assert decision.snapshot.conflict


def test_merge_keeps_the_poll_when_a_contradicting_callback_comes_later() -> None:
    polled = at(State.FAILED, Source.POLL)
    decision = merge(polled, Report(State.SUCCEEDED, Source.WEBHOOK, signed=True))
    assert decision.outcome is Outcome.CONFLICT
    assert decision.snapshot.state is State.FAILED
    assert decision.snapshot.conflict


def test_unsigned_terminal_callback_is_applied_unconfirmed() -> None:
    hinted = at(State.SUCCEEDED, Source.WEBHOOK, signed=False)
    assert hinted.state is State.SUCCEEDED
    assert not hinted.confirmed


def test_signed_terminal_callback_is_confirmed() -> None:
    assert at(State.SUCCEEDED, Source.WEBHOOK, signed=True).confirmed


def test_agreeing_poll_confirms_an_unsigned_callback() -> None:
    hinted = at(State.SUCCEEDED, Source.WEBHOOK, signed=False)
    decision = merge(hinted, Report(State.SUCCEEDED, Source.POLL, result={"urls": ["u"]}))
    assert decision.outcome is Outcome.CONFIRMED
    assert decision.snapshot.confirmed
    assert not decision.changes_state(hinted)


def test_real_terminal_state_overrides_lost() -> None:
    lost = at(State.LOST, Source.EXPIRY)
    decision = merge(lost, Report(State.SUCCEEDED, Source.WEBHOOK, signed=False))
    assert (decision.outcome, decision.snapshot.state) == (Outcome.APPLIED, State.SUCCEEDED)
    assert not decision.snapshot.conflict


def test_lost_never_overrides_a_real_terminal_state() -> None:
    done = at(State.CANCELLED, Source.WEBHOOK, signed=False)
    decision = merge(done, Report(State.LOST, Source.EXPIRY))
    assert (decision.outcome, decision.snapshot.state) == (Outcome.STALE, State.CANCELLED)


def test_merge_clamps_progress_into_percent() -> None:
    decision = merge(Snapshot(), Report(State.RUNNING, Source.POLL, progress=250))
    assert decision.snapshot.progress == 100


@pytest.mark.parametrize("source", [Source.WEBHOOK, Source.POLL])
def test_a_success_is_done_whatever_percentage_its_body_said(source: Source) -> None:
    """Replicate, fal and kie report no percentage: their success must not read as 0%."""
    running = merge(Snapshot(), Report(State.RUNNING, source, progress=40)).snapshot
    done = merge(running, Report(State.SUCCEEDED, source)).snapshot
    assert (done.state, done.progress) == (State.SUCCEEDED, 100)
    # A failure or a cancellation keeps how far the task got.
    for end in (State.FAILED, State.CANCELLED):
        assert merge(running, Report(end, source)).snapshot.progress == 40


reports = st.builds(
    Report,
    state=st.sampled_from(ALL_STATES),
    source=st.sampled_from([Source.WEBHOOK, Source.POLL]),
    signed=st.booleans(),
    progress=st.integers(min_value=-5, max_value=120),
).map(lambda r: Report(State.LOST, Source.EXPIRY) if r.state is State.LOST else r)


def fold(items: list[Report]) -> Snapshot:
    return reduce(lambda snap, report: merge(snap, report).snapshot, items, Snapshot())


@given(st.lists(reports, min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_any_order_and_repetition_ends_in_the_same_task(
    items: list[Report], rnd: st.SearchStrategy[object]
) -> None:
    shuffled = (items * 2)[:]
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    first, second = fold(items), fold(shuffled)
    assert (first.state, first.progress, first.conflict, first.confirmed) == (
        second.state,
        second.progress,
        second.conflict,
        second.confirmed,
    )


@given(st.lists(reports, min_size=1, max_size=8))
def test_terminal_state_is_never_left_for_a_non_terminal_one(items: list[Report]) -> None:
    snapshot = Snapshot()
    for report in items:
        after = merge(snapshot, report).snapshot
        if snapshot.state in TERMINAL:
            assert after.state in TERMINAL
        snapshot = after


def test_a_reserved_cost_said_once_is_kept_through_later_states() -> None:
    queued = merge(Snapshot(), Report(State.QUEUED, Source.API, result={"cost_credits": 12}))
    done = merge(queued.snapshot, Report(State.SUCCEEDED, Source.POLL, result={"urls": ["u"]}))
    assert done.snapshot.result == {"urls": ["u"], "cost_credits": 12}
