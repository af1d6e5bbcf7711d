"""`python -m bench.pg_params [--elements N] [--calls C]`: the client CPU asyncpg spends on a
statement's parameters, as arrays (one a column, how the ingest path once passed a batch's
rows) against the same values as one JSON text (how it passes them now), against a
statement without parameters, on the local PostgreSQL.

asyncpg checks every element of an array it encodes for being an array itself and converts
each `datetime` in Python; orjson writes the whole JSON text in C. The round trip is the
same for each statement; the CPU time (`time.process_time`) above the bare statement's is
the parameters' cost. Prints CPU µs a call, its excess a value, and each array's call as a
ratio to the call passing the same values as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from bench.ledger import PG_HOST, PG_PORT, PG_USER

Args = Callable[[], list[Any]]


async def _cpu_per_call(conn: Any, query: str, args: Args, calls: int) -> float:
    """CPU µs a call, the parameters made for each (the JSON text written each time)."""
    for _ in range(calls // 10):  # warm: the statement prepared, its types introspected
        await conn.fetchval(query, *args())
    started = time.process_time()
    for _ in range(calls):
        await conn.fetchval(query, *args())
    return (time.process_time() - started) / calls * 1e6


async def measure(elements: int, calls: int) -> dict[str, float]:
    texts = [f"value-{i}-of-a-provider-task-id" for i in range(elements)]
    times = [datetime.now(UTC)] * elements
    cases: dict[str, tuple[str, Args]] = {
        "bare statement": ("SELECT 1", list),
        "text[]": ("SELECT cardinality($1::text[])", lambda: [texts]),
        "timestamptz[]": ("SELECT cardinality($1::timestamptz[])", lambda: [times]),
        "JSON (the text[] values)": (
            "SELECT length($1::text)",
            lambda: [orjson.dumps(texts).decode()],
        ),
        "JSON (the times)": ("SELECT length($1::text)", lambda: [orjson.dumps(times).decode()]),
    }
    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
    try:
        return {
            name: await _cpu_per_call(conn, q, args, calls) for name, (q, args) in cases.items()
        }
    finally:
        await conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pg_params", description=__doc__)
    parser.add_argument("--elements", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    found = asyncio.run(measure(args.elements, args.calls))
    bare = found.pop("bare statement")
    print(
        f"{args.elements} values a parameter, {args.calls} calls; the bare statement {bare:,.0f} µs"
    )
    as_json = {
        "text[]": found["JSON (the text[] values)"],
        "timestamptz[]": found["JSON (the times)"],
    }
    for name, cpu in found.items():
        extra = cpu - bare
        line = f"  {name:<26} {cpu:>8,.1f} µs a call, {extra / args.elements:+.3f} µs a value"
        if name in as_json:
            line += f"; {cpu / as_json[name]:.2f}x the call with the same values as JSON"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
