"""Case `scale`, scale-out on PostgreSQL: one receiver process against two, on one database.

Nothing is pinned: the receivers, wrk and PostgreSQL share the machine's cores as a
deployment's processes would. In the same run, token callbacks go to one receiver (one wrk,
`CONNECTIONS` connections), then to two receivers on their own ports (two wrk processes at
once, half the connections each), interleaved. Every run reports where the machine's CPU
went, from /proc: each receiver, wrk (the children this process waited for), PostgreSQL's
backends serving this database, its other processes (WAL writer, checkpointer, ...), the
rest of the machine's busy time (`other`) and its idle time. On a machine of two cores the
ratio is bounded by what the load generator and the database leave to the receivers; the
split says how much that was.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from bench import ingest, ledger
from bench.context import Context
from bench.load import Load, LoadResult, run_load
from bench.procs import Server, cpu_seconds, uvicorn_server
from bench.report import CaseResult, Check, Spread, number, ratio

CONNECTIONS = 64  # in all, split evenly between the receivers
SCALE_TARGET = 1.6  # two receivers against one (issue 22, target 4)
TASKS = 2_000


@dataclass(frozen=True, slots=True)
class Cpu:
    """CPU seconds of each part of the system, read at one moment."""

    parts: dict[str, float]
    total: float  # every core's busy and idle time
    idle: float

    def minus(self, before: Cpu) -> Cpu:
        """The CPU spent since `before`, with what no part of the system spent as `other`
        (the rest of the machine: other work on a shared host)."""
        parts = {name: value - before.parts.get(name, 0.0) for name, value in self.parts.items()}
        total, idle = self.total - before.total, self.idle - before.idle
        parts["other"] = max(0.0, total - idle - sum(parts.values()))
        return Cpu(parts, total, idle)


def machine_seconds() -> tuple[float, float]:
    """All cores' time and idle time so far (seconds), from the first line of /proc/stat."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields[:8]) / ticks, idle / ticks


def postgres_pids(url: str) -> tuple[list[int], list[int]]:
    """PostgreSQL's backends serving this database, and its processes serving none
    (background writers: every database's, this run's included)."""

    async def run() -> tuple[list[int], list[int]]:
        name = url.rsplit("/", 1)[1]
        conn = await asyncpg.connect(
            host=ledger.PG_HOST, port=ledger.PG_PORT, user=ledger.PG_USER, database="postgres"
        )
        try:
            rows = await conn.fetch("SELECT pid, datname FROM pg_stat_activity")
        finally:
            await conn.close()
        mine = [row["pid"] for row in rows if row["datname"] == name]
        others = [row["pid"] for row in rows if row["datname"] is None]
        return mine, others

    return asyncio.run(run())


def read_cpu(receivers: Sequence[Server], url: str) -> Cpu:
    mine, auxiliary = postgres_pids(url)
    children = os.times()
    parts = {server.name: cpu_seconds(server.pid) for server in receivers}
    parts["wrk"] = children.children_user + children.children_system
    parts["postgres (this database)"] = sum(cpu_seconds(pid) for pid in mine)
    parts["postgres (background)"] = sum(cpu_seconds(pid) for pid in auxiliary)
    total, idle = machine_seconds()
    return Cpu(parts, total, idle)


def load_all(loads: Sequence[Load]) -> list[LoadResult]:
    """The loads at once, one wrk each."""
    results: list[LoadResult | None] = [None] * len(loads)

    def one(index: int) -> None:
        results[index] = run_load(loads[index])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(loads))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [result for result in results if result is not None]


