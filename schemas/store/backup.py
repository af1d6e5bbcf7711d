"""Backups of a SQLite ledger: a consistent copy of the live file, and its check."""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path

from schemas.errors import StorageUnavailable
from schemas.tables import METADATA


@dataclass(frozen=True, slots=True)
class BackupReport:
    """A checked SQLite copy: `integrity_check`'s answer, foreign key faults, the row count
    of each of the schema's tables, and those of its tables the copy has not (a database
    at an older migration)."""

    path: Path
    integrity: str
    foreign_key_faults: int
    counts: dict[str, int]
    missing: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.integrity == "ok" and self.foreign_key_faults == 0


def backup_sqlite(source: Path, target: Path) -> BackupReport:
    """Copy a live SQLite ledger to `target` as one consistent snapshot, then check the copy.

    Blocking: call it from a thread in async code. Under WAL the service keeps writing
    meanwhile. The copy is a single self-contained file (rollback journal mode); a copy
    that fails its check is left beside `target` as `*.partial` and reported.
    To restore: stop the service, replace the database file with the copy, delete any
    stale `-wal` and `-shm` files beside it, then start the service.
    """
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        _copy_sqlite(source, partial)
        report = check_sqlite(partial)
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise StorageUnavailable(f"backup failed: {exc}") from exc
    if not report.ok:
        raise StorageUnavailable(
            f"backup copy failed its check ({report.integrity}, "
            f"{report.foreign_key_faults} foreign key faults): left at {partial}"
        )
    partial.replace(target)
    return replace(report, path=target)


def check_sqlite(path: Path) -> BackupReport:
    """`PRAGMA integrity_check`, `PRAGMA foreign_key_check`, and the row count of every
    table of the schema (`schemas.tables`: a table added there is counted too)."""
    try:
        with contextlib.closing(_open_sqlite(path, "ro")) as conn:
            integrity = "; ".join(str(row[0]) for row in conn.execute("PRAGMA integrity_check"))
            faults = len(conn.execute("PRAGMA foreign_key_check").fetchall())
            counts, missing = _row_counts(conn)
    except sqlite3.Error as exc:
        raise StorageUnavailable(f"cannot check {path.name}: {exc}") from exc
    return BackupReport(path, integrity, faults, counts, missing)


def _row_counts(conn: sqlite3.Connection) -> tuple[dict[str, int], tuple[str, ...]]:
    """Each schema table's rows, in the schema's order; the tables the file lacks."""
    present = {
        name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    counts: dict[str, int] = {}
    for name in METADATA.tables:  # the schema's own names, never input
        if name in present:
            query = f'SELECT count(*) FROM "{name}"'  # noqa: S608
            counts[name] = int(conn.execute(query).fetchone()[0])
    return counts, tuple(name for name in METADATA.tables if name not in present)


def _copy_sqlite(source: Path, target: Path) -> None:
    """One backup step (all pages): a single read snapshot, so a consistent copy."""
    with (
        contextlib.closing(_open_sqlite(source, "rw")) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")


def _open_sqlite(path: Path, mode: str) -> sqlite3.Connection:
    """Open an existing database file (`mode` "ro" or "rw"); never create one."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode={mode}", uri=True)
