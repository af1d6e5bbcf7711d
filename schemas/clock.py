"""The one place that reads the wall clock; everything else takes a clock as a parameter."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import orjson

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(when: datetime) -> str:
    """`when.isoformat()`, the same text. A time in UTC, as the ledger's are, is written by
    orjson: `isoformat` formats through C's printf, about 7,000 instructions a call, and
    the ledger writes several times a delivery."""
    if when.tzinfo is UTC:
        return orjson.dumps(when)[1:-1].decode()
    return when.isoformat()


def utc_iso(when: datetime) -> str:
    """`iso` of an aware time, in UTC (the text the ledger stores and sends)."""
    return iso(when.astimezone(UTC))


def aware(moment: datetime) -> datetime:
    """`moment` with a zone (UTC when it names none); `OverflowError` when it is not a time
    of years 1 to 9999 in UTC, which the ledger compares in (9999-12-31T23:00-05:00 is not)."""
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    moment.astimezone(UTC)
    return moment
