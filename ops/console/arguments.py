"""Argument types the console's commands share: times and ids as the API reads them."""

from __future__ import annotations

import argparse
import re
from datetime import datetime

from schemas.clock import aware

_ID = re.compile(r"[A-Za-z0-9_-]+")


def iso_time(raw: str) -> str:
    """An ISO-8601 time, UTC when it names no zone, written back in full."""
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {raw!r}") from None
    try:
        return aware(when).isoformat()
    except OverflowError:
        raise argparse.ArgumentTypeError(f"not a time of years 1 to 9999 in UTC: {raw!r}") from None


def identifier(raw: str) -> str:
    """An id the API made (`tl_…`, `ep_…`, `msg_…`): letters, digits, `_` and `-`."""
    if not _ID.fullmatch(raw):
        raise argparse.ArgumentTypeError(f"not an id: {raw!r}")
    return raw


def json_output() -> argparse.ArgumentParser:
    """A parent parser for commands that can print the API's JSON instead of a table."""
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="print the API's JSON")
    return output
