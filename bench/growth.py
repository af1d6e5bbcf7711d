"""Case 3, growth: ingest throughput and p99 as the ledger grows to 10k, 100k and 1M tasks.

Each size has its own ledger, grown by bulk inserts (each task with one earlier delivery and
its first transition, as a ledger in use holds) while no receiver runs; callbacks then go to
tasks picked at random across the whole ledger. The baseline is the smallest ledger, measured
in the same rounds as the others.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
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


def one_run(ctx: Context, url: str, size: int, run: int) -> dict[str, Any]:
    """A receiver on the ledger of `size` tasks, and one warmed-up run against it."""
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
        result = Matrix(ctx, [handler], data, [], f"growth{size}").one_run(
            handler, CONNECTIONS, run
        )
    print(
        f"  {size:>9,} tasks: {result['rps']:,.0f} req/s, p99 {result['p99_ms']:.1f} ms, "
        f"{result['cpu_us_per_request']:.0f} µs CPU/req",
        flush=True,
    )
    return result


def run_growth(ctx: Context) -> CaseResult:
    """One ledger per size, then the runs interleaved across sizes (10k, 100k, 1M, 10k,
    ...): on a shared machine the load of the moment then falls on every size alike,
    where measuring each size's runs back to back would put minutes of drift into the
    ratio."""
    directory = ctx.scratch("growth")
    sizes = QUICK_SIZES if ctx.quick else SIZES
    urls = {}
    with ExitStack() as stack:
        for size in sizes:
            url = urls[size] = stack.enter_context(ledger.sqlite_url(directory, f"ledger{size}"))
            ledger.migrate(url)
            began = time.monotonic()
            ledger.grow(url, size, ledger.Growth())
            print(f"  grown to {size:,} tasks in {time.monotonic() - began:.0f} s", flush=True)
        runs: dict[int, list[dict[str, Any]]] = {size: [] for size in sizes}
        for run in range(ctx.runs):
            for size in sizes:
                runs[size].append(one_run(ctx, urls[size], size, run))
    return summarize([{"size": size, "runs": runs[size]} for size in sizes])


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
    rounds = zip(results[0]["runs"], largest["runs"], strict=True)
    paired = ", ".join(f"{ratio(big['rps'], small['rps']):.0%}" for small, big in rounds)
    case.notes.append(
        f"{largest['size']:,} tasks against {results[0]['size']:,}, round by round: {paired}"
    )
    case.notes.append(
        "each grown task also has one delivery and one transition, so the delivery table "
        "holds about as many rows as the task table"
    )
    return case
