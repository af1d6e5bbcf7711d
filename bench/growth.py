"""Case 3, growth: ingest throughput and p99 as the ledger grows to 10k, 100k and 1M tasks,
on SQLite and on PostgreSQL, with callbacks for two kinds of task:

- `random`: tasks picked at random across the whole ledger, the harsh case (every callback
  may touch pages no other recent one did), reported as it is;
- `recent`: the most recent 2,000 tasks, the realistic case (callbacks come minutes after
  submission, so they are for the tasks registered last), which must keep at least 90% of
  the 10k figure at 1M tasks.

Each size has its own ledger, grown by bulk inserts (each task with one earlier delivery and
its first transition, as a ledger in use holds) while no receiver runs, within a time
budget. The baseline of each access mode is the smallest ledger, measured in the same rounds.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench import ingest, ledger
from bench.context import Context
from bench.ingest import Matrix
from bench.procs import uvicorn_server
from bench.report import CaseResult, Check, Spread, number, ratio
from schemas.database import create_engine
from schemas.store import NewTask, new_task_row
from schemas.tables import DELIVERY, TASK

CONNECTIONS = 16
SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (10_000, 100_000)
TARGETS = 2_000
ACCESS = ("recent", "random")
# Realistic access at the largest ledger keeps at least this share of the smallest's.
RECENT_SHARE = 0.9
# A ledger that takes longer than this to grow stops the case (a bulk insert of 1M tasks,
# their deliveries and transitions takes a few minutes on this machine).
GROW_BUDGET_SECONDS = 900.0


@dataclass(frozen=True, slots=True)
class Database:
    """One backend the case runs on: its label and where each ledger is made."""

    label: str
    directory: Path | None = None  # SQLite: the folder of its files; PostgreSQL: None

    def ledger_url(self, size: int) -> AbstractContextManager[str]:
        if self.directory is None:
            return ledger.postgres_url(f"growth{size}")
        return ledger.sqlite_url(self.directory, f"ledger{size}")


@dataclass(frozen=True, slots=True)
class Grown:
    """A ledger grown here (`grow_within_budget`): task i has ref `prefix` + i in 8 digits
    and provider task id `grown-` + a hash of i, so callbacks need no query to find them."""

    prefix: str
    size: int
    seconds: float

    def task(self, i: int) -> tuple[str, str]:
        return f"{self.prefix}{i:08d}", f"grown-{(i * HASH_FACTOR) % HASH_MODULUS:08x}"

    def targets(self, secrets: ledger.Secrets, access: str) -> list[ledger.Target]:
        """`TARGETS` tasks: the most recent ones (newest first), or picked at random."""
        count = min(TARGETS, self.size)
        if access == "recent":
            picked = list(range(self.size - 1, self.size - 1 - count, -1))
        else:
            picked = random.sample(range(self.size), count)
        return [
            ledger.Target(ref, task_id, secrets.callback_path(ref, ledger.GATEWAY))
            for ref, task_id in map(self.task, picked)
        ]


def one_run(ctx: Context, url: str, grown: Grown, access: str, run: int) -> dict[str, Any]:
    """A receiver on a grown ledger, and one warmed-up run against it."""
    size = grown.size
    chosen = grown.targets(ctx.secrets, access)
    data = ingest.write_gateway_data(ctx.scratch("data") / f"growth-{size}-{access}.tsv", chosen)
    env = ctx.secrets.receiver_env(url)
    logs = ctx.scratch("logs")
    with uvicorn_server(
        f"growth-{size}", ingest.RECEIVER_APP, env, ctx.cores.server, logs
    ) as server:
        handler = ingest.Handler(
            "token", "taskledger", server, "gateway", ingest.stored_by_body(url, "delivery")
        )
        result = Matrix(ctx, [handler], data, [], f"growth{size}{access}").one_run(
            handler, CONNECTIONS, run
        )
    print(
        f"  {size:>9,} tasks, {access}: {result['rps']:,.0f} req/s, "
        f"p99 {result['p99_ms']:.1f} ms, {result['cpu_us_per_request']:.0f} µs CPU/req",
        flush=True,
    )
    return result


# -- bulk growth ----------------------------------------------------------------------
#
# A ledger of 1M tasks (and their deliveries and transitions) made row by row in Python
# takes tens of minutes on this machine; here the database copies one task made by the
# store (`new_task_row`) `size` times, each copy with its own ref and provider task id, in
# chunked `INSERT ... SELECT` statements. Refs keep their order of creation (the newest
# last, as the store's sortable refs do); provider task ids are scattered (a multiplicative
# hash of the index), as a provider's are.


@dataclass(frozen=True, slots=True)
class Dialect:
    """The few expressions that differ between SQLite and PostgreSQL."""

    series: str  # rows `s(i)` for i from :start to :stop
    digits: str  # i as 8 decimal digits
    scattered: str  # a bijective hash of i as 8 hex digits
    blob: str  # the text `{}` as bytes


# The provider task id of task i: `grown-` and (i * HASH_FACTOR) mod 2^32 in hex, a
# bijection (the factor is odd), so ids are unique and scattered over the index.
HASH_FACTOR = 2_654_435_761
HASH_MODULUS = 2**32
SQLITE = Dialect(
    series="(WITH RECURSIVE s(i) AS (SELECT :start UNION ALL SELECT i + 1 FROM s "
    "WHERE i < :stop) SELECT i FROM s) AS s",
    digits="printf('%08d', i)",
    scattered=f"printf('%08x', (i * {HASH_FACTOR}) % {HASH_MODULUS})",
    blob="CAST({} AS BLOB)",
)
POSTGRES = Dialect(
    series="generate_series(CAST(:start AS BIGINT), CAST(:stop AS BIGINT)) AS s(i)",
    digits="lpad(CAST(i AS TEXT), 8, '0')",
    scattered=f"lpad(to_hex((i * {HASH_FACTOR}) % {HASH_MODULUS}), 8, '0')",
    blob="convert_to({}, 'UTF8')",
)
GROW_CHUNK = 100_000
# A grown task's delivery: an earlier "not started" callback, as `bench.ledger` grows them.
DELIVERY_BODY = ('{"code":200,"data":{"task_id":"', '","status":"not_started","progress":0}}')


def grow_within_budget(url: str, size: int) -> Grown:
    """Bulk-insert the ledger of `size` tasks, in time: raises once past the budget
    (checked after each chunk, so a slow disk stops the case, not the run)."""
    began = time.monotonic()
    prefix = asyncio.run(_grow(url, size, began))
    return Grown(prefix, size, time.monotonic() - began)


async def _grow(url: str, size: int, began: float) -> str:
    """The ref prefix of the tasks grown."""
    engine = create_engine(url)
    dialect = POSTGRES if engine.dialect.name == "postgresql" else SQLITE
    template = new_task_row(
        NewTask(ledger.GATEWAY, owner="bench", model="sora-2", provider_task_id="grown"),
        datetime.now(UTC),
    )
    prefix = str(template["ref"])[:-8]
    try:
        for start in range(0, size, GROW_CHUNK):
            stop = min(size, start + GROW_CHUNK) - 1
            async with engine.begin() as conn:
                await conn.execute(_tasks_insert(dialect, template), {"start": start, "stop": stop})
                bounds = {"low": prefix + f"{start:08d}", "high": prefix + f"{stop:08d}"}
                await conn.execute(_deliveries_insert(dialect), bounds)
                await conn.execute(_transitions_insert(), bounds)
            if time.monotonic() - began > GROW_BUDGET_SECONDS:
                raise TimeoutError(
                    f"growing {size:,} tasks took over {GROW_BUDGET_SECONDS:.0f} s "
                    f"({stop + 1:,} inserted)"
                )
    finally:
        await engine.dispose()
    return prefix


def _tasks_insert(dialect: Dialect, template: dict[str, Any]) -> sa.TextClause:
    """Copies of `template` for i in :start..:stop; only names and `:params` go into the SQL."""
    varying = {
        "ref": f":ref_prefix || {dialect.digits}",
        "provider_task_id": f"'grown-' || {dialect.scattered}",
    }
    names = [column.name for column in TASK.columns]
    values = ", ".join(varying.get(name, f":{name}") for name in names)
    statement = sa.text(
        f"INSERT INTO task ({', '.join(names)}) SELECT {values} FROM {dialect.series}"
    )
    fixed = [name for name in names if name not in varying]
    return statement.bindparams(
        sa.bindparam("ref_prefix", template["ref"][:-8]),
        *(sa.bindparam(name, template[name], type_=TASK.c[name].type) for name in fixed),
    )


def _deliveries_insert(dialect: Dialect) -> sa.TextClause:
    """One earlier delivery for each task with a ref in :low..:high (a 64-character key,
    the length of the sha256 keys of token callbacks)."""
    body = dialect.blob.format(":body_head || provider_task_id || :body_tail")
    statement = sa.text(
        "INSERT INTO delivery (provider, delivery_key, task_ref, provider_task_id, body, "
        "headers, auth, state, outcome, duplicate_count, received_at, last_seen_at) "
        "SELECT provider, substr('grown:' || provider_task_id || :padding, 1, 64), ref, "
        f"provider_task_id, {body}, :headers, 'token', 'queued', 'stale', 0, created_at, "
        "created_at FROM task WHERE ref BETWEEN :low AND :high"
    )
    return statement.bindparams(
        sa.bindparam("padding", "0" * 64),
        sa.bindparam("body_head", DELIVERY_BODY[0]),
        sa.bindparam("body_tail", DELIVERY_BODY[1]),
        sa.bindparam(
            "headers", {"content-type": "application/json"}, type_=DELIVERY.c.headers.type
        ),
    )


def _transitions_insert() -> sa.TextClause:
    """Each task's first transition (to `submitted`), for refs in :low..:high."""
    return sa.text(
        "INSERT INTO transition (task_ref, from_state, to_state, source, source_id, at) "
        "SELECT ref, NULL, 'submitted', 'api', NULL, created_at FROM task "
        "WHERE ref BETWEEN :low AND :high"
    )


