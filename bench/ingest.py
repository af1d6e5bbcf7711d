"""Case 1, ingest: the receiver against a no-op endpoint and a naive durable handler.

All servers run at once on the server core (idle ones cost nothing) and the runs are
interleaved, so that background load on the machine falls on every handler alike.
Every request carries a distinct delivery; after each run the deliveries of that run
(found by their namespace) are counted in the database and compared with the 2xx answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from standardwebhooks import Webhook

from bench import ledger
from bench.baselines import FLOOR_DATABASE_URL, FLOOR_TABLE, NAIVE_DATABASE_URL
from bench.context import Context
from bench.load import Load, LoadResult, run_load
from bench.procs import RssSampler, Server, cpu_seconds, uvicorn_server
from bench.report import NONE, CaseResult, Check, Spread, number, ratio

RECEIVER_APP = "receiver.app:create_app"
NOOP_APP = "bench.baselines:noop_app"
NAIVE_APP = "bench.baselines:naive_app"
FLOOR_APP = "bench.baselines:floor_app"
SIGNED_PER_SECOND_CAP = 9_000  # pre-signed requests per second of a run, more than it can take
CONCURRENCY = (16, 64)
Counter = Callable[[str], int]


@dataclass(frozen=True, slots=True)
class Handler:
    """One thing to load: a server, the kind of request it gets, how to count what it stored."""

    key: str
    label: str
    server: Server
    mode: str
    stored: Counter | None = None


@dataclass(frozen=True, slots=True)
class Servers:
    receiver: Server
    noop: Server
    naive: Server
    floor: Server | None = None  # the durable floor on this database, when measured


def write_gateway_data(path: Path, targets: Sequence[ledger.Target]) -> Path:
    path.write_text("".join(f"{t.path}\t{t.provider_task_id}\n" for t in targets))
    return path


def write_signed_data(
    path: Path, targets: Sequence[ledger.Target], secret: str, namespace: str, count: int
) -> Path:
    """`count` distinct `video.completed` events for the targets, signed now."""
    hook, now = Webhook(secret), datetime.now(UTC)
    lines = []
    for i in range(count):
        msg_id = f"msg-{namespace}-{i}"
        body = orjson.dumps(
            {
                "id": f"evt-{namespace}-{i}",
                "object": "event",
                "created_at": int(now.timestamp()),
                "type": "video.completed",
                "data": {"id": targets[i % len(targets)].provider_task_id},
            }
        ).decode()
        signature = hook.sign(msg_id=msg_id, timestamp=now, data=body)
        lines.append(f"/webhooks/openai\t{msg_id}\t{int(now.timestamp())}\t{signature}\t{body}\n")
    path.write_text("".join(lines))
    return path


def stored_by_body(url: str, table: str) -> Counter:
    return lambda ns: ledger.count_like(url, table, "body", f'%"request_id":"{ns}-%')


def stored_by_key(url: str) -> Counter:
    return lambda ns: ledger.count_like(url, "delivery", "delivery_key", f"msg-{ns}-%")


def settled_count(count: Counter, namespace: str) -> int:
    """The count once it stops moving (requests in flight when wrk stopped may still commit)."""
    previous = -1
    for _ in range(20):
        current = count(namespace)
        if current == previous:
            return current
        previous = current
        time.sleep(0.3)
    return previous


def load_with_cpu(load: Load, server: Server) -> tuple[LoadResult, float]:
    """One wrk run, and the CPU the server spent on it per request (µs): steadier than
    throughput when other work shares the machine."""
    before = cpu_seconds(server.pid)
    result = run_load(load)
    return result, (cpu_seconds(server.pid) - before) * 1e6 / max(result.requests, 1)


# -- servers ----------------------------------------------------------------------


@contextmanager
def running_servers(
    ctx: Context, receiver_url: str, naive_url: str, floor_url: str | None = None
) -> Iterator[Servers]:
    ledger.migrate(receiver_url)
    logs = ctx.scratch("logs")
    core = ctx.cores.server
    with ExitStack() as stack:
        receiver = stack.enter_context(
            uvicorn_server(
                "receiver", RECEIVER_APP, ctx.secrets.receiver_env(receiver_url), core, logs
            )
        )
        noop = stack.enter_context(uvicorn_server("noop", NOOP_APP, {}, core, logs))
        naive_env = {NAIVE_DATABASE_URL: naive_url}
        naive = stack.enter_context(uvicorn_server("naive", NAIVE_APP, naive_env, core, logs))
        floor = None
        if floor_url is not None:
            floor_env = {FLOOR_DATABASE_URL: floor_url}
            floor = stack.enter_context(uvicorn_server("floor", FLOOR_APP, floor_env, core, logs))
        yield Servers(receiver, noop, naive, floor)


# -- runs -------------------------------------------------------------------------


@dataclass
class Matrix:
    """The ingest runs of one database: handlers x concurrency x repetitions."""

    ctx: Context
    handlers: list[Handler]
    gateway_data: Path
    signed_targets: list[ledger.Target]
    label: str

    def data_for(self, handler: Handler, namespace: str, seconds: int) -> Path:
        if handler.mode != "signed":
            return self.gateway_data
        path = self.ctx.scratch("data") / f"signed-{namespace}.tsv"
        count = SIGNED_PER_SECOND_CAP * seconds + 2_000
        return write_signed_data(
            path, self.signed_targets, self.ctx.secrets.webhook, namespace, count
        )

    def load(
        self, handler: Handler, connections: int, namespace: str, seconds: int
    ) -> tuple[LoadResult, float, float]:
        """The run's result, the server's peak RSS (MB) and its CPU per request (µs)."""
        data = self.data_for(handler, namespace, seconds)
        load = Load(
            handler.server.url,
            handler.mode,
            data,
            connections,
            seconds,
            namespace=namespace,
            core=self.ctx.cores.client,
        )
        with RssSampler(handler.server.pid) as rss:
            result, cpu_us = load_with_cpu(load, handler.server)
        return result, rss.max_mb, cpu_us

    def one_run(self, handler: Handler, connections: int, run: int) -> dict[str, Any]:
        prefix = f"{self.label}{handler.key}c{connections}r{run}"
        self.load(handler, connections, prefix + "w", self.ctx.warmup_seconds)
        namespace = prefix + "m"
        result, rss_mb, cpu_us = self.load(
            handler, connections, namespace, self.ctx.duration_seconds
        )
        stored = settled_count(handler.stored, namespace) if handler.stored else None
        return {
            **result.as_dict(),
            "namespace": namespace,
            "stored": stored,
            "missing": max(0, result.ok - stored) if stored is not None else None,
            "rss_max_mb": round(rss_mb, 1),
            "cpu_us_per_request": round(cpu_us, 1),
            "loadavg": self.ctx.note_load(namespace),
        }

    def run_all(self) -> dict[str, dict[int, list[dict[str, Any]]]]:
        runs: dict[str, dict[int, list[dict[str, Any]]]] = {h.key: {} for h in self.handlers}
        for connections in CONCURRENCY:
            for run in range(self.ctx.runs):
                for handler in self.handlers:
                    result = self.one_run(handler, connections, run)
                    runs[handler.key].setdefault(connections, []).append(result)
                    print(_progress(self.label, handler, connections, result), flush=True)
        return runs


def _progress(label: str, handler: Handler, connections: int, result: dict[str, Any]) -> str:
    return (
        f"  [{label}] {handler.label} c={connections}: {result['rps']:,.0f} req/s "
        f"p50 {result['p50_ms']:.1f} ms p99 {result['p99_ms']:.1f} ms "
        f"2xx {result['ok_2xx']} stored {result['stored']}"
    )


def handlers_for(
    servers: Servers, receiver_url: str, naive_url: str, floor_url: str | None = None
) -> list[Handler]:
    floor = []
    if servers.floor is not None and floor_url is not None:
        floor = [
            Handler(
                "floor",
                "durable floor: raw bodies, group commit",
                servers.floor,
                "gateway",
                stored_by_body(floor_url, FLOOR_TABLE),
            )
        ]
    return [
        Handler("noop", "no-op Starlette", servers.noop, "gateway"),
        *floor,
        Handler(
            "naive",
            "naive SQLModel session per request",
            servers.naive,
            "gateway",
            stored_by_body(naive_url, "naive_delivery"),
        ),
        Handler(
            "token",
            "taskledger, token callback",
            servers.receiver,
            "gateway",
            stored_by_body(receiver_url, "delivery"),
        ),
        Handler(
            "signed",
            "taskledger, signed webhook",
            servers.receiver,
            "signed",
            stored_by_key(receiver_url),
        ),
    ]


def run_ingest(
    ctx: Context, receiver_url: str, naive_url: str, label: str, floor_url: str | None = None
) -> CaseResult:
    """Case 1 on the database behind `receiver_url` (the naive handler uses `naive_url`, the
    durable floor, when measured, `floor_url`)."""
    tasks = 1_000 if ctx.quick else 2_000
    with running_servers(ctx, receiver_url, naive_url, floor_url) as servers:
        admin = ctx.secrets.admin
        gateway = ledger.register(servers.receiver.url, admin, ledger.GATEWAY, tasks, "gw")
        signed = ledger.register(servers.receiver.url, admin, ledger.SIGNED, tasks, "video")
        data = write_gateway_data(ctx.scratch("data") / f"gateway-{label}.tsv", gateway)
        handlers = handlers_for(servers, receiver_url, naive_url, floor_url)
        runs = Matrix(ctx, handlers, data, signed, label).run_all()
        batches = writer_batches(servers.receiver)
    return summarize(label, handlers, runs, batches)


def writer_batches(receiver: Server) -> dict[str, float]:
    """Mean group-commit batch size over the whole case, from the receiver's /metrics."""
    text = httpx.get(receiver.url + "/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("taskledger_writer_batch_size_sum", "taskledger_writer_batch_size_count"):
            values[name.rsplit("_", 1)[1]] = float(value)
    count = values.get("count", 0.0)
    return {"batches": count, "mean_batch": values.get("sum", 0.0) / count if count else 0.0}


# -- summary ----------------------------------------------------------------------

HEADER = [
    "handler",
    "c",
    "req/s",
    "vs no-op",
    "vs naive",
    "p50 ms",
    "p99 ms",
    "2xx",
    "stored",
    "missing",
    "max RSS MB",
    "server CPU µs/req",
]


def spread(runs: list[dict[str, Any]], key: str) -> Spread:
    return Spread.of([run[key] for run in runs])


def summarize(
    label: str,
    handlers: list[Handler],
    runs: dict[str, dict[int, list[dict[str, Any]]]],
    batches: dict[str, float],
) -> CaseResult:
    case = CaseResult(
        name=f"ingest-{label}",
        title=f"Ingest ({label}): throughput and latency against the baselines",
        header=HEADER,
        raw={"runs": runs, "writer": batches},
    )
    for connections in CONCURRENCY:
        noop = spread(runs["noop"][connections], "rps").median
        naive = spread(runs["naive"][connections], "rps").median
        for handler in handlers:
            case.rows.append(
                _row(handler, connections, runs[handler.key][connections], noop, naive)
            )
    case.checks = ingest_checks(label, runs)
    case.notes.append(
        f"group commit: {batches['batches']:,.0f} batches, mean {batches['mean_batch']:.1f} "
        "deliveries per batch (whole case, warm-ups included)"
    )
    if "floor" in runs:
        case.notes.append(floor_note(runs))
    return case


def floor_note(runs: dict[str, dict[int, list[dict[str, Any]]]]) -> str:
    """How near the no-op the durable floor comes, and taskledger's share of the floor."""
    parts = []
    for connections in CONCURRENCY:
        noop, floor, token, signed = (
            spread(runs[key][connections], "rps").median
            for key in ("noop", "floor", "token", "signed")
        )
        parts.append(
            f"c={connections}: the floor {ratio(floor, noop):.0%} of the no-op; taskledger "
            f"{ratio(token, floor):.0%} (token) and {ratio(signed, floor):.0%} (signed) "
            "of the floor"
        )
    return "durable floor (raw bodies, group commit, no ledger): " + "; ".join(parts)


def _row(
    handler: Handler, connections: int, runs: list[dict[str, Any]], noop: float, naive: float
) -> list[str]:
    rps = spread(runs, "rps")
    stored = [run["stored"] for run in runs]
    counted = handler.stored is not None
    return [
        handler.label,
        str(connections),
        rps.text(),
        f"{ratio(rps.median, noop):.0%}",
        f"{ratio(rps.median, naive):.1f}x",
        spread(runs, "p50_ms").text(1),
        spread(runs, "p99_ms").text(1),
        number(sum(run["ok_2xx"] for run in runs)),
        number(sum(stored)) if counted else NONE,
        number(sum(run["missing"] for run in runs)) if counted else NONE,
        number(max(run["rss_max_mb"] for run in runs)),
        spread(runs, "cpu_us_per_request").text(0),
    ]


# Issue 22: taskledger's share of the durable floor, and its p99 at c=16 (ms), per database.
FLOOR_TARGETS = {"SQLite": (0.80, 15.0), "PostgreSQL": (0.70, 25.0)}


def floor_checks(
    label: str, key: str, runs: dict[str, dict[int, list[dict[str, Any]]]]
) -> list[Check]:
    """The share of the durable floor that `key`'s runs reached, when the floor ran."""
    if "floor" not in runs or label not in FLOOR_TARGETS:
        return []
    share = FLOOR_TARGETS[label][0]
    checks = []
    for connections in CONCURRENCY:
        mine = spread(runs[key][connections], "rps").median
        floor = spread(runs["floor"][connections], "rps").median
        cpu = spread(runs[key][connections], "cpu_us_per_request").median
        checks.append(
            Check(
                f"{label} {key} c={connections}: ≥ {share:.0%} of the durable floor",
                f"{ratio(mine, floor):.0%}; {one_core_ceiling(cpu, floor)}",
                mine >= share * floor,
            )
        )
    return checks


def one_core_ceiling(cpu_us: float, floor_rps: float) -> str:
    """What the receiver could answer with its CPU per request and a whole core busy (one
    process, one event loop): an upper bound, as a share of the floor. Below the target,
    no change but a cheaper request can meet it."""
    ceiling = 1e6 / cpu_us if cpu_us else 0.0
    return f"a core at {cpu_us:.0f} µs/request: {ceiling:,.0f}/s, {ratio(ceiling, floor_rps):.0%}"


def ingest_checks(label: str, runs: dict[str, dict[int, list[dict[str, Any]]]]) -> list[Check]:
    checks = []
    for key in ("token", "signed"):
        for connections in CONCURRENCY:
            mine = spread(runs[key][connections], "rps").median
            noop = spread(runs["noop"][connections], "rps").median
            naive = spread(runs["naive"][connections], "rps").median
            name = f"{label} {key} c={connections}"
            checks.append(
                Check(f"{name}: ≥ 50% of no-op", f"{ratio(mine, noop):.0%}", mine >= 0.5 * noop)
            )
            checks.append(
                Check(f"{name}: ≥ 8x naive", f"{ratio(mine, naive):.1f}x", mine >= 8 * naive)
            )
        p99, p99_max = (
            spread(runs[key][16], "p99_ms").median,
            FLOOR_TARGETS.get(label, (0, 25.0))[1],
        )
        checks.append(
            Check(f"{label} {key} c=16: p99 < {p99_max:g} ms", f"{p99:.1f} ms", p99 < p99_max)
        )
        checks += floor_checks(label, key, runs)
    receiver_runs = [r for key in ("token", "signed") for c in CONCURRENCY for r in runs[key][c]]
    missing = sum(run["missing"] for run in receiver_runs)
    checks.append(Check(f"{label}: no acknowledged delivery missing", str(missing), missing == 0))
    rss = max(run["rss_max_mb"] for run in receiver_runs)
    checks.append(Check(f"{label}: receiver RSS under load < 150 MB", f"{rss:.0f} MB", rss < 150))
    return checks
