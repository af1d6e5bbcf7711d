"""`python -m bench.run [--quick] [--cases ingest,dupes,growth,catchup,pg,archive,scale,feed]`: run
the benchmarks (`catchup-pg`: the catch-up part of `pg` alone).

Writes `bench/results/<timestamp>.json` and `bench/results/summary.md`.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import archive, catchup, dupes, feed, growth, ingest, ledger, pg, relay, scale
from bench.context import Context
from bench.load import ensure_wrk
from bench.report import CaseResult, Check, write_results

CASES: dict[str, Callable[[Context], list[CaseResult]]] = {
    "ingest": lambda ctx: [sqlite_ingest(ctx)],
    "dupes": lambda ctx: [dupes.run_dupes(ctx)],
    "growth": growth.run_growth,
    "catchup": lambda ctx: [catchup.run_catchup_sqlite(ctx)],
    "catchup-pg": lambda ctx: [catchup.run_catchup(ctx, pg.postgres_urls, "PostgreSQL")],
    "pg": pg.run_postgres,
    "archive": lambda ctx: [archive.run_archive(ctx)],
    "relay": lambda ctx: [relay.run_relay(ctx)],
    "scale": lambda ctx: [scale.run_scale(ctx)],
    "feed": lambda ctx: [feed.run_feed(ctx)],
}
# Parts of another case, for running alone: left out of the default (every case).
PARTS = frozenset({"catchup-pg"})


def sqlite_ingest(ctx: Context) -> CaseResult:
    directory = ctx.scratch("ingest")
    with (
        ledger.sqlite_url(directory, "ledger") as receiver_url,
        ledger.sqlite_url(directory, "naive") as naive_url,
        ledger.sqlite_url(directory, "floor") as floor_url,
    ):
        return ingest.run_ingest(ctx, receiver_url, naive_url, "SQLite", floor_url)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one short run per figure")
    parser.add_argument(
        "--cases",
        default=",".join(name for name in CASES if name not in PARTS),
        help=f"comma-separated, from {', '.join(CASES)} (default: all but {', '.join(PARTS)})",
    )
    args = parser.parse_args(argv)
    args.cases = [name.strip() for name in args.cases.split(",") if name.strip()]
    if not args.cases:
        parser.error("--cases names no case")
    unknown = [name for name in args.cases if name not in CASES]
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)}")
    return args


def machine(ctx: Context) -> dict[str, Any]:
    wrk = subprocess.run([ensure_wrk(), "--version"], capture_output=True, text=True, check=False)
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "wrk": (wrk.stdout or wrk.stderr).split("[")[0].strip().removeprefix("wrk "),
        "server_core": ctx.cores.server,
        "client_core": ctx.cores.client,
    }


def run_case(name: str, ctx: Context) -> list[CaseResult]:
    """One case; a case that fails is reported as such and the run goes on."""
    print(f"== {name}", flush=True)
    began = time.monotonic()
    try:
        results = CASES[name](ctx)
    except Exception as exc:
        traceback.print_exc()
        failed = CaseResult(name, f"{name}: failed", ["error"], [[f"{type(exc).__name__}: {exc}"]])
        failed.checks.append(Check(f"{name}: case ran", type(exc).__name__, None))
        results = [failed]
    print(f"== {name} done in {time.monotonic() - began:.0f} s", flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    command = "python -m bench.run" + (" --quick" if args.quick else "")
    command += f" --cases {','.join(args.cases)}"
    with tempfile.TemporaryDirectory(prefix="taskledger-bench-") as workdir:
        ctx = Context(Path(workdir), quick=args.quick)
        meta: dict[str, Any] = {
            "started": started.isoformat(timespec="seconds"),
            "command": command,
            "machine": machine(ctx),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        }
        results: list[CaseResult] = []
        for name in args.cases:
            results += run_case(name, ctx)
            meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
            meta["loadavg_samples"] = ctx.loadavg
            path = write_results(stamp, meta, results)  # after each case: a crash keeps them
        if pg.add_cpu_check(results):  # PostgreSQL's CPU against SQLite's, when both ran
            path = write_results(stamp, meta, results)
    print(f"results: {path}")
    print((path.parent / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
