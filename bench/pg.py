"""Case 5, PostgreSQL: ingest (case 1, with PostgreSQL's own durable floor) and catch-up
(case 4) on the local PostgreSQL.

Each part creates its own databases on 127.0.0.1:5432 (user postgres, trust) and drops them.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from bench import catchup, ingest, ledger
from bench.context import Context
from bench.report import CaseResult, Check


def postgres_urls(name: str) -> AbstractContextManager[str]:
    return ledger.postgres_url(name)


def run_postgres(ctx: Context) -> list[CaseResult]:
    if not ledger.postgres_available():
        missing = CaseResult(
            name="postgres",
            title="PostgreSQL",
            header=["case"],
            rows=[["not measured: no PostgreSQL at 127.0.0.1:5432"]],
        )
        missing.checks.append(Check("PostgreSQL cases", "PostgreSQL unreachable", None))
        return [missing]
    with (
        ledger.postgres_url("ingest") as receiver_url,
        ledger.postgres_url("naive") as naive_url,
        ledger.postgres_url("floor") as floor_url,
    ):
        ingested = ingest.run_ingest(ctx, receiver_url, naive_url, "PostgreSQL", floor_url)
    caught_up = catchup.run_catchup(ctx, postgres_urls, "PostgreSQL")
    return [ingested, caught_up]


# CPU per request on PostgreSQL may be at most this many times SQLite's (issue 22, target 2).
CPU_RATIO_MAX = 1.5


def add_cpu_check(results: list[CaseResult]) -> bool:
    """Add to PostgreSQL's ingest case taskledger's CPU per request there against SQLite's
    (medians at c=16), when both ingest cases ran; say whether it did."""
    by_name = {case.name: case for case in results}
    sqlite, postgres = by_name.get("ingest-SQLite"), by_name.get("ingest-PostgreSQL")
    if sqlite is None or postgres is None:
        return False
    for key in ("token", "signed"):
        mine, base = (
            ingest.spread(case.raw["runs"][key][16], "cpu_us_per_request").median
            for case in (postgres, sqlite)
        )
        postgres.checks.append(
            Check(
                f"PostgreSQL {key} c=16: CPU/request ≤ {CPU_RATIO_MAX}x SQLite's",
                f"{mine:.0f} µs vs {base:.0f} µs ({mine / base:.2f}x)",
                mine <= CPU_RATIO_MAX * base,
            )
        )
    return True
