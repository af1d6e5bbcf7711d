"""Case relay: one relay process (the Procfile's `relay`) delivering to a local consumer.

The consumer (`consumer_app`, uvicorn on the server core) answers 204 at once and notes when
each event came. The relay runs on the client core; each run gets a fresh ledger:
- throughput: `MESSAGES` events (one `task.running` per task) wait in the outbox before the
  relay starts; messages per second from the consumer's first request to its last. Every
  attempt is recorded in the ledger before its dispatch is let go, so this counts the
  relay's writes too.
- latency: with the relay idle, a steady trickle of transitions (`TRICKLE_PER_SECOND`), each
  timed from the moment its commit returned to the moment the consumer got its event.
- the floor: just before each run, a bare aiohttp client (no ledger, no signing) on the same
  core POSTs as many events of the same size to the same consumer, as many at a time as the
  relay sends to one endpoint; the relay's rate is also given as a share of that one.
On SQLite (synchronous=FULL), and on PostgreSQL when it is reachable.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Any

import aiohttp
import httpx
import orjson
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bench import ledger
from bench.context import Context
from bench.procs import Server, process, uvicorn_server
from bench.report import CaseResult, Check, Spread, number
from ops.procfile import python_command
from schemas.clock import utc_now
from schemas.database import create_engine
from schemas.ledger import Poll
from schemas.settings import NotifySettings
from schemas.states import State
from schemas.store import LedgerStore, NewTask, new_task_row
from schemas.tables import TASK
from schemas.wire import Observation

CONSUMER_APP = "bench.relay:consumer_app"
MESSAGES, QUICK_MESSAGES = 5_000, 2_000
TRICKLE_PER_SECOND = 20
TRICKLE_SECONDS, QUICK_TRICKLE_SECONDS = 10, 5
FILL_BATCH = 500
WAIT_SECONDS = 300
TARGET_PER_SECOND = 1_000
TARGET_P50_MS = 50
PROVIDER = "apidot"
ENDPOINT = "ep_bench"
SECRET = "whsec_YmVuY2gtcmVsYXktc2lnbmluZy1rZXktMzItYnl0ZXM="
RELAY_SETTINGS = {
    "TASKLEDGER_NOTIFY_ALLOW_HTTP": "true",
    "TASKLEDGER_NOTIFY_ALLOW_NETWORKS": "127.0.0.1/32",
    "TASKLEDGER_LOG_LEVEL": "warning",
    "TASKLEDGER_LOG_JSON": "true",
}
# The bare client sends as many at a time as the relay does to one endpoint by default.
BARE_CONCURRENCY = NotifySettings().concurrency_per_endpoint
BARE_STAMP = "2026-01-01T00:00:00.000000+00:00"


# -- the consumer ----------------------------------------------------------------------------


def consumer_app() -> Starlette:
    """`POST /hook`: 204, noting when each event came (`GET /seen`, `POST /reset`)."""
    arrivals: list[tuple[str, str, float]] = []

    async def hook(request: Request) -> Response:
        body = await request.body()
        ref = orjson.loads(body)["data"]["ref"]
        arrivals.append((request.headers["webhook-id"], ref, time.time()))
        return Response(status_code=204)

    async def seen(_: Request) -> Response:
        return JSONResponse({"arrivals": arrivals})

    async def reset(_: Request) -> Response:
        arrivals.clear()
        return Response(status_code=204)

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/hook", hook, methods=["POST"]),
            Route("/seen", seen),
            Route("/reset", reset, methods=["POST"]),
            Route("/healthz", healthz),
        ]
    )


def arrivals(consumer: Server) -> list[tuple[str, str, float]]:
    rows = httpx.get(f"{consumer.url}/seen", timeout=30).json()["arrivals"]
    return [(webhook_id, ref, at) for webhook_id, ref, at in rows]


def wait_for(consumer: Server, count: int) -> list[tuple[str, str, float]]:
    """The consumer's arrivals once it has `count` distinct events."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        seen = arrivals(consumer)
        if len({webhook_id for webhook_id, _, _ in seen}) >= count:
            return seen
        time.sleep(0.1)
    raise RuntimeError(f"the consumer got {len(seen)} of {count} events in {WAIT_SECONDS} s")


# -- the ledger ------------------------------------------------------------------------------


@asynccontextmanager
async def opened(database_url: str) -> AsyncIterator[LedgerStore]:
    engine = create_engine(database_url)
    store = LedgerStore(engine, utc_now)
    try:
        yield store
    finally:
        await store.close()
        await engine.dispose()


def running(task_id: str, ref: str) -> Poll:
    seen = Observation(task_id, State.RUNNING, 10)
    return Poll(ref, utc_now(), None, observation=seen, http_status=200, body="{}")


