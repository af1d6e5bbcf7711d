"""Case 5, PostgreSQL: ingest (case 1) and catch-up (case 4) on the local PostgreSQL.

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
    with ledger.postgres_url("ingest") as receiver_url, ledger.postgres_url("naive") as naive_url:
        ingested = ingest.run_ingest(ctx, receiver_url, naive_url, "PostgreSQL")
    caught_up = catchup.run_catchup(ctx, postgres_urls, "PostgreSQL")
    return [ingested, caught_up]
