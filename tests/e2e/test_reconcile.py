"""The whole system against the simulator: the ledger converges on the providers' truth."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
from prometheus_client import generate_latest

from schemas.states import RANK, State
from simulator import Faults, Lifecycle, SimConfig
from tests.support.senders import apidot_body
from tests.support.system import (
    AUTHENTIC_ANSWERS,
    BUILTIN_PROVIDERS,
    compare_tasks,
    misled_tasks,
    provider_lines,
    running_system,
    tally_deliveries,
    with_tricks,
)

FAST = Lifecycle(min_duration_s=0.3, max_duration_s=1.5, progress_callbacks=True)
HOSTILE = Faults(
    drop_rate=0.3,
    duplicate_rate=0.1,
    reorder_rate=0.1,
    bad_signature_rate=0.05,
    delay_rate=0.1,
    max_callback_delay_s=0.5,
    poll_429_rate=0.025,
    poll_500_rate=0.025,
)
# And the providers' tricks: unknown status words, non-video OpenAI events, EvoLink's
# cancel spellings and envelope, callbacks naming a wrong task id, fal's retried gateway ids
# and unsendable payloads, kie's snake-case task ids.
CHAOS = with_tricks(HOSTILE, wrong_task_id_rate=0.05)
JSON = {"content-type": "application/json"}
# Enough of each provider's tasks for every fault and trick to happen, within a modest run.
TASKS_PER_PROVIDER = 60


def assert_forward_only(transitions: dict[str, list[dict[str, Any]]]) -> int:
    """Every task's transitions climb the lattice, each state at most once; returns the count."""
    total = 0
    for ref, steps in transitions.items():
        states = [State(step["to_state"]) for step in steps]
        assert len(states) == len(set(states)), (ref, states)
        ranks = [RANK[s] for s in states]
        assert ranks == sorted(ranks), (ref, states)
        total += len(steps)
    return total


async def test_every_builtin_providers_tasks_with_hostile_faults_end_in_its_truth(
    database_url: str,
) -> None:
    config = SimConfig(seed=7, time_scale=0.05, lifecycle=FAST, faults=CHAOS)
    async with running_system(database_url, config) as system:
        refs = []
        for provider in BUILTIN_PROVIDERS:
            refs += await system.submit(provider, TASKS_PER_PROVIDER)
        await system.settle(len(refs), within_seconds=120)
        await system.drain_callbacks()
        tasks = await system.tasks()
        truth = await system.truth_of_tasks()
        transitions = await system.transitions()
        stats = await system.stats()
        sent = await system.sent()
        tally = tally_deliveries(sent, await system.deliveries(), tasks)
        metrics = generate_latest(system.reconcilers[0][0].metrics.registry).decode()
    total = TASKS_PER_PROVIDER * len(BUILTIN_PROVIDERS)
    assert len(tasks) == total
    # Replicate's webhooks share one signed URL: a signed body naming another task (the
    # wrong-id trick) is the provider's word there, and taken as such.
    comparison = compare_tasks(tasks, truth, stats, misled_tasks(sent))
    backend = database_url.partition("+")[0]
    print(f"\n[{backend}, chaos] {comparison.line()}; {tally.line()}")
    print("\n".join(f"[{backend}] {line}" for line in provider_lines(tasks, comparison)))
    assert tally.problems == {}
    assert tally.stranded == 0  # no signed event left unmatched once its task has the id
    assert set(tally.answers) <= AUTHENTIC_ANSWERS
    assert comparison.submits == {1: total}
    assert comparison.mismatches == []
    assert not comparison.misled  # no signed body ever names another task (simulator rule)
    assert dict(comparison.matching) == dict.fromkeys(BUILTIN_PROVIDERS, TASKS_PER_PROVIDER)
    moves = assert_forward_only(transitions)
    recovered = sum(t["recovered"] for t in tasks)
    assert 'taskledger_recoveries_total{provider="apidot"}' in metrics
    assert recovered > 0
    assert 'taskledger_polls_total{provider="evolink",result="ok"}' in metrics
    assert 'taskledger_polls_total{provider="fal",result="ok"}' in metrics
    assert "taskledger_oldest_open_task_age_seconds" in metrics
    print(
        f"\n{total} tasks: {Counter(t['state'] for t in tasks)}, {moves} transitions, "
        f"{system.unavailable} registrations retried after 503, "
        f"callbacks {stats['callbacks']}, polls {stats['polls']}"
    )


async def test_two_reconcilers_never_poll_one_task_at_once_and_survive_a_crash(
    database_url: str,
) -> None:
    config = SimConfig(
        seed=3,
        time_scale=0.05,
        lifecycle=FAST,
        faults=Faults(drop_rate=1.0, poll_slow_rate=0.2, slow_poll_s=0.2),
    )
    async with running_system(database_url, config, reconcilers=2) as system:
        refs = await system.submit("apidot", 150)
        await asyncio.sleep(1.5)
        _, crashed = system.reconcilers.pop(0)
        crashed.cancel()  # dies mid-pass: its leases are never given back
        tasks = await system.settle(len(refs), within_seconds=60)
        stats = await system.stats()
        truth = await system.truth()
    assert all(t["state"] == truth[t["provider_task_id"]] for t in tasks)
    assert max(stats["max_in_flight_per_task"].values()) == 1