def run_growth(ctx: Context) -> list[CaseResult]:
    """The case on SQLite, then on PostgreSQL when it answers."""
    results = [growth_on(ctx, Database("SQLite", ctx.scratch("growth")))]
    if ledger.postgres_available():
        results.append(growth_on(ctx, Database("PostgreSQL")))
    else:
        missing = CaseResult("growth-PostgreSQL", "Growth (PostgreSQL)", ["case"])
        missing.rows.append(["not measured: no PostgreSQL at 127.0.0.1:5432"])
        missing.checks.append(Check("growth PostgreSQL", "PostgreSQL unreachable", None))
        results.append(missing)
    return results


def growth_on(ctx: Context, database: Database) -> CaseResult:
    """One ledger per size, then the runs interleaved across sizes and access modes (10k,
    100k, 1M, 10k, ...): on a shared machine the load of the moment then falls on every
    size alike, where measuring each size's runs back to back would put minutes of drift
    into the ratio."""
    sizes = QUICK_SIZES if ctx.quick else SIZES
    with ExitStack() as stack:
        urls, grown = {}, {}
        for size in sizes:
            url = urls[size] = stack.enter_context(database.ledger_url(size))
            ledger.migrate(url)
            grown[size] = grow_within_budget(url, size)
            took = grown[size].seconds
            print(f"  [{database.label}] grown to {size:,} tasks in {took:.0f} s", flush=True)
        runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for run, size, access in _rounds(ctx.runs, sizes):
            result = one_run(ctx, urls[size], grown[size], access, run)
            runs.setdefault((access, size), []).append(result)
    seconds = {size: grown[size].seconds for size in sizes}
    return summarize(database.label, sizes, runs, seconds)


