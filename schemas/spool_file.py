"""The spool file's format: where a database's spool files are, their tables, a delivery as
a row and back, and their quarantine, which an operator lists and replays
(`taskledger spool`) while the receiver that wrote them runs or after it is gone.

A spool is a SQLite file (WAL, `synchronous=FULL`). That makes it safe against kill -9 with
no code of its own: a commit is atomic and durable when COMMIT returns; SQLite's recovery
drops a torn tail of the log (its frames are checksummed); and what has been replayed goes
in one DELETE. An append-only file would need its own record checksums, torn-tail
truncation, a durable read cursor and segment rotation to do the same.

One directory per database (a spool is never replayed into another ledger), one file per
receiver process, `spool-<n>.sqlite`, held under an exclusive `flock` of `spool-<n>.lock`
while the process runs. A delivery set aside after failing its replay waits in the file's
`quarantined` table (never deleted: it was authenticated and answered).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
import structlog

from schemas.clock import Clock, utc_now
from schemas.database import SqliteFile, describe
from schemas.errors import StorageUnavailable
from schemas.ledger import Auth, Delivery, Reader, Stored, Unread, read_delivery
from schemas.settings import Settings
from schemas.store.sqlite_ingest import SqliteWriter

log = structlog.get_logger("taskledger.spool")
# What a spooled delivery counts against the cap beyond its body, headers and key.
RECORD_OVERHEAD_BYTES = 64
# A drain batch stops at this many bytes of bodies (at least one delivery, whatever its size).
DRAIN_BATCH_MAX_BYTES = 16 << 20
# What a quarantined entry keeps of its last error.
ERROR_MAX_CHARS = 2000

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS spooled (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " provider TEXT NOT NULL, delivery_key TEXT NOT NULL, body BLOB NOT NULL,"
    " headers BLOB NOT NULL, auth TEXT NOT NULL, received_at TEXT NOT NULL, task_ref TEXT,"
    " size INTEGER NOT NULL)"
)
_QUARANTINE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS quarantined (seq INTEGER PRIMARY KEY,"
    " provider TEXT NOT NULL, delivery_key TEXT NOT NULL, body BLOB NOT NULL,"
    " headers BLOB NOT NULL, auth TEXT NOT NULL, received_at TEXT NOT NULL, task_ref TEXT,"
    " size INTEGER NOT NULL, error TEXT NOT NULL, attempts INTEGER NOT NULL,"
    " quarantined_at TEXT NOT NULL, replayed_at TEXT, outcome TEXT)"
)
_COLUMNS = "provider, delivery_key, body, headers, auth, received_at, task_ref, size"
_INSERT = f"INSERT INTO spooled ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
_OLDEST = f"SELECT seq, {_COLUMNS} FROM spooled ORDER BY seq LIMIT ?"  # noqa: S608
_QUARANTINE = (
    f"INSERT INTO quarantined (seq, {_COLUMNS}, error, attempts, quarantined_at)"  # noqa: S608
    f" SELECT seq, {_COLUMNS}, ?, ?, ? FROM spooled WHERE seq = ?"
)
_LISTED = (
    "SELECT seq, provider, delivery_key, received_at, task_ref, error, attempts, quarantined_at,"
    " replayed_at, outcome FROM quarantined WHERE replayed_at IS NULL OR ? ORDER BY seq"
)
_QUARANTINED_ROW = f"SELECT seq, {_COLUMNS} FROM quarantined WHERE seq = ?"  # noqa: S608
_QUARANTINED_IDS = "SELECT provider, delivery_key, task_ref FROM quarantined WHERE seq = ?"
_REPLAYED = "UPDATE quarantined SET replayed_at = ?, outcome = ? WHERE seq = ?"
_FAILED_AGAIN = "UPDATE quarantined SET error = ?, attempts = attempts + 1 WHERE seq = ?"
# A row as inserted: the delivery's stored fields, its size last.
Row = tuple[str, str, bytes, bytes, str, str, str | None, int]


class Ledger(Protocol):
    """What a replay needs of the store: its one write path, and a cheap read."""

    async def ingest(self, evidence: Sequence[Delivery]) -> list[Stored]: ...

    async def ping(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Entry:
    """A spooled delivery, read back: its place in its file and what it counts for."""

    seq: int
    delivery: Delivery
    size: int


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A spooled row that no longer reads back as a delivery (written by another version
    of this code, or damaged): set aside as it is, untried."""

    seq: int
    size: int
    error: str


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A spooled delivery set aside after failing its replay: where it is, why, how often;
    when an operator's replay stored it, and with what outcome (None while it waits)."""

    file: Path
    seq: int
    provider: str
    delivery_key: str
    received_at: datetime
    task_ref: str | None
    error: str
    attempts: int
    quarantined_at: datetime
    replayed_at: datetime | None = None
    outcome: str | None = None


