"""The `Simulator` in process, driven by a fake clock."""

from __future__ import annotations

import pytest

from simulator import SimConfig, Simulator, Submission, TaskEndedError, UnknownTaskError
from tests.simulator.support import FAST, FakeClock, make_config

OPENAI = Submission("sora-2", {"seconds": "4", "size": "720x1280"}, None)
EVOLINK = Submission("sora-2", {"duration": 4, "aspect_ratio": "1280x720"}, None)


def test_status_is_computed_from_the_clock(clock: FakeClock) -> None:
    sim = Simulator(make_config(), clock=clock)
    task = sim.submit("openai", OPENAI)
    before = sim.render(task, clock())["status"]
    clock.advance(FAST.max_duration_s)
    after = sim.render(task, clock())["status"]
    assert before == "queued"
    assert after == sim.truth()[0]["final_state"]


def test_truth_marks_tasks_terminal_only_once_their_time_came(clock: FakeClock) -> None:
    sim = Simulator(make_config(), clock=clock)
    sim.submit("evolink", EVOLINK)
    pending = sim.truth()[0]["terminal"]
    clock.advance(FAST.max_duration_s)
    assert (pending, sim.truth()[0]["terminal"]) == (False, True)


def test_same_seed_gives_same_ids_and_schedules(clock: FakeClock) -> None:
    first = Simulator(SimConfig(seed=7), clock=clock).submit("evolink", EVOLINK)
    second = Simulator(SimConfig(seed=7), clock=clock).submit("evolink", EVOLINK)
    assert (first.task_id, first.schedule) == (second.task_id, second.schedule)


def test_finish_ends_the_task_at_the_current_instant(clock: FakeClock) -> None:
    sim = Simulator(make_config(), clock=clock)
    task = sim.submit("evolink", EVOLINK)
    clock.advance(0.01)
    sim.finish("evolink", task.task_id, "cancelled")
    assert sim.render(task, clock())["error"]["code"] == "request_cancelled"
    assert task.schedule.terminal_at == clock()


def test_finish_rejects_a_task_that_already_ended(clock: FakeClock) -> None:
    sim = Simulator(make_config(), clock=clock)
    task = sim.submit("openai", OPENAI)
    clock.advance(FAST.max_duration_s)
    with pytest.raises(TaskEndedError):
        sim.finish("openai", task.task_id)


def test_finish_rejects_an_unknown_task(clock: FakeClock) -> None:
    sim = Simulator(make_config(), clock=clock)
    with pytest.raises(UnknownTaskError):
        sim.finish("openai", "video_nothing")


def test_dispatch_skips_tasks_without_a_callback_destination(clock: FakeClock) -> None:
    sim = Simulator(make_config(), clock=clock)
    sim.submit("evolink", EVOLINK)
    clock.advance(FAST.max_duration_s)
    assert sim.dispatch_due() == 0


async def test_dispatch_fires_each_terminal_event_once(clock: FakeClock) -> None:
    sim = Simulator(make_config(), clock=clock)
    sim.submit("evolink", Submission("sora-2", EVOLINK.request, "http://127.0.0.1:9/cb/t"))
    await sim.start()
    try:
        clock.advance(FAST.max_duration_s)
        fired = sim.dispatch_due() + sim.dispatch_due()
    finally:
        await sim.aclose()
    assert fired == 1


def test_update_faults_changes_the_faults_in_force(clock: FakeClock) -> None:
    sim = Simulator(make_config(), clock=clock)
    sim.update_faults({"down": True})
    assert sim.faults().down is True