async def test_polls_never_exceed_the_providers_rate_limit(database_url: str) -> None:
    """20 tasks due at once: 40 calls (a submit and a poll each), five seconds at the limit."""
    config = SimConfig(seed=5, time_scale=0.05, lifecycle=FAST, faults=Faults(drop_rate=1.0))
    async with running_system(database_url, config, rate_limit_per_second=8.0) as system:
        refs = await system.submit("evolink", 20)
        await system.settle(len(refs), within_seconds=60)
        stats = await system.stats()
    assert stats["polls_by_format"]["evolink"] >= len(refs)
    assert stats["max_polls_in_1s"]["evolink"] <= 8


async def test_forged_callback_contradicting_the_provider_ends_in_the_providers_favour(
    database_url: str,
) -> None:
    config = SimConfig(
        seed=11,
        time_scale=0.05,
        lifecycle=Lifecycle(
            min_duration_s=0.3,
            max_duration_s=0.5,
            succeeded_weight=1.0,
            failed_weight=0.0,
            cancelled_weight=0.0,
        ),
        faults=Faults(drop_rate=1.0),
    )
    async with running_system(database_url, config) as system:
        [ref] = await system.submit("apidot", 1)
        task = await _wait_for_task_id(system.service, ref)
        forged = apidot_body(task["provider_task_id"], "failed")
        answer = await system.service.http.post(
            httpx.URL(task["callback_url"]).path, content=forged, headers=JSON
        )
        assert answer.status_code == 200
        await system.settle(1, within_seconds=30)
        shown = await system.service.task(ref)
    assert (shown["state"], shown["conflict"], shown["confirmed"]) == ("succeeded", True, True)
    sources = [(t["to_state"], t["source"]) for t in shown["timeline"]["transitions"]]
    assert sources[-2:] == [("failed", "webhook"), ("succeeded", "poll")]


async def test_unsigned_terminal_callback_is_confirmed_by_a_poll(database_url: str) -> None:
    config = SimConfig(
        seed=13, time_scale=0.05, lifecycle=Lifecycle(min_duration_s=0.2, max_duration_s=0.3)
    )
    async with running_system(database_url, config, expected_seconds=30.0) as system:
        [ref] = await system.submit("evolink", 1)
        await system.settle(1, within_seconds=30)
        shown = await system.service.task(ref)
    deliveries = shown["timeline"]["deliveries"]
    polls = [p for p in shown["timeline"]["polls"] if p["outcome"] == "confirmed"]
    assert shown["confirmed"] is True
    assert deliveries
    assert polls
    assert polls[0]["observed_at"] > deliveries[0]["received_at"]


async def test_task_whose_provider_never_answers_becomes_lost_with_a_reason(
    database_url: str,
) -> None:
    config = SimConfig(seed=17, time_scale=0.05)
    async with running_system(database_url, config, max_age_seconds=2.0) as system:
        task = await system.service.register("apidot", provider_task_id="task-never-heard-of")
        await system.settle(1, within_seconds=30)
        shown = await system.service.task(task["ref"])
    assert shown["state"] == "lost"
    assert "no final state" in shown["result"]["lost_reason"]


async def _wait_for_task_id(service: Any, ref: str) -> dict[str, Any]:
    async with asyncio.timeout(20):
        while True:
            task: dict[str, Any] = await service.task(ref)
            if task["provider_task_id"]:
                return task
            await asyncio.sleep(0.1)


async def test_provider_down_for_a_while_is_caught_up_when_it_returns(
    database_url: str,
) -> None:
    config = SimConfig(seed=19, time_scale=0.05, lifecycle=FAST, faults=Faults(drop_rate=1.0))
    async with running_system(database_url, config) as system:
        refs = await system.submit("evolink", 30)
        async with asyncio.timeout(20):
            while any(t["provider_task_id"] is None for t in await system.tasks()):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        system.simulator.update_faults({"down": True})
        # Answers taken before the outage may still be on their way to the ledger (a pass
        # writes its polls in batches): each such task keeps its lease until its poll is
        # written. Counted once every lease held at the outage's start has ended.
        leased = {(t["ref"], t["lease_until"]) for t in await system.tasks() if t["lease_owner"]}
        async with asyncio.timeout(20):
            while leased & {(t["ref"], t["lease_until"]) for t in await system.tasks()}:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        settled_before = sum(t["next_poll_at"] is None for t in await system.tasks())
        await asyncio.sleep(4)
        settled_during = sum(t["next_poll_at"] is None for t in await system.tasks())
        system.simulator.update_faults({"down": False})
        tasks = await system.settle(len(refs), within_seconds=60)
        truth = await system.truth()
        polls = (await system.stats())["polls"]
    assert settled_during == settled_before
    assert polls["unavailable"] > 0
    assert all(t["state"] == truth[t["provider_task_id"]] for t in tasks)