@dataclass(frozen=True, slots=True)
class Replayed:
    """What became of a quarantined delivery an operator replayed: `outcome` as the drain
    counts it; or None when it failed again (and stays in quarantine), with `error`."""

    entry: Quarantined
    outcome: str | None
    error: str | None = None


class SpoolFile:
    """One spool file, held (locked) by this process from `hold` to `release`. Its writes
    are SQLite transactions of their own (statements on the loop, COMMIT on a thread)."""

    def __init__(self, path: Path, lock: int) -> None:
        self.path = path
        self._lock = lock
        self._sqlite = SqliteWriter(SqliteFile(str(path)))
        self.depth = 0
        self.size = 0

    @classmethod
    async def hold(cls, path: Path) -> SpoolFile | None:
        """The file at `path` (made if new), or None while another process holds it."""
        lock = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            return None
        file = cls(path, lock)
        try:
            file.depth, file.size = await file._sqlite.run(_prepare)
        except BaseException:
            await file.release()
            raise
        return file

    async def append(self, rows: list[Row]) -> None:
        """Insert `rows`, durably: committed and flushed when this returns."""
        await self._sqlite.run(lambda conn: conn.executemany(_INSERT, rows))
        self.depth += len(rows)
        self.size += sum(row[-1] for row in rows)

    async def oldest(
        self, limit: int, readers: dict[str, Reader]
    ) -> tuple[list[Entry], Undecodable | None]:
        """The oldest entries, at most `limit` and about `DRAIN_BATCH_MAX_BYTES`, up to
        the first row that does not read back as a delivery, if any (then that row too)."""
        rows = await self._sqlite.run(lambda conn: _oldest(conn, limit))
        entries: list[Entry] = []
        for row in rows:
            try:
                entries.append(decode(row, readers))
            except Exception as exc:  # what the row holds is at fault, whatever it raises
                return entries, Undecodable(row[0], row[-1], f"{type(exc).__name__}: {exc}")
        return entries, None

    async def quarantine(
        self, entry: Entry | Undecodable, error: str, attempts: int, at: datetime
    ) -> tuple[str, str, str | None]:
        """Move `entry` to the file's quarantine, with why and how often it failed; its
        provider, delivery key and task ref."""
        values = (error[:ERROR_MAX_CHARS], attempts, at.isoformat(), entry.seq)

        def move(conn: Any) -> tuple[str, str, str | None]:
            conn.execute(_QUARANTINE, values)
            conn.execute("DELETE FROM spooled WHERE seq = ?", (entry.seq,))
            ids: tuple[str, str, str | None] = conn.execute(
                _QUARANTINED_IDS, (entry.seq,)
            ).fetchone()
            return ids

        ids = await self._sqlite.run(move)
        self.depth -= 1
        self.size -= entry.size
        return ids

    async def remove(self, entries: list[Entry]) -> None:
        """Forget `entries`, the oldest of the file (they are in the ledger now)."""
        last = entries[-1].seq
        await self._sqlite.run(
            lambda conn: conn.execute("DELETE FROM spooled WHERE seq <= ?", (last,))
        )
        self.depth -= len(entries)
        self.size -= sum(entry.size for entry in entries)

    async def release(self) -> None:
        try:
            await self._sqlite.close()
        finally:
            os.close(self._lock)  # the lock goes with its descriptor


def _prepare(conn: Any) -> tuple[int, int]:
    """Make the table if new; what the file holds already (entries, bytes)."""
    conn.execute(_SCHEMA)
    conn.execute(_QUARANTINE_SCHEMA)
    depth, size = conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM spooled").fetchone()
    return int(depth), int(size)


def _oldest(conn: Any, limit: int) -> list[tuple[Any, ...]]:
    rows, size = [], 0
    for row in conn.execute(_OLDEST, (limit,)):
        rows.append(row)
        size += row[-1]
        if size >= DRAIN_BATCH_MAX_BYTES:
            break
    return rows


def encode(delivery: Delivery) -> Row:
    """`delivery` as a spool row, with what it counts against the spool's cap."""
    headers = orjson.dumps(delivery.headers)
    size = len(delivery.body) + len(headers) + len(delivery.delivery_key) + RECORD_OVERHEAD_BYTES
    return (
        delivery.provider,
        delivery.delivery_key,
        delivery.body,
        headers,
        delivery.auth.value,
        delivery.received_at.isoformat(),
        delivery.task_ref,
        size,
    )