@dataclass
class Scale:
    ctx: Context
    url: str
    receivers: list[Server]
    targets: list[ledger.Target]

    def loads(self, count: int, namespace: str, seconds: int) -> list[Load]:
        """One wrk per receiver, each on its own share of the tasks (receivers of one
        deployment serve different tasks' callbacks at any moment, not the same rows)."""
        per = CONNECTIONS // count
        loads = []
        for i, server in enumerate(self.receivers[:count]):
            data = self.ctx.scratch("data") / f"scale-{count}-{i}.tsv"
            if not data.exists():
                ingest.write_gateway_data(data, self.targets[i::count])
            name = f"{namespace}p{i}"
            loads.append(Load(server.url, "gateway", data, per, seconds, namespace=name))
        return loads

    def one_run(self, count: int, run: int) -> dict[str, Any]:
        prefix = f"scale{count}r{run}"
        load_all(self.loads(count, prefix + "w", self.ctx.warmup_seconds))
        before = read_cpu(self.receivers, self.url)
        results = load_all(self.loads(count, prefix + "m", self.ctx.duration_seconds))
        used = read_cpu(self.receivers, self.url).minus(before)
        requests = sum(result.requests for result in results)
        seconds = max(result.duration_seconds for result in results)
        stored = sum(
            ingest.settled_count(ingest.stored_by_body(self.url, "delivery"), load.namespace)
            for load in self.loads(count, prefix + "m", 0)
        )
        ok = sum(result.ok for result in results)
        return {
            "receivers": count,
            "rps": requests / seconds if seconds else 0.0,
            "requests": requests,
            "ok_2xx": ok,
            "stored": stored,
            "missing": max(0, ok - stored),
            "p99_ms": max(result.p99_ms for result in results),
            "cpu_seconds": used.parts,
            "machine_seconds": used.total,
            "idle_seconds": used.idle,
            "loadavg": self.ctx.note_load(prefix),
        }

    def run_all(self) -> dict[int, list[dict[str, Any]]]:
        runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
        for run in range(self.ctx.runs):
            for count in (1, 2):
                result = self.one_run(count, run)
                runs[count].append(result)
                print(
                    f"  [scale] {count} receiver(s): {result['rps']:,.0f} req/s, p99 "
                    f"{result['p99_ms']:.1f} ms, stored {result['stored']}",
                    flush=True,
                )
        return runs


@contextmanager
def receivers(ctx: Context, url: str) -> Iterator[list[Server]]:
    logs = ctx.scratch("logs")
    env = ctx.secrets.receiver_env(url)
    with ExitStack() as stack:
        yield [
            stack.enter_context(uvicorn_server(name, ingest.RECEIVER_APP, env, None, logs))
            for name in ("receiver-1", "receiver-2")
        ]


def run_scale(ctx: Context) -> CaseResult:
    if not ledger.postgres_available():
        missing = CaseResult("scale", "Scale-out (PostgreSQL)", ["case"], [["no PostgreSQL"]])
        missing.checks.append(Check("scale-out", "PostgreSQL unreachable", None))
        return missing
    with ledger.postgres_url("scale") as url:
        ledger.migrate(url)
        with receivers(ctx, url) as servers:
            targets = ledger.register(
                servers[0].url, ctx.secrets.admin, ledger.GATEWAY, TASKS, "scale"
            )
            runs = Scale(ctx, url, servers, targets).run_all()
    return summarize(runs)


HEADER = [
    "receivers",
    "req/s",
    "vs one",
    "p99 ms",
    "2xx",
    "missing",
    "CPU split (share of the machine's time)",
    "idle",
]


def cpu_split(run: dict[str, Any]) -> str:
    machine = run["machine_seconds"] or 1.0
    return ", ".join(
        f"{name} {seconds / machine:.0%}" for name, seconds in run["cpu_seconds"].items()
    )


def summarize(runs: dict[int, list[dict[str, Any]]]) -> CaseResult:
    one = Spread.of([run["rps"] for run in runs[1]]).median
    two = Spread.of([run["rps"] for run in runs[2]]).median
    case = CaseResult(
        name="scale",
        title=f"Scale-out (PostgreSQL, unpinned): one receiver against two, c={CONNECTIONS}",
        header=HEADER,
        raw={"runs": runs},
    )
    for count in (1, 2):
        rps = Spread.of([run["rps"] for run in runs[count]])
        median_run = sorted(runs[count], key=lambda run: run["rps"])[len(runs[count]) // 2]
        case.rows.append(
            [
                str(count),
                rps.text(),
                f"{ratio(rps.median, one):.2f}x",
                Spread.of([run["p99_ms"] for run in runs[count]]).text(1),
                number(sum(run["ok_2xx"] for run in runs[count])),
                number(sum(run["missing"] for run in runs[count])),
                cpu_split(median_run),
                f"{median_run['idle_seconds'] / (median_run['machine_seconds'] or 1):.0%}",
            ]
        )
    case.checks.append(
        Check(
            f"scale-out: two receivers ≥ {SCALE_TARGET}x one",
            f"{ratio(two, one):.2f}x",
            two >= SCALE_TARGET * one,
        )
    )
    missing = sum(run["missing"] for count in (1, 2) for run in runs[count])
    case.checks.append(
        Check("scale-out: no acknowledged delivery missing", str(missing), not missing)
    )
    case.notes.append(
        "CPU split: each process's user + system time over the measured run, as a share of "
        "all cores' time (100% = the whole machine); the run in the middle by throughput"
    )
    return case