def _rounds(count: int, sizes: tuple[int, ...]) -> Iterator[tuple[int, int, str]]:
    for run in range(count):
        for size in sizes:
            for access in ACCESS:
                yield run, size, access


HEADER = [
    "access",
    "ledger tasks",
    "req/s",
    "vs smallest",
    "p50 ms",
    "p99 ms",
    "server CPU µs/req",
    "2xx",
    "stored",
    "missing",
]


def summarize(
    label: str,
    sizes: tuple[int, ...],
    runs: dict[tuple[str, int], list[dict[str, Any]]],
    grown: dict[int, float],
) -> CaseResult:
    case = CaseResult(
        name=f"growth-{label}",
        title=f"Growth ({label}, c={CONNECTIONS}): ingest as the ledger grows",
        header=HEADER,
        raw={
            "runs": {f"{access}-{size}": result for (access, size), result in runs.items()},
            "grown_seconds": grown,
        },
    )
    for access in ACCESS:
        base = _median(runs[access, sizes[0]], "rps")
        for size in sizes:
            case.rows.append(_row(access, size, runs[access, size], base))
    largest = sizes[-1]
    share = ratio(_median(runs["recent", largest], "rps"), _median(runs["recent", sizes[0]], "rps"))
    case.checks.append(
        Check(
            f"growth {label}: recent tasks at {largest:,} ≥ {RECENT_SHARE:.0%} of 10k "
            "(target stated for 1M)",
            f"{share:.0%}",
            share >= RECENT_SHARE if largest == SIZES[-1] else None,
        )
    )
    missing = sum(run["missing"] for result in runs.values() for run in result)
    case.checks.append(
        Check(f"growth {label}: no acknowledged delivery missing", str(missing), missing == 0)
    )
    for access in ACCESS:
        rounds = zip(runs[access, sizes[0]], runs[access, largest], strict=True)
        paired = ", ".join(f"{ratio(big['rps'], small['rps']):.0%}" for small, big in rounds)
        case.notes.append(
            f"{access}: {largest:,} tasks against {sizes[0]:,}, round by round: {paired}"
        )
    case.notes.append(
        "recent: callbacks for the 2,000 tasks registered last; random: for 2,000 tasks "
        "picked across the whole ledger. Each grown task also has one delivery and one "
        "transition; ledgers grown by bulk insert in "
        + ", ".join(f"{grown[size]:.0f} s ({size:,})" for size in sizes)
    )
    return case


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return Spread.of([run[key] for run in runs]).median


def _row(access: str, size: int, runs: list[dict[str, Any]], base: float) -> list[str]:
    rps = Spread.of([run["rps"] for run in runs])
    return [
        access,
        number(size),
        rps.text(),
        f"{ratio(rps.median, base):.0%}",
        Spread.of([run["p50_ms"] for run in runs]).text(1),
        Spread.of([run["p99_ms"] for run in runs]).text(1),
        Spread.of([run["cpu_us_per_request"] for run in runs]).text(0),
        number(sum(run["ok_2xx"] for run in runs)),
        number(sum(run["stored"] for run in runs)),
        number(sum(run["missing"] for run in runs)),
    ]
