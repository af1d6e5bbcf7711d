"""The local spool: authenticated callbacks kept durably on this host while PostgreSQL cannot
take them, answered once kept, and replayed into it, in arrival order, once it can.

A spool is a SQLite file (WAL, `synchronous=FULL`). That makes it safe against kill -9 with
no code of its own: a commit is atomic and durable when COMMIT returns; SQLite's recovery
drops a torn tail of the log (its frames are checksummed); and what has been replayed goes
in one DELETE. An append-only file would need its own record checksums, torn-tail
truncation, a durable read cursor and segment rotation to do the same.

One directory per database (a spool is never replayed into another ledger), one file per
receiver process, `spool-<n>.sqlite`, held under an exclusive `flock` of `spool-<n>.lock`
while the process runs. A file nobody holds was left by a process that is gone: the next
receiver of that database to look adopts it and drains it. A spooled delivery is replayed
through the ledger's one write path, `LedgerStore.ingest`, like any other: a replay of one
that is stored already is a duplicate, and ownership (403) is checked then, since it needs
the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from receiver import deadlines
from receiver.errors import Overloaded
from receiver.metrics import ReceiverMetrics
from schemas.database import SqliteFile, describe, is_sqlite
from schemas.errors import ConstraintViolation, StorageUnavailable
from schemas.ledger import Auth, Delivery, Reader, Stored, Unread, read_delivery
from schemas.settings import Settings
from schemas.store.sqlite_ingest import SqliteWriter
from schemas.write_deadline import write_deadline

log = structlog.get_logger("taskledger.spool")
# What a spooled delivery counts against the cap beyond its body, headers and key.
RECORD_OVERHEAD_BYTES = 64
# The part of a callback's answer deadline kept for spooling it when the writer gives up.
SPOOL_SECONDS = 1.0
# While the database is down, the drain tries it this often.
RETRY_SECONDS = 1.0
# How long a drain batch or a probe waits for the database before it counts as down.
DRAIN_WRITE_SECONDS = 10.0
# How often a receiver looks for spool files that a process now gone left behind.
ADOPT_EVERY_SECONDS = 30.0
MAX_SLOTS = 1024
# A drain batch stops at this many bytes of bodies (at least one delivery, whatever its size).
DRAIN_BATCH_MAX_BYTES = 16 << 20

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS spooled (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " provider TEXT NOT NULL, delivery_key TEXT NOT NULL, body BLOB NOT NULL,"
    " headers BLOB NOT NULL, auth TEXT NOT NULL, received_at TEXT NOT NULL, task_ref TEXT,"
    " size INTEGER NOT NULL)"
)
_COLUMNS = "provider, delivery_key, body, headers, auth, received_at, task_ref, size"
_INSERT = f"INSERT INTO spooled ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
_OLDEST = f"SELECT seq, {_COLUMNS} FROM spooled ORDER BY seq LIMIT ?"  # noqa: S608
# A row as inserted: the delivery's stored fields, its size last.
Row = tuple[str, str, bytes, bytes, str, str, str | None, int]


class SpoolFull(Overloaded):
    """The spool holds its cap: the sender is told to retry, as with no spool at all."""


class Ledger(Protocol):
    """What the drain needs of the store: its one write path, and a cheap read."""

    async def ingest(self, evidence: Sequence[Delivery]) -> list[Stored]: ...

    async def ping(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Entry:
    """A spooled delivery, read back: its place in its file and what it counts for."""

    seq: int
    delivery: Delivery
    size: int


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

    async def oldest(self, limit: int, readers: dict[str, Reader]) -> list[Entry]:
        """The oldest entries, at most `limit` and about `DRAIN_BATCH_MAX_BYTES`."""
        rows = await self._sqlite.run(lambda conn: _oldest(conn, limit))
        return [_entry(row, readers) for row in rows]

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


def _row(delivery: Delivery) -> Row:
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


def _entry(row: tuple[Any, ...], readers: dict[str, Reader]) -> Entry:
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
    reader = readers.get(provider)
    if reader is None:
        unread = Unread("unknown_provider", "the provider is no longer configured")
        return Entry(seq, replace(delivery, unread=unread), size)
    return Entry(seq, read_delivery(delivery, reader), size)


_Pending = tuple[Row, "asyncio.Future[None]"]


class Spool:
    """This process's spool of one PostgreSQL ledger: appends group-committed into its own
    file (one fsync for the deliveries of many requests), and a drain that replays every
    file it holds, oldest first, once the database answers."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        readers: dict[str, Reader],
        metrics: ReceiverMetrics,
        drain_batch_size: int = 256,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._readers = readers
        self._metrics = metrics
        self._batch_size = drain_batch_size
        self._held: dict[Path, SpoolFile] = {}
        self._own_file: SpoolFile | None = None
        self._pending: list[_Pending] = []
        self._pending_bytes = 0
        self._appends = asyncio.Event()
        self._entries = asyncio.Event()
        self._down = False
        self._tasks: list[asyncio.Task[None]] = []
        self.depth = 0
        self.size = 0

    @property
    def engaged(self) -> bool:
        """Whether a delivery goes to the spool rather than the writer: the database is
        known to be down, or deliveries wait here already (a newer one must not pass them)."""
        return self._down or self.depth > 0 or bool(self._pending)

    def note_down(self, reason: str) -> None:
        """The database failed a write: spool from now on, until the drain finds it back."""
        if not self._down:
            log.warning("spool_engaged", reason=reason, depth=self.depth)
        self._down = True

    async def keep(self, delivery: Delivery, deadline: float) -> None:
        """Return once `delivery` is in the spool, durably: `SpoolFull` if it would pass the
        cap, `Overloaded` if that has not happened by loop time `deadline`."""
        row = _row(delivery)
        if self.size + self._pending_bytes + row[-1] > self.max_bytes:
            raise SpoolFull("the database is unavailable and the local spool is full")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((row, future))
        self._pending_bytes += row[-1]
        self._appends.set()
        try:
            await deadlines.of_running_loop().by(deadline, future)
        except TimeoutError:
            raise Overloaded("the delivery was not spooled within the answer deadline") from None
        self._metrics.spooled.labels(delivery.provider).inc()

    async def start(self, ledger: Ledger, on_commit: Callable[[int], None]) -> None:
        """Adopt what earlier processes left, then run the appends and the drain."""
        await self.adopt()
        self._tasks = [
            asyncio.create_task(self._commit_appends(), name="taskledger-spool"),
            asyncio.create_task(self._drain(ledger, on_commit), name="taskledger-spool-drain"),
        ]

    async def stop(self) -> None:
        """Stop draining; append what is pending; let go of every file (what is left in
        them is drained by the next receiver of this database to start)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._append_pending()
        for file in self._held.values():
            await file.release()
        self._held.clear()
        self._own_file = None

    async def adopt(self) -> None:
        """Hold every spool file of this database that holds deliveries and no running
        process holds: one left by a process that is gone."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("spool-*.sqlite")):
            if path in self._held:
                continue
            file = await SpoolFile.hold(path)
            if file is None:
                continue
            if file.depth == 0:
                await file.release()
                continue
            log.info("spool_adopted", file=path.name, depth=file.depth)
            self._held[path] = file
            self._counted(file.depth, file.size)

    # -- appends ---------------------------------------------------------------------------

    async def _commit_appends(self) -> None:
        """Group commit: each round takes every delivery that arrived during the last one."""
        while True:
            await self._appends.wait()
            self._appends.clear()
            await self._append_pending()

    async def _append_pending(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        rows = [row for row, _ in batch]
        try:
            await (await self._own()).append(rows)
        except Exception as exc:
            log.error("spool_append_failed", size=len(rows), error=type(exc).__name__)
            _settle(batch, Overloaded("the local spool is unavailable"))
        else:
            self._counted(len(rows), sum(row[-1] for row in rows))
            _settle(batch, None)
            self._entries.set()
        finally:
            self._pending_bytes -= sum(row[-1] for row in rows)

    async def _own(self) -> SpoolFile:
        """The file this process appends to, chosen at its first append and kept until it
        stops: the first slot it holds already or can hold."""
        if self._own_file is not None:
            return self._own_file
        self.directory.mkdir(parents=True, exist_ok=True)
        for slot in range(MAX_SLOTS):
            path = self.directory / f"spool-{slot}.sqlite"
            file = self._held.get(path) or await SpoolFile.hold(path)
            if file is not None:
                self._held[path] = self._own_file = file
                return file
        raise OSError(f"every one of {MAX_SLOTS} spool files is held")

    def _counted(self, entries: int, size: int) -> None:
        self.depth += entries
        self.size += size
        self._metrics.spool_depth.set(self.depth)
        self._metrics.spool_bytes.set(self.size)

    # -- the drain -------------------------------------------------------------------------

    async def _drain(self, ledger: Ledger, on_commit: Callable[[int], None]) -> None:
        """The drain's loop, which must outlive anything a step does (a failed step leaves
        the entries where they are)."""
        loop = asyncio.get_running_loop()
        adopted_at = loop.time()
        while True:
            try:
                if await self._drain_step(ledger, on_commit):
                    continue
                if loop.time() - adopted_at >= ADOPT_EVERY_SECONDS:
                    await self.adopt()
                    adopted_at = loop.time()
            except Exception as exc:
                log.error("spool_drain_failed", error=type(exc).__name__, exc_info=exc)
                await asyncio.sleep(RETRY_SECONDS)

    async def _drain_step(self, ledger: Ledger, on_commit: Callable[[int], None]) -> bool:
        """Replay a batch, or find out whether the database is back, or wait for entries
        (False: idle, at most `ADOPT_EVERY_SECONDS`)."""
        self._entries.clear()
        file = self._next_to_drain()
        if self._down and not await _answers(ledger):
            await asyncio.sleep(RETRY_SECONDS)
        elif file is not None:
            await self._drain_once(file, ledger, on_commit)
        elif self._down:
            self._back()
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ADOPT_EVERY_SECONDS):
                    await self._entries.wait()
            return False
        return True

    def _next_to_drain(self) -> SpoolFile | None:
        """A held file with deliveries in it: those adopted from processes now gone before
        this process's own (theirs arrived first)."""
        waiting = [file for file in self._held.values() if file.depth]
        waiting.sort(key=lambda file: file is self._own_file)
        return waiting[0] if waiting else None

    def _back(self) -> None:
        if self._down:
            log.info("spool_disengaged", depth=self.depth)
        self._down = False

    async def _drain_once(
        self, file: SpoolFile, ledger: Ledger, on_commit: Callable[[int], None]
    ) -> None:
        """Replay the oldest entries of `file` in one transaction, then forget them; a
        failure leaves them where they are, for the next try."""
        entries = await file.oldest(self._batch_size, self._readers)
        if not entries:  # nothing there after all: count it as it is
            self._counted(-file.depth, -file.size)
            file.depth = file.size = 0
            return
        try:
            with write_deadline(asyncio.get_running_loop().time() + DRAIN_WRITE_SECONDS):
                results = await _ingest(ledger, [entry.delivery for entry in entries])
        except StorageUnavailable as exc:  # down, or refusing writes (read-only, disk full)
            log.warning("spool_drain_refused", detail=str(exc), depth=self.depth)
            self.note_down(str(exc))
            await asyncio.sleep(RETRY_SECONDS)
            return
        await file.remove(entries)
        self._counted(-len(entries), -sum(entry.size for entry in entries))
        self._back()
        on_commit(len(entries))
        self._report(entries, results)
        if file.depth == 0:
            log.info("spool_drained", file=file.path.name)
            if file is not self._own_file:
                del self._held[file.path]
                await file.release()

    def _report(self, entries: list[Entry], results: list[Stored | None]) -> None:
        metrics = self._metrics
        for entry, stored in zip(entries, results, strict=True):
            provider = entry.delivery.provider
            if stored is None or stored.refused:
                reason = "conflict" if stored is None else "forbidden"
                metrics.spool_drained.labels(reason).inc()
                metrics.rejections.labels(provider, reason).inc()
                log.warning("spooled_delivery_refused", provider=provider, reason=reason)
                continue
            metrics.spool_drained.labels(stored.outcome.value).inc()
            metrics.deliveries.labels(provider, stored.outcome.value).inc()


