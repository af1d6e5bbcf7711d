"""Case 3, growth: ingest throughput and p99 as the ledger grows to 10k, 100k and 1M tasks.

The ledger is grown by bulk inserts (each task with one earlier delivery and its first
transition, as a ledger in use holds) while the receiver is stopped; callbacks then go to
tasks picked at random across the whole ledger. The baseline is the smallest ledger.
"""

from __future__ import annotations

import time
from typing import Any

from bench import ingest, ledger
from bench.context import Context
from bench.ingest import Matrix
from bench.procs import uvicorn_server
from bench.report import CaseResult, Check, Spread, number, ratio

CONNECTIONS = 16
SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (10_000, 100_000)
TARGETS = 2_000


def measure_size(ctx: Context, url: str, size: int) -> dict[str, Any]:
    targets = ledger.sample_targets(url, ctx.secrets, TARGETS)
    data = ingest.write_gateway_data(ctx.scratch("data") / f"growth-{size}.tsv", targets)
    env = ctx.secrets.receiver_env(url)
    logs = ctx.scratch("logs")
    with uvicorn_server(
        f"growth-{size}", ingest.RECEIVER_APP, env, ctx.cores.server, logs
    ) as server:
        handler = ingest.Handler(
            "token", "taskledger", server, "gateway", ingest.stored_by_body(url, "delivery")
        )
        matrix = Matrix(ctx, [handler], data, [], f"growth{size}")
        runs = [matrix.one_run(handler, CONNECTIONS, run) for run in range(ctx.runs)]
    for run in runs:
        print(
            f"  {size:>9,} tasks: {run['rps']:,.0f} req/s, p99 {run['p99_ms']:.1f} ms", flush=True
        )
    return {"size": size, "runs": runs}


def run_growth(ctx: Context) -> CaseResult:
    url_dir = ctx.scratch("growth")
    sizes = QUICK_SIZES if ctx.quick else SIZES
    results = []
    with ledger.sqlite_url(url_dir, "ledger") as url:
        ledger.migrate(url)
        current = 0
        for size in sizes:
            began = time.monotonic()
            ledger.grow(url, size - current, ledger.Growth())
            current = size
            print(f"  grown to {size:,} tasks in {time.monotonic() - began:.0f} s", flush=True)
            results.append(measure_size(ctx, url, size))
    return summarize(results)


HEADER = [
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


def summarize(results: list[dict[str, Any]]) -> CaseResult:
    case = CaseResult(
        name="growth",
        title=f"Growth (SQLite, c={CONNECTIONS}): ingest as the ledger grows",
        header=HEADER,
        raw={"sizes": results},
    )
    base = Spread.of([run["rps"] for run in results[0]["runs"]]).median
    for result in results:
        runs = result["runs"]
        rps = Spread.of([run["rps"] for run in runs])
        case.rows.append(
            [
                number(result["size"]),
                rps.text(),
                f"{ratio(rps.median, base):.0%}",
                Spread.of([run["p50_ms"] for run in runs]).text(1),
                Spread.of([run["p99_ms"] for run in runs]).text(1),
                Spread.of([run["cpu_us_per_request"] for run in runs]).text(0),
                number(sum(run["ok_2xx"] for run in runs)),
                number(sum(run["stored"] for run in runs)),
                number(sum(run["missing"] for run in runs)),
            ]
        )
    largest = results[-1]
    share = ratio(Spread.of([run["rps"] for run in largest["runs"]]).median, base)
    met = share >= 0.9 if largest["size"] == SIZES[-1] else None
    case.checks.append(
        Check(
            f"growth: throughput at {largest['size']:,} tasks ≥ 90% of 10k (target stated for 1M)",
            f"{share:.0%}",
            met,
        )
    )
    case.notes.append(
        "each grown task also has one delivery and one transition, so the delivery table "
        "holds about as many rows as the task table"
    )
    return case