async def _fill(database_url: str, consumer_url: str, count: int) -> None:
    """The endpoint, and `count` tasks each moved to running: `count` events, not fanned
    out yet."""
    async with opened(database_url) as store:
        await store.create_endpoint(
            {"id": ENDPOINT, "kind": "http", "url": consumer_url, "secrets": [{"secret": SECRET}]}
        )
        now = datetime.now(UTC)
        for start in range(0, count, FILL_BATCH):
            rows = [
                new_task_row(NewTask(PROVIDER, provider_task_id=f"fill-{i}"), now)
                for i in range(start, min(count, start + FILL_BATCH))
            ]
            async with store.engine.begin() as conn:
                await conn.execute(TASK.insert(), rows)
            await store.ingest([running(row["provider_task_id"], row["ref"]) for row in rows])


async def _trickle(database_url: str, seconds: float) -> dict[str, float]:
    """One transition every 1/TRICKLE_PER_SECOND s for `seconds`: when each commit returned,
    by task ref."""
    committed: dict[str, float] = {}
    async with opened(database_url) as store:
        began = time.monotonic()
        for i in range(int(seconds * TRICKLE_PER_SECOND)):
            await asyncio.sleep(max(0.0, began + i / TRICKLE_PER_SECOND - time.monotonic()))
            task = await store.register(NewTask(PROVIDER, provider_task_id=f"trickle-{i}"))
            await store.ingest([running(f"trickle-{i}", task.ref)])
            committed[task.ref] = time.time()
    return committed


# -- the floor: a bare client ----------------------------------------------------------------


def bare_request(number: int) -> tuple[bytes, dict[str, str]]:
    """An event shaped and sized like the relay's `task.running` ones, with headers of the
    same sizes (the signature is not computed: that is the relay's work, not the floor's)."""
    data = {
        "ref": f"bare-{number:021d}",
        "provider": PROVIDER,
        "provider_task_id": f"fill-{number}",
        "owner": "",
        "model": "",
        "state": "running",
        "progress": 10,
        "result": None,
        "confirmed": True,
        "conflict": False,
        "version": 2,
        "created_at": BARE_STAMP,
        "updated_at": BARE_STAMP,
        "terminal_at": None,
        "cost": None,
        "seq": 1,
    }
    event = {"type": "task.running", "timestamp": BARE_STAMP, "schema_version": "1", "data": data}
    headers = {
        "content-type": "application/json",
        "user-agent": "taskledger-relay",
        "webhook-id": f"msg_bare{number:016d}",
        "webhook-timestamp": str(int(time.time())),
        "webhook-signature": "v1," + "A" * 43 + "=",
    }
    return orjson.dumps(event), headers


async def post_bare(url: str, count: int, concurrency: int) -> None:
    """POST `count` events to `url`, `concurrency` at a time, with nothing else to do."""
    numbers = iter(range(count))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:

        async def worker() -> None:
            for number in numbers:
                body, headers = bare_request(number)
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()

        await asyncio.gather(*[worker() for _ in range(concurrency)])


def bare_client_rate(ctx: Context, consumer: Server, count: int) -> float:
    """Messages per second of a bare aiohttp client (uvloop, like the relay) on the relay's
    core, counted at the consumer like the relay's."""
    httpx.post(f"{consumer.url}/reset", timeout=30)
    command = [sys.executable, "-m", "bench.relay", "bare-client", f"{consumer.url}/hook"]
    command += [str(count), str(BARE_CONCURRENCY)]
    with process("relay-bare-client", command, {}, ctx.cores.client, ctx.scratch("logs")) as proc:
        seen = wait_for(consumer, count)
        proc.popen.wait(timeout=WAIT_SECONDS)
    httpx.post(f"{consumer.url}/reset", timeout=30)
    times = [at for _, _, at in seen]
    return count / (max(times) - min(times))


# -- the case --------------------------------------------------------------------------------


@contextmanager
def relay_process(ctx: Context, database_url: str, name: str) -> Iterator[None]:
    env = RELAY_SETTINGS | {"TASKLEDGER_DATABASE_URL": database_url}
    with process(name, python_command("relay"), env, ctx.cores.client, ctx.scratch("logs")):
        yield