def decode(row: tuple[Any, ...], readers: dict[str, Reader]) -> Entry:
    """A stored row as the delivery it was, its body read again by its provider's reader
    (reading is a pure function of the body and the time it was received)."""
    seq, provider, key, body, headers, auth, received_at, task_ref, size = row
    delivery = Delivery(
        provider=provider,
        delivery_key=key,
        body=bytes(body),
        headers=orjson.loads(headers),
        auth=Auth(auth),
        observation=None,
        received_at=datetime.fromisoformat(received_at),
        task_ref=task_ref,
    )
    return Entry(seq, _read(delivery, readers.get(provider)), size)


def _read(delivery: Delivery, reader: Reader | None) -> Delivery:
    """`delivery` read by its provider's reader; kept raw, as the callback route keeps a
    body it cannot read, when its provider is gone or the reader fails on it (it was
    answered already: it must reach the ledger)."""
    if reader is None:
        gone = Unread("unknown_provider", "the provider is no longer configured")
        return replace(delivery, unread=gone)
    try:
        return read_delivery(delivery, reader)
    except Exception as exc:
        error = type(exc).__name__  # its text may quote the body: not logged, not kept
        log.error("spooled_delivery_unreadable", provider=delivery.provider, error=error)
        return replace(delivery, unread=Unread("reader_failed", f"the reader failed: {error}"))


def outcome_of(stored: Stored) -> str:
    """What became of a replayed delivery: its outcome, or its refusal (403)."""
    return "forbidden" if stored.refused else stored.outcome.value


def spool_files(directory: Path) -> list[Path]:
    """The spool files of `directory`, in slot order."""
    return sorted(directory.glob("spool-*.sqlite")) if directory.is_dir() else []


def spool_directory(settings: Settings) -> Path:
    """Where the spool files of `settings.database_url` go: a directory of their own per
    database (named by a digest of the URL without user or password)."""
    digest = hashlib.sha256(describe(settings.database_url).encode()).hexdigest()[:16]
    return Path(settings.spool.dir) / digest


@contextlib.asynccontextmanager
async def _opened(path: Path) -> AsyncIterator[SqliteWriter]:
    """A spool file, whichever process holds it (SQLite's locks keep its writers apart),
    with its quarantine table (a file an older version wrote has none yet)."""
    sqlite = SqliteWriter(SqliteFile(str(path)))
    try:
        await sqlite.run(lambda conn: conn.execute(_QUARANTINE_SCHEMA))
        yield sqlite
    finally:
        await sqlite.close()


async def quarantined(directory: Path, *, replayed: bool = False) -> list[Quarantined]:
    """Every delivery in quarantine in the spool files of `directory` not replayed yet;
    with `replayed`, those an operator's replay stored too."""
    found: list[Quarantined] = []
    for path in spool_files(directory):
        async with _opened(path) as sqlite:
            rows = await sqlite.run(lambda conn: conn.execute(_LISTED, (replayed,)).fetchall())
        found += [_quarantined(path, row) for row in rows]
    return found


def _quarantined(path: Path, row: tuple[Any, ...]) -> Quarantined:
    seq, provider, key, received_at, task_ref, error, attempts, at, replayed_at, outcome = row
    return Quarantined(
        file=path,
        seq=seq,
        provider=provider,
        delivery_key=key,
        received_at=datetime.fromisoformat(received_at),
        task_ref=task_ref,
        error=error,
        attempts=attempts,
        quarantined_at=datetime.fromisoformat(at),
        replayed_at=datetime.fromisoformat(replayed_at) if replayed_at else None,
        outcome=outcome,
    )


async def replay_quarantined(
    directory: Path, ledger: Ledger, readers: dict[str, Reader], clock: Clock = utc_now
) -> list[Replayed]:
    """Replay every delivery in quarantine into the ledger, each alone, oldest first: one
    the ledger took (or refused, as the drain would) is marked replayed, with its outcome,
    and kept; one that fails again stays, its error and attempts updated. The database
    being unavailable (`StorageUnavailable`) stops the replay."""
    replayed: list[Replayed] = []
    for entry in await quarantined(directory):
        async with _opened(entry.file) as sqlite:
            replayed.append(await _replay_one(sqlite, entry, ledger, readers, clock))
    return replayed


async def _replay_one(
    sqlite: SqliteWriter,
    entry: Quarantined,
    ledger: Ledger,
    readers: dict[str, Reader],
    clock: Clock,
) -> Replayed:
    row = await sqlite.run(lambda conn: conn.execute(_QUARANTINED_ROW, (entry.seq,)).fetchone())
    try:
        stored = await ledger.ingest([decode(row, readers).delivery])
    except StorageUnavailable:
        raise
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:ERROR_MAX_CHARS]
        await sqlite.run(lambda conn: conn.execute(_FAILED_AGAIN, (error, entry.seq)))
        return Replayed(entry, None, error)
    outcome, at = outcome_of(stored[0]), clock().isoformat()
    await sqlite.run(lambda conn: conn.execute(_REPLAYED, (at, outcome, entry.seq)))
    return Replayed(entry, outcome)