async def _answers(ledger: Ledger) -> bool:
    """Whether the database answers a read now."""
    try:
        async with asyncio.timeout(DRAIN_WRITE_SECONDS):
            await ledger.ping()
    except Exception:  # any failure to answer is "not back yet"
        return False
    return True


async def _ingest(ledger: Ledger, deliveries: list[Delivery]) -> list[Stored | None]:
    """`ledger.ingest`; a delivery that breaks a unique key on every try (the writer answers
    409 to it) alone is dropped, as None, and its neighbours are stored without it."""
    try:
        return list(await ledger.ingest(deliveries))
    except ConstraintViolation:
        if len(deliveries) == 1:
            return [None]
    results: list[Stored | None] = []
    for delivery in deliveries:
        results += await _ingest(ledger, [delivery])
    return results


def _settle(batch: list[_Pending], error: Exception | None) -> None:
    for _, future in batch:
        if future.done():
            continue  # its request was answered at its deadline
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def spool_directory(settings: Settings) -> Path:
    """Where the spool files of `settings.database_url` go: a directory of their own per
    database (named by a digest of the URL without user or password)."""
    digest = hashlib.sha256(describe(settings.database_url).encode()).hexdigest()[:16]
    return Path(settings.spool.dir) / digest


def open_spool(settings: Settings, engine: AsyncEngine, metrics: ReceiverMetrics) -> Spool | None:
    """The spool of a PostgreSQL ledger, unless turned off; None on SQLite (local already)."""
    if is_sqlite(engine) or not settings.spool.enabled:
        return None
    directory, spool = spool_directory(settings), settings.spool
    return Spool(directory, spool.max_bytes, settings.readers, metrics, spool.drain_batch_size)
