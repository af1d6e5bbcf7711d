"""`taskledger spool list` and `taskledger spool replay`: the deliveries a receiver set aside
in its spool's quarantine (`schemas.spool_file`), listed, and replayed into the ledger once
what made them fail is fixed. They run on the receiver's host, with its settings."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from ops.console.render import clock_text, new_table, show, text
from schemas.clock import utc_now
from schemas.database import create_engine, names_sqlite, require_current
from schemas.errors import EXIT_FAILED
from schemas.settings import Settings
from schemas.spool_file import (
    Quarantined,
    Replayed,
    quarantined,
    replay_quarantined,
    spool_directory,
)
from schemas.store import LedgerStore

SPOOL_HELP = """\
On PostgreSQL, a receiver keeps the callbacks it cannot store in a local spool and replays
them once the database is back. One whose replay keeps failing with anything but the
database being down is set aside in quarantine (`taskledger_spool_quarantine_depth`), so that
those after it go on. `list` shows what waits there; `replay` stores each again through the
ledger, once the cause is fixed (an upgrade, a provider configured again). A delivery
replayed stays in its file, marked with its outcome (`list --all`). Run these on the
receiver's host, with its environment: the spool is local to it.

exit codes: 0 done; 1 a delivery failed again (it stays in quarantine); 2 a bad setting;
3 the database unreachable or not migrated.
"""
LIST_COLUMNS = ("file", "seq", "provider", "task ref", "delivery key", "attempts", "quarantined")
REPLAY_COLUMNS = ("file", "seq", "provider", "task ref", "delivery key", "outcome", "error")


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `spool list` and `spool replay` to the `taskledger` parser."""
    spool = commands.add_parser(
        "spool",
        help="the receiver's local spool: deliveries in quarantine",
        description=SPOOL_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).add_subparsers(dest="spool_command", required=True)
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="one JSON object per delivery")
    listed = spool.add_parser("list", parents=[output], help="the deliveries in quarantine")
    listed.add_argument("--all", action="store_true", help="those replayed already too")
    spool.add_parser("replay", parents=[output], help="store the deliveries in quarantine")


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Run `spool list` or `spool replay` on the spool of the receiver `environ` configures."""
    settings = Settings.from_environ(environ)
    if names_sqlite(settings.database_url):
        print("taskledger: the ledger is SQLite, local already: it has no spool", file=sys.stderr)
        return 0
    directory = spool_directory(settings)
    if args.spool_command == "list":
        return _list(directory, args.all, args.json)
    return _replay(settings, directory, args.json)


def _list(directory: Path, every: bool, as_json: bool) -> int:
    found = asyncio.run(quarantined(directory, replayed=every))
    if not found:
        print(f"taskledger: nothing in quarantine in {directory}", file=sys.stderr)
    elif as_json:
        _print_json_lines(_entry_json(entry) for entry in found)
    else:
        show(_list_table(found, every), fit=False)
    return 0


def _replay(settings: Settings, directory: Path, as_json: bool) -> int:
    replayed = asyncio.run(_replay_into_ledger(settings, directory))
    if not replayed:
        print(f"taskledger: nothing in quarantine in {directory}", file=sys.stderr)
        return 0
    if as_json:
        _print_json_lines(_replayed_json(item) for item in replayed)
    else:
        show(_replay_table(replayed), fit=False)
    print(replay_summary(replayed), file=sys.stderr if as_json else sys.stdout)
    return EXIT_FAILED if any(item.outcome is None for item in replayed) else 0


async def _replay_into_ledger(settings: Settings, directory: Path) -> list[Replayed]:
    """Replay the quarantine, if anything waits there, into the ledger of `settings` once
    it answers at the newest migration (else one line naming the database, as the receiver
    says at start-up)."""
    if not await quarantined(directory):
        return []
    engine = create_engine(settings.database_url)
    store = LedgerStore(engine, utc_now, settings.readers)
    try:
        await require_current(store.ping, settings.database_url)
        return await replay_quarantined(directory, store, settings.readers)
    finally:
        await store.close()
        await engine.dispose()


def replay_summary(replayed: list[Replayed]) -> str:
    """`replayed 3 of 4 deliveries from quarantine (applied 2, duplicate 1); 1 failed again
    and stays there`."""
    outcomes = Counter(item.outcome for item in replayed if item.outcome is not None)
    stored = sum(outcomes.values())
    counts = ", ".join(f"{outcome} {n}" for outcome, n in sorted(outcomes.items()))
    line = f"taskledger: replayed {stored} of {len(replayed)} deliveries from quarantine"
    line += f" ({counts})" if counts else ""
    failed = len(replayed) - stored
    return line + (f"; {failed} failed again and stay there" if failed else "")


def _list_table(found: list[Quarantined], every: bool) -> Table:
    """The entries, one row each; `every`: with when each was replayed, and its outcome."""
    table = new_table(*LIST_COLUMNS, *(("replayed", "outcome") if every else ()), "error")
    for entry in found:
        replayed = (_clock(entry.replayed_at), text(entry.outcome)) if every else ()
        seen = (str(entry.attempts), _clock(entry.quarantined_at))
        table.add_row(*_ids(entry), *seen, *replayed, text(entry.error))
    return table


def _replay_table(replayed: list[Replayed]) -> Table:
    table = new_table(*REPLAY_COLUMNS)
    for item in replayed:
        table.add_row(*_ids(item.entry), text(item.outcome or "failed again"), text(item.error))
    return table


def _ids(entry: Quarantined) -> tuple[str, ...]:
    """Where an entry is and which delivery it is, fit for a terminal."""
    key = (entry.provider, entry.task_ref, entry.delivery_key)
    return (entry.file.name, str(entry.seq), *(text(value) for value in key))


def _clock(at: datetime | None) -> str:
    return clock_text(at.isoformat()) if at is not None else ""


def _entry_json(entry: Quarantined) -> dict[str, Any]:
    replayed_at = entry.replayed_at.isoformat() if entry.replayed_at is not None else None
    return {
        "file": str(entry.file),
        "seq": entry.seq,
        "provider": entry.provider,
        "task_ref": entry.task_ref,
        "delivery_key": entry.delivery_key,
        "received_at": entry.received_at.isoformat(),
        "attempts": entry.attempts,
        "error": entry.error,
        "quarantined_at": entry.quarantined_at.isoformat(),
        "replayed_at": replayed_at,
        "outcome": entry.outcome,
    }


def _replayed_json(item: Replayed) -> dict[str, Any]:
    """An entry as it was listed before the replay, with what became of it: `outcome`, or
    None and the `replay_error` it failed with again."""
    return _entry_json(item.entry) | {"outcome": item.outcome, "replay_error": item.error}


def _print_json_lines(values: Iterable[dict[str, Any]]) -> None:
    for value in values:
        print(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
