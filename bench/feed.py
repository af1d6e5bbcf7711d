"""Case: batches that each append transitions, four writers at once on PostgreSQL, with the
change feed's lock held shared by writers (as now) against held exclusively (as before:
every writer of transitions queued for it, through its commit and fsync), in one run.

Each delivery is a task's first callback, so each batch of four appends four transitions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bench import ledger
from bench.context import Context
from bench.report import CaseResult, Check, ratio
from schemas.clock import utc_now
from schemas.database import create_engine
from schemas.ledger import Auth, Delivery
from schemas.states import State
from schemas.store import LedgerStore, NewTask, pg_ingest
from schemas.wire import Observation

WRITERS = 4
BATCH = 4
# Shared must beat exclusive by this much with four writers (the point of sharing it).
GAIN_MIN = 1.15


@contextmanager
def feed_lock(mode: str) -> Iterator[None]:
    """The ingest's feed statement taking the lock `shared` (as shipped) or `exclusive`."""
    shipped = pg_ingest._FEED
    if mode == "exclusive":
        pg_ingest._FEED = shipped.replace("pg_advisory_xact_lock_shared", "pg_advisory_xact_lock")
    try:
        yield
    finally:
        pg_ingest._FEED = shipped


def first_callback(ref: str, task_id: str) -> Delivery:
    return Delivery(
        provider="apidot",
        delivery_key=f"first-{ref}",
        body=b"{}",
        headers={},
        auth=Auth.TOKEN,
        observation=Observation(task_id, State.RUNNING, 10),
        received_at=utc_now(),
        task_ref=ref,
    )


async def transitions_per_second(store: LedgerStore, mode: str, label: str, tasks: int) -> float:
    ids = [f"{label}-{i}" for i in range(tasks)]
    registered = [
        await store.register(NewTask(provider="apidot", provider_task_id=task_id))
        for task_id in ids
    ]
    waiting = [first_callback(task.ref, i) for task, i in zip(registered, ids, strict=True)]

    async def writer() -> None:
        while waiting:
            batch = [waiting.pop() for _ in range(min(BATCH, len(waiting)))]
            await store.ingest(batch)

    with feed_lock(mode):
        started = time.perf_counter()
        await asyncio.gather(*[writer() for _ in range(WRITERS)])
        return tasks / (time.perf_counter() - started)


async def measure(url: str, rounds: int, tasks: int) -> dict[str, list[float]]:
    engine = create_engine(url)
    store = LedgerStore(engine, utc_now)
    found: dict[str, list[float]] = {"exclusive": [], "shared": []}
    try:
        for turn in range(rounds):
            for mode in found:  # interleaved: drift on the host hits both alike
                rate = await transitions_per_second(store, mode, f"{mode}-{turn}", tasks)
                found[mode].append(rate)
    finally:
        await store.close()
        await engine.dispose()
    return found


def run_feed(ctx: Context) -> CaseResult:
    case = CaseResult(
        name="feed",
        title="Change feed lock (PostgreSQL): four writers appending transitions",
        header=["feed lock held by writers", "transitions/s (median)", "runs", "vs exclusive"],
    )
    if not ledger.postgres_available():
        case.checks.append(Check("feed lock case", "PostgreSQL unreachable", None))
        return case
    rounds, tasks = (2, 800) if ctx.quick else (3, 2400)
    with ledger.postgres_url("feed") as url:
        ledger.migrate(url)
        found = asyncio.run(measure(url, rounds, tasks))
    medians = {mode: sorted(runs)[len(runs) // 2] for mode, runs in found.items()}
    for mode, runs in found.items():
        shown = ", ".join(f"{run:,.0f}" for run in runs)
        gain = ratio(medians[mode], medians["exclusive"])
        case.rows.append([mode, f"{medians[mode]:,.0f}", shown, f"{gain:.2f}x"])
    gain = ratio(medians["shared"], medians["exclusive"])
    case.checks.append(
        Check(f"shared feed lock ≥ {GAIN_MIN}x exclusive", f"{gain:.2f}x", gain >= GAIN_MIN)
    )
    case.notes.append(
        f"{WRITERS} writers, batches of {BATCH} first callbacks (one transition each), "
        f"{tasks:,} tasks a run; exclusive is the lock as it was before this change"
    )
    case.raw = found
    return case
