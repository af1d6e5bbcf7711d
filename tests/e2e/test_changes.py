"""The change feed while the receiver and two reconcilers write: every change once, in order."""

from __future__ import annotations

import asyncio

import httpx

from simulator import Faults, Lifecycle, SimConfig
from tests.support.system import System, running_system
from tests.support.waiting import until

CONFIG = SimConfig(
    seed=21,
    time_scale=0.05,
    lifecycle=Lifecycle(min_duration_s=0.2, max_duration_s=1.2, progress_callbacks=True),
    faults=Faults(drop_rate=0.3, duplicate_rate=0.2, reorder_rate=0.2),
)


class Consumer:
    """Follows the feed from a stored cursor, as a product would, and can be restarted."""

    def __init__(self, http: httpx.AsyncClient, headers: dict[str, str]) -> None:
        self.http = http
        self.headers = headers
        self.seen: list[int] = []
        self.cursor = 0

    async def follow(self, stop: asyncio.Event, max_changes: int | None = None) -> None:
        while not stop.is_set():
            answer = await self.http.get(
                "/v1/changes",
                params={"after": self.cursor, "limit": 37, "wait": 0.5},
                headers=self.headers,
            )
            assert answer.status_code == 200, answer.text
            body = answer.json()
            self.seen += [change["seq"] for change in body["changes"]]
            self.cursor = body["last_seq"]
            if max_changes is not None and len(self.seen) >= max_changes:
                return


async def test_feed_consumer_sees_every_transition_once_in_order_across_a_restart(
    database_url: str,
) -> None:
    async with running_system(database_url, CONFIG, reconcilers=2) as system:
        consumer = Consumer(system.service.http, system.service.admin)
        stop = asyncio.Event()
        first = asyncio.create_task(consumer.follow(stop, max_changes=150))
        refs = await submit_everywhere(system, 60)
        await first  # the consumer "restarts" here, from the cursor it stored
        second = asyncio.create_task(consumer.follow(stop))
        await system.settle(len(refs), within_seconds=90)
        # Nothing writes any more: every callback has been sent, no reconciler runs.
        await system.drain_callbacks()
        await system.stop_reconcilers()
        every = sorted(t["seq"] for steps in (await system.transitions()).values() for t in steps)
        await until(lambda: consumer.cursor >= every[-1], within=30)
        stop.set()
        await second
    print(f"\nfeed: {len(consumer.seen)} changes seen, {len(every)} transitions written")
    assert consumer.seen == every


async def submit_everywhere(system: System, per_provider: int) -> list[str]:
    refs: list[str] = []
    for provider in ("openai", "apidot", "evolink"):
        refs += await system.submit(provider, per_provider)
    return refs
