"""Schedules, phases, progress, outcomes and ground truth."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator import Lifecycle, Schedule, SimTask
from simulator.lifecycle import draw_outcome, draw_schedule, finish_now, ground_truth

SCHEDULE = Schedule(submitted_at=100.0, started_at=101.0, terminal_at=111.0, outcome="succeeded")


def task_with(fmt: str, outcome: str) -> SimTask:
    schedule = Schedule(100.0, 101.0, 111.0, outcome)
    return SimTask(fmt, "t1", "sora-2", {"duration": 4}, None, schedule)


@pytest.mark.parametrize(
    ("now", "phase"),
    [
        (100.0, "queued"),
        (100.5, "queued"),
        (101.0, "running"),
        (110.9, "running"),
        (111.0, "terminal"),
    ],
    ids=["submitted", "waiting", "started", "nearly-done", "ended"],
)
def test_phase_follows_the_schedule(now: float, phase: str) -> None:
    assert SCHEDULE.phase(now) == phase


def test_phase_is_queued_at_the_instant_of_submission_even_without_queueing() -> None:
    assert Schedule(100.0, 100.0, 100.0, "failed").phase(100.0) == "queued"


def test_progress_rises_while_running_and_is_100_on_success() -> None:
    progress = [SCHEDULE.progress(now) for now in (100.5, 102.0, 106.0, 110.0, 111.0)]
    assert progress == sorted(progress)
    assert (progress[0], progress[-1]) == (0, 100)
    assert max(progress[:-1]) < 100


def test_progress_of_a_failed_task_stays_below_100() -> None:
    assert Schedule(100.0, 101.0, 111.0, "failed").progress(200.0) < 100


@given(
    seed=st.integers(0, 2**32),
    low=st.floats(0, 100),
    extra=st.floats(0, 100),
    fmt=st.sampled_from(["openai", "apidot", "evolink"]),
)
def test_drawn_schedules_stay_within_the_duration_bounds(
    seed: int, low: float, extra: float, fmt: str
) -> None:
    lifecycle = Lifecycle(min_duration_s=low, max_duration_s=low + extra)
    schedule = draw_schedule(random.Random(seed), lifecycle, fmt, 1000.0)
    assert schedule.submitted_at <= schedule.started_at <= schedule.terminal_at
    assert low - 1e-6 <= schedule.terminal_at - 1000.0 <= low + extra + 1e-6


@pytest.mark.parametrize(
    ("fmt", "outcome"),
    [
        ("openai", "failed"),
        ("apidot", "failed"),
        ("evolink", "cancelled"),
        ("replicate", "cancelled"),
        ("fal", "failed"),
        ("kie", "failed"),
    ],
    ids=["openai", "apidot", "evolink", "replicate", "fal", "kie"],
)
def test_cancelled_outcome_exists_only_where_the_format_can_cancel(fmt: str, outcome: str) -> None:
    lifecycle = Lifecycle(succeeded_weight=0, failed_weight=0, cancelled_weight=1)
    assert draw_outcome(random.Random(1), lifecycle, fmt) == outcome


def test_outcomes_follow_their_weights() -> None:
    lifecycle = Lifecycle(succeeded_weight=3, failed_weight=1, cancelled_weight=0)
    rng = random.Random(3)
    outcomes = [draw_outcome(rng, lifecycle, "evolink") for _ in range(2000)]
    assert 0.7 < outcomes.count("succeeded") / len(outcomes) < 0.8
    assert "cancelled" not in outcomes


def test_ground_truth_names_the_outcome_in_both_vocabularies() -> None:
    truth = ground_truth(task_with("evolink", "cancelled"), now=200.0)
    assert (truth["final_state"], truth["normalized"], truth["error_code"]) == (
        "failed",
        "cancelled",
        "request_cancelled",
    )
    assert (truth["terminal"], truth["terminal_at"]) == (True, 111.0)


@pytest.mark.parametrize(
    ("fmt", "word"),
    [
        ("openai", "completed"),
        ("apidot", "finished"),
        ("evolink", "completed"),
        ("replicate", "succeeded"),
        ("fal", "COMPLETED"),
        ("kie", "success"),
    ],
    ids=["openai", "apidot", "evolink", "replicate", "fal", "kie"],
)
def test_success_uses_each_formats_own_word(fmt: str, word: str) -> None:
    assert task_with(fmt, "succeeded").state_word(200.0) == word


def test_replicate_prediction_failing_before_it_ran_is_aborted() -> None:
    task = task_with("replicate", "failed")
    task.schedule = finish_now(task.schedule, 100.5, None)
    assert (task.state_word(200.0), ground_truth(task, 200.0)["normalized"]) == (
        "aborted",
        "failed",
    )


def test_kie_task_waits_then_queues_before_generating() -> None:
    task = task_with("kie", "succeeded")
    start = task.schedule.started_at
    words = [task.state_word(at) for at in (100.0, start - 0.01, start + 0.01)]
    assert words == ["waiting", "queuing", "generating"]


def test_finish_now_moves_the_end_and_a_later_start_to_now() -> None:
    finished = finish_now(SCHEDULE, 100.5, "failed")
    assert (finished.started_at, finished.terminal_at, finished.outcome) == (100.5, 100.5, "failed")
