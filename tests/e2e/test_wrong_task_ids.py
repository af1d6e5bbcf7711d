"""A buggy provider whose callbacks name a wrong task id, at 5% and 30% of them.

taskledger submits the tasks itself (`submit: true`); the simulator sends each gateway
callback to its own task's URL, sometimes naming another task's id or a made-up one, with
the other tricks and the transport faults on. Every task must be submitted once and end
in the simulator's truth; every authentic callback acknowledged must be kept once, and
none refused (403) kept at all. Each run prints its counts on one line.
"""

from __future__ import annotations

import time

import pytest

from simulator import Faults, Lifecycle, SimConfig
from tests.support.system import (
    AUTHENTIC_ANSWERS,
    compare_tasks,
    running_system,
    tally_deliveries,
    with_tricks,
)

TASKS_PER_PROVIDER = 50
FAST = Lifecycle(min_duration_s=0.3, max_duration_s=1.5, progress_callbacks=True)
TRANSPORT = Faults(
    drop_rate=0.1,
    duplicate_rate=0.1,
    reorder_rate=0.1,
    bad_signature_rate=0.05,
    delay_rate=0.1,
    max_callback_delay_s=0.5,
)


@pytest.mark.parametrize("rate", [0.05, 0.30], ids=["wrong-id-5pct", "wrong-id-30pct"])
async def test_callbacks_naming_wrong_task_ids_change_no_task_and_lose_nothing(
    database_url: str, rate: float
) -> None:
    started = time.monotonic()
    faults = with_tricks(TRANSPORT, wrong_task_id_rate=rate)
    config = SimConfig(seed=23, time_scale=0.05, lifecycle=FAST, faults=faults)
    async with running_system(database_url, config) as system:
        refs = []
        for provider in ("openai", "apidot", "evolink"):
            refs += await system.submit(provider, TASKS_PER_PROVIDER)
        await system.settle(len(refs), within_seconds=60)
        await system.drain_callbacks()
        tasks = await system.tasks()
        truth = await system.truth_of_tasks()
        stats = await system.stats()
        tally = tally_deliveries(await system.sent(), await system.deliveries(), tasks)
    comparison = compare_tasks(tasks, truth, stats)
    backend = database_url.partition("+")[0]
    print(
        f"\n[{backend}, wrong task id {rate:.0%}] {comparison.line()}; {tally.line()}; "
        f"{time.monotonic() - started:.1f} s"
    )
    assert tally.problems == {}
    assert tally.stranded == 0  # no signed event left unmatched once its task has the id
    assert set(tally.answers) <= AUTHENTIC_ANSWERS
    assert comparison.submits == {1: len(refs)}
    assert comparison.mismatches == []
    assert stats["callbacks"]["wrong_task_id"] > 0
