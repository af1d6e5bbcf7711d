"""Case 2, duplicate storm: every delivery resent 10 times; duplicates must change nothing.

Per run, fresh tasks each get a "running" and a "finished" token callback, each sent 10
times (all the running ones first, round-robin). The proof: the tasks' callback
transitions equal their distinct state changes (2 per task), one stored delivery per
distinct body, and every other send counted as a duplicate. The baseline is the no-op
endpoint under the same requests.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import ingest, ledger
from bench.context import Context
from bench.load import Load
from bench.procs import Server, uvicorn_server
from bench.report import NONE, CaseResult, Check, Spread, number, ratio
from schemas.states import Source

CONNECTIONS = 64
SENDS_PER_DELIVERY = 10
DELIVERIES_PER_TASK = 2
MAX_SECONDS = 240

_PROOF_SQL = {
    "transitions": (
        "SELECT count(*) FROM transition JOIN task ON task.ref = transition.task_ref "
        "WHERE task.provider_task_id LIKE :prefix AND transition.source = :source"
    ),
    "deliveries": (
        "SELECT count(*) FROM delivery JOIN task ON task.ref = delivery.task_ref "
        "WHERE task.provider_task_id LIKE :prefix"
    ),
    "duplicates": (
        "SELECT coalesce(sum(delivery.duplicate_count), 0) FROM delivery "
        "JOIN task ON task.ref = delivery.task_ref WHERE task.provider_task_id LIKE :prefix"
    ),
}


def storm(ctx: Context, server: Server, data: Path, tasks: int, namespace: str) -> dict[str, Any]:
    limit = tasks * DELIVERIES_PER_TASK * SENDS_PER_DELIVERY
    load = Load(
        server.url, "dupes", data, CONNECTIONS, MAX_SECONDS, namespace, limit, ctx.cores.client
    )
    result, cpu_us = ingest.load_with_cpu(load, server)
    return {
        **result.as_dict(),
        "cpu_us_per_request": round(cpu_us, 1),
        "loadavg": ctx.note_load(namespace),
    }


def proof(url: str, prefix: str) -> dict[str, int]:
    pattern = prefix + "-%"
    return {
        name: ledger.scalar(url, sql, prefix=pattern, source=Source.WEBHOOK.value)
        for name, sql in _PROOF_SQL.items()
    }


def one_run(ctx: Context, servers: tuple[Server, Server], url: str, run: int) -> dict[str, Any]:
    receiver, noop = servers
    tasks = 1_000 if ctx.quick else 2_000
    prefix = f"dupe{run}"
    targets = ledger.register(receiver.url, ctx.secrets.admin, ledger.GATEWAY, tasks, prefix)
    data = ingest.write_gateway_data(ctx.scratch("data") / f"{prefix}.tsv", targets)
    baseline = storm(ctx, noop, data, tasks, f"{prefix}noop")
    measured = storm(ctx, receiver, data, tasks, f"{prefix}tl")
    found = ingest.settled_count(lambda _ns: proof(url, prefix)["duplicates"], prefix)
    counts = {**proof(url, prefix), "duplicates": found}
    print(
        f"  run {run}: {measured['rps']:,.0f} req/s (no-op {baseline['rps']:,.0f}), "
        f"transitions {counts['transitions']} for {tasks * DELIVERIES_PER_TASK} state changes",
        flush=True,
    )
    return {"tasks": tasks, "noop": baseline, "taskledger": measured, "proof": counts}


def run_dupes(ctx: Context) -> CaseResult:
    directory = ctx.scratch("dupes")
    logs = ctx.scratch("logs")
    with ledger.sqlite_url(directory, "ledger") as url, ExitStack() as stack:
        ledger.migrate(url)
        env = ctx.secrets.receiver_env(url)
        core = ctx.cores.server
        receiver = stack.enter_context(
            uvicorn_server("dupes-receiver", ingest.RECEIVER_APP, env, core, logs)
        )
        noop = stack.enter_context(uvicorn_server("dupes-noop", ingest.NOOP_APP, {}, core, logs))
        runs = [one_run(ctx, (receiver, noop), url, run) for run in range(ctx.runs)]
    return summarize(runs)


HEADER = [
    "handler",
    "c",
    "sends",
    "req/s",
    "vs no-op",
    "p99 ms",
    "server CPU µs/req",
    "distinct state changes",
    "transitions",
    "stored deliveries",
    "duplicates counted",
]


def summarize(runs: list[dict[str, Any]]) -> CaseResult:
    case = CaseResult(
        name="dupes",
        title=f"Duplicate storm (SQLite, c={CONNECTIONS}): each delivery sent "
        f"{SENDS_PER_DELIVERY} times",
        header=HEADER,
        raw={"runs": runs},
    )
    noop = Spread.of([run["noop"]["rps"] for run in runs])
    mine = Spread.of([run["taskledger"]["rps"] for run in runs])
    changes = sum(run["tasks"] * DELIVERIES_PER_TASK for run in runs)
    transitions = sum(run["proof"]["transitions"] for run in runs)
    sends = sum(run["taskledger"]["sent"] for run in runs)
    stored = sum(run["proof"]["deliveries"] for run in runs)
    case.rows.append(_row("no-op Starlette", runs, "noop", noop, noop))
    case.rows.append(
        [
            *_row("taskledger, token callback", runs, "taskledger", mine, noop)[:7],
            number(changes),
            number(transitions),
            number(stored),
            number(sum(run["proof"]["duplicates"] for run in runs)),
        ]
    )
    case.checks.append(
        Check(
            "dupes: transitions = distinct state changes",
            f"{transitions:,} = {changes:,} ({sends:,} sends)",
            transitions == changes,
        )
    )
    case.checks.append(
        Check("dupes: one stored delivery per distinct body", f"{stored:,}", stored == changes)
    )
    return case


def _row(label: str, runs: list[dict[str, Any]], key: str, rps: Spread, noop: Spread) -> list[str]:
    return [
        label,
        str(CONNECTIONS),
        number(sum(run[key]["sent"] for run in runs)),
        rps.text(),
        f"{ratio(rps.median, noop.median):.0%}",
        Spread.of([run[key]["p99_ms"] for run in runs]).text(1),
        Spread.of([run[key]["cpu_us_per_request"] for run in runs]).text(0),
        *[NONE] * 4,
    ]