def one_run(ctx: Context, consumer: Server, database_url: str, label: str) -> dict[str, Any]:
    messages = QUICK_MESSAGES if ctx.quick else MESSAGES
    seconds = QUICK_TRICKLE_SECONDS if ctx.quick else TRICKLE_SECONDS
    ledger.migrate(database_url)
    asyncio.run(_fill(database_url, f"{consumer.url}/hook", messages))
    bare = bare_client_rate(ctx, consumer, messages)
    with relay_process(ctx, database_url, f"relay-{label}"):
        burst = wait_for(consumer, messages)
        httpx.post(f"{consumer.url}/reset", timeout=30)
        committed = asyncio.run(_trickle(database_url, seconds))
        trickle = wait_for(consumer, len(committed))
    times = [at for _, _, at in burst]
    first_seen: dict[str, float] = {}
    for _, ref, at in trickle:
        first_seen.setdefault(ref, at)
    latencies = sorted((first_seen[ref] - at) * 1000 for ref, at in committed.items())
    per_second = messages / (max(times) - min(times))
    result = {
        "messages": messages,
        "per_second": per_second,
        "bare_per_second": bare,
        "share_of_bare": per_second / bare,
        "duplicates": len(burst) - len({webhook_id for webhook_id, _, _ in burst}),
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "samples": len(latencies),
    }
    print(
        f"  {label}: {per_second:,.0f} messages/s ({per_second / bare:.0%} of a bare client's "
        f"{bare:,.0f}/s), commit to delivery p50 {result['p50_ms']:.1f} ms, "
        f"p99 {result['p99_ms']:.1f} ms",
        flush=True,
    )
    return result


def run_backend(ctx: Context, consumer: Server, backend: str) -> list[dict[str, Any]]:
    runs = []
    for run in range(ctx.runs):
        label = f"{backend.lower()}-{run + 1}"
        if backend == "SQLite":
            with ledger.sqlite_url(ctx.scratch(f"relay/{label}"), "ledger") as url:
                runs.append(one_run(ctx, consumer, url, label))
        else:
            with ledger.postgres_url(f"relay{run}") as url:
                runs.append(one_run(ctx, consumer, url, label))
    return runs


def run_relay(ctx: Context) -> CaseResult:
    backends = ["SQLite"] + (["PostgreSQL"] if ledger.postgres_available() else [])
    with uvicorn_server(
        "relay-consumer", CONSUMER_APP, {}, ctx.cores.server, ctx.scratch("logs")
    ) as consumer:
        ctx.note_load("relay")
        results = {backend: run_backend(ctx, consumer, backend) for backend in backends}
    return summarize(results)


HEADER = [
    "database",
    "messages/s",
    "bare client msg/s",
    "relay ÷ bare",
    "commit → delivery p50 ms",
    "p99 ms",
    "duplicates",
]


def summarize(results: dict[str, list[dict[str, Any]]]) -> CaseResult:
    any_run = next(iter(results.values()))[0]
    case = CaseResult(
        name="relay",
        title=f"Relay: {any_run['messages']:,} queued events to one loopback consumer, "
        f"then a trickle of {TRICKLE_PER_SECOND}/s",
        header=HEADER,
        raw=results,
    )
    for backend, runs in results.items():
        keys = ("per_second", "bare_per_second", "share_of_bare", "p50_ms")
        figures = {key: Spread.of([r[key] for r in runs]) for key in keys}
        p99 = Spread.of([r["p99_ms"] for r in runs])
        case.rows.append(
            [
                backend,
                figures["per_second"].text(),
                figures["bare_per_second"].text(),
                figures["share_of_bare"].text(2),
                figures["p50_ms"].text(1),
                p99.text(1),
                str(sum(r["duplicates"] for r in runs)),
            ]
        )
        rate, p50 = figures["per_second"].median, figures["p50_ms"].median
        case.checks += [
            Check(
                f"relay ({backend}): ≥ {TARGET_PER_SECOND:,} messages/s from one relay",
                f"{number(rate)}/s",
                rate >= TARGET_PER_SECOND,
            ),
            Check(
                f"relay ({backend}): commit → delivery p50 < {TARGET_P50_MS} ms",
                f"{number(p50, 1)} ms",
                p50 < TARGET_P50_MS,
            ),
        ]
    case.notes += [
        "one relay process (defaults: 4 per endpoint, batches of 200, outbox looked at every "
        "25 ms when idle), each attempt recorded in the ledger as it ends",
        "latency: from the return of the transition's commit to the consumer's receipt, "
        "on one machine's clock",
        f"bare client: aiohttp on uvloop on the relay's core, {BARE_CONCURRENCY} at a time, "
        "events of the same size to the same consumer, no ledger and no signing, run just "
        "before each relay run: the most this machine's client core delivers; relay ÷ bare is "
        "the relay's share of it",
    ]
    return case


def main(argv: list[str]) -> int:
    """`python -m bench.relay bare-client URL COUNT CONCURRENCY`: the bare client."""
    if len(argv) != 4 or argv[0] != "bare-client":
        print(main.__doc__, file=sys.stderr)
        return 2
    uvloop.run(post_bare(argv[1], int(argv[2]), int(argv[3])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
