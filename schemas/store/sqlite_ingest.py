"""The store's ingest path on SQLite: one `sqlite3` connection, on the event loop's thread.

Profiled under load, SQLAlchemy's per-row work (bind and result processors, the
async adapter's thread hop for every cursor call) cost about 250 µs per delivery;
plain parameterized statements cost about 40. So, for the hot path only, the SQL
below is written against the tables' own column lists, values are converted by
codecs derived from the tables' column types (the same stored forms SQLAlchemy
writes and reads: `YYYY-MM-DD HH:MM:SS.ffffff` UTC, JSON text, 0/1), and a whole
batch runs as one synchronous call inside `BEGIN IMMEDIATE ... COMMIT`.

Why not a writer thread: `sqlite3` releases the GIL around every statement, and a
thread that wants it back while the event loop is busy waits up to the interpreter's
switch interval (5 ms) each time. Measured: a batch of 16 took 3.5 ms with an idle
loop and 150 ms with a busy one. So the statements run on the loop's own thread, and
only the `COMMIT` (the fsync, about 1 ms, with no Python in it) goes to a thread of
its own: the loop reads and parses the next requests meanwhile, one GIL hand-back
per batch instead of one per statement. A lock held by another process is waited
for with `asyncio.sleep`, never by blocking the loop (the connection's busy timeout
is 0). Everything else, and PostgreSQL, goes through SQLAlchemy.

Callbacks come for the same few thousand recent tasks over and over, and this connection
is nearly always the only one writing: the task rows a batch leaves are kept in memory
for the next (`KeptTasks`), trusted only while `PRAGMA data_version` says no other
connection has committed since.

Every statement below is assembled only from the tables' own column names and `?`
placeholders; values are always bound, never formatted in (hence the S608 waivers).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect

from schemas.clock import utc_iso
from schemas.database import SqliteFile
from schemas.errors import StorageUnavailable
from schemas.fold import TaskWork, Transition, Writes
from schemas.ledger import DeliveryId
from schemas.store.outbox import message_rows
from schemas.store.transactions import UniqueRace, fault
from schemas.tables import (
    DELIVERY,
    MESSAGE,
    OBSERVATION,
    TASK,
    TRANSITION,
    UNFOLDED_WHERE,
    UTCDateTime,
)
from schemas.write_deadline import WriteBusy, take_turn, wait_until
from schemas.write_deadline import current as current_deadline

T = TypeVar("T")
Encoder = Callable[[Any], Any]
Decoder = Callable[[Any], Any]
# The writer's page cache: enough for the B-trees' interior pages of a ledger of a few
# million tasks; the leaves a delivery touches are scattered and come from the OS's cache.
# Bigger is slower below 1 GiB of database: splitting a B-tree page briefly renumbers it to
# the page past the lock byte (1 GiB / page size + 1), and at COMMIT SQLite then finds a
# page numbered beyond the file's end and walks every page it caches to drop it. Profiled
# at 1M tasks (a 0.97 GiB file) that walk took 5% of the receiver's CPU with 32 MiB of
# cache, 1.3% with 8 and 0.6% with 4, while reads from the OS's cache grew by less.
WRITER_CACHE_KIB = 8 * 1024
# Task rows kept between batches (`KeptTasks`), about 1.5 KiB each: callbacks come for the
# tasks submitted in the last minutes, a few thousand at a time on a busy ledger.
KEPT_TASKS = 4096
_QUOTE = sqlite_dialect.dialect().identifier_preparer.quote


# A batch writes the same instants many times (its `now`, unchanged task times): the
# conversions are cached.
@functools.lru_cache(maxsize=4096)
def _encode_when(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the ledger")
    # As `isoformat(" ", "microseconds")` without the "+00:00", through `iso` (cheaper).
    text = utc_iso(value)
    if value.microsecond:
        return f"{text[:10]} {text[11:26]}"
    return f"{text[:10]} {text[11:19]}.000000"


@functools.lru_cache(maxsize=4096)
def _decode_when(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)


def _encode_json(value: Any) -> str:
    return orjson.dumps(value).decode()  # None is stored as JSON null, as SQLAlchemy does


def _decode_json(value: str | None) -> Any:
    return None if value is None else orjson.loads(value)


def _encode_bool(value: bool | None) -> int | None:
    return None if value is None else int(value)


def _decode_bool(value: int | None) -> bool | None:
    return None if value is None else bool(value)


def _same(value: Any) -> Any:
    return value


def _codec(column: sa.Column[Any]) -> tuple[Encoder, Decoder] | None:
    """How a column's values are stored, when not as they are."""
    kind = column.type
    if isinstance(kind, UTCDateTime):
        return _encode_when, _decode_when
    if isinstance(kind, sa.JSON):
        return _encode_json, _decode_json
    if isinstance(kind, sa.Boolean):
        return _encode_bool, _decode_bool
    return None


class _Row:
    """Encodes dicts into parameter lists for a fixed list of columns."""

    def __init__(self, table: sa.Table, names: Sequence[str]) -> None:
        self.names = list(names)
        self._get = itemgetter(*names)
        codecs = [_codec(table.c[name]) for name in names]
        self._convert = [(i, codec[0]) for i, codec in enumerate(codecs) if codec is not None]

    def encode(self, row: dict[str, Any]) -> list[Any]:
        values = list(self._get(row))
        for i, encode in self._convert:
            values[i] = encode(values[i])
        return values


class _Table:
    """A table's column names, SQL fragments and codecs, computed once."""

    def __init__(self, table: sa.Table) -> None:
        self.table = table
        self.name = _QUOTE(table.name)
        self.columns = [column.name for column in table.c]

    def row(self, names: Sequence[str]) -> _Row:
        return _Row(self.table, names)

    def insert(self, names: Sequence[str]) -> str:
        marks = ", ".join("?" for _ in names)
        return f"INSERT INTO {self.name} ({', '.join(_QUOTE(n) for n in names)}) VALUES ({marks})"

    def reader(self, names: Sequence[str]) -> _Reader:
        return _Reader(self.table, names)


class _Reader:
    """Decodes result rows of a fixed list of columns into dicts."""

    def __init__(self, table: sa.Table, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.select = ", ".join(_QUOTE(name) for name in names)
        self._decoders = [
            (name, codec[1]) for name in names if (codec := _codec(table.c[name])) is not None
        ]

    def decode(self, values: Sequence[Any]) -> dict[str, Any]:
        row = dict(zip(self.names, values, strict=True))
        for name, decode in self._decoders:
            value = row[name]
            if value is not None:  # every decoder keeps NULL as None: no call for it
                row[name] = decode(value)
        return row


_TASKS = _Table(TASK)
_DELIVERIES = _Table(DELIVERY)
_OBSERVATIONS = _Table(OBSERVATION)
_TRANSITIONS = _Table(TRANSITION)


class _NewRows:
    """Whole new rows of a table: their encoder and their INSERT, built once."""

    def __init__(self, table: _Table) -> None:
        self.table = table.name
        self.row = table.row(table.columns)
        self.insert = table.insert(table.columns)


_NEW_DELIVERIES = _NewRows(_DELIVERIES)
_DELIVERY_READER = _DELIVERIES.reader(_DELIVERIES.columns)
_NEW_OBSERVATIONS = _NewRows(_OBSERVATIONS)
_TRANSITION_FIELDS = ("seq", "task_ref", "from_state", "to_state", "source", "source_id", "at")
_INSERT_TRANSITION = _TRANSITIONS.insert(_TRANSITION_FIELDS)
_MESSAGES = _Table(MESSAGE)
_MESSAGE_FIELDS = tuple(c.name for c in MESSAGE.columns if c.name != "id")
_NEW_MESSAGES_ROW = _MESSAGES.row(_MESSAGE_FIELDS)
_INSERT_MESSAGE = _MESSAGES.insert(_MESSAGE_FIELDS)
# Artifacts planned again (a success settled twice) are known by name: kept as they are.
_INSERT_ARTIFACT = (
    "INSERT OR IGNORE INTO artifact (task_ref, provider, name, source, state, expires_at,"
    " next_attempt_at, attempts, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


# The batch's deliveries already stored: each of the batch's keys (a JSON array of
# [provider, provider task id, key] in the one parameter) probes the unique index once,
# where `IN` lists on three columns would probe their cross product.
STORED_DELIVERIES = (
    "SELECT d.provider, d.provider_task_id, d.delivery_key, d.task_ref, d.state "
    "FROM json_each(:keys) AS k JOIN delivery AS d "
    "ON d.provider = json_extract(k.value, '$[0]') "
    "AND d.provider_task_id = json_extract(k.value, '$[1]') "
    "AND d.delivery_key = json_extract(k.value, '$[2]')"
)


def keys_json(keys: set[DeliveryId]) -> str:
    return orjson.dumps(list(keys)).decode()


def _marks(count: int) -> str:
    return ", ".join("?" * count)


@functools.cache
def _task_reader(task_fields: tuple[str, ...]) -> _Reader:
    """What the fold reads of a task: not its request, which ingest never changes or
    sends; its owner, model and time of creation only for the events it writes."""
    return _TASKS.reader(["ref", "provider", "owner", "model", "created_at", *task_fields])


@functools.cache
def _delivery_update(changed: tuple[str, ...]) -> tuple[str, _Row]:
    """An UPDATE of a stored delivery folded in again (rare: one statement each)."""
    assigns = ", ".join(f"{_QUOTE(name)} = ?" for name in changed)
    return f"UPDATE delivery SET {assigns} WHERE id = ?", _DELIVERIES.row([*changed, "id"])


@functools.cache
def _task_update(changed: tuple[str, ...]) -> tuple[str, _Row]:
    """An UPDATE of just these columns, and its parameters' encoder (a handful of shapes
    recur: a progress report sets four columns, not eighteen and their indexes)."""
    assigns = ", ".join(f"{_QUOTE(name)} = ?" for name in changed)
    return f"UPDATE task SET {assigns} WHERE ref = ?", _TASKS.row([*changed, "ref"])


class KeptTasks:
    """The task rows the ledger's batches last read or wrote, as committed, by ref: a batch
    takes a task from here instead of reading and decoding its row again (a tenth of a
    callback's instructions in process).

    They are trusted only while no other connection has written to the database since
    this one's previous batch. `PRAGMA data_version` says so: it changes, for a
    connection, whenever any other connection (another thread's, another process's: the
    API's, the reconciler's claims, another worker's batches, `db refold`) has committed.
    It is read under the batch's write lock, so nobody can commit between that check and
    the batch's own COMMIT. A batch's rows enter only once its COMMIT has returned; a batch
    that fails or is cancelled empties the whole lot.

    The rows are the fold's to read, never to change: `TaskWork.of` copies each.
    """

    def __init__(self, size: int = KEPT_TASKS) -> None:
        self._size = size
        self._rows: dict[str, dict[str, Any]] = {}
        self._refs: dict[tuple[str, str], str] = {}  # (provider, provider task id) -> ref
        self._version: int | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def check(self, conn: sqlite3.Connection) -> None:
        """Forget every row if another connection has committed since the last check (call
        it with the write lock held)."""
        (version,) = conn.execute("PRAGMA data_version").fetchone()
        if version != self._version:
            self.clear()
            self._version = version

    def clear(self) -> None:
        self._rows.clear()
        self._refs.clear()
        self._version = None

    def get(self, ref: str) -> dict[str, Any] | None:
        return self._rows.get(ref)

    def named(self, pair: tuple[str, str]) -> dict[str, Any] | None:
        """The row of the task that has this (provider, provider task id), if kept."""
        ref = self._refs.get(pair)
        row = None if ref is None else self._rows.get(ref)
        if row is None or (row["provider"], row["provider_task_id"]) != pair:
            return None
        return row

    def keep(self, rows: dict[str, dict[str, Any]]) -> None:
        """Rows as a batch that has just committed left them, each the newest kept."""
        kept = self._rows
        for ref, row in rows.items():
            kept.pop(ref, None)
            kept[ref] = row
            if row["provider_task_id"] is not None:
                self._refs[(row["provider"], row["provider_task_id"])] = ref
        while len(kept) > self._size:
            oldest = kept.pop(next(iter(kept)))
            pair = (oldest["provider"], oldest["provider_task_id"])
            if self._refs.get(pair) == oldest["ref"]:
                del self._refs[pair]


class SqliteSession:
    """The three steps of an ingest (load tasks, load deliveries, write) on one connection.

    With `kept`, tasks are taken from the rows earlier batches left where they can be, and
    `touched` collects the rows this batch leaves, for `KeptTasks.keep` after its COMMIT."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        task_fields: tuple[str, ...],
        kept: KeptTasks | None = None,
    ) -> None:
        self._conn = conn
        self._task_fields = task_fields
        self._task_reader = _task_reader(task_fields)
        self._kept = KeptTasks(0) if kept is None else kept
        if kept is not None:
            kept.check(conn)
        self.touched: dict[str, dict[str, Any]] = {}

    def tasks(
        self, refs: set[str], pairs: set[tuple[str, str]], *, lock: bool = True
    ) -> list[dict[str, Any]]:
        """The tasks by ref or by (provider, provider task id), in ref order; the write
        lock is the transaction's already, so `lock` changes nothing here.

        The tasks a pair names are read whole at once (one statement, not a lookup of
        their refs and then of them: signed events name tasks by id alone)."""
        kept = self._kept
        found: dict[str, dict[str, Any]] = {}
        unknown = set()
        for pair in pairs:
            row = kept.named(pair)
            if row is None:
                unknown.add(pair)
            else:
                found[row["ref"]] = row
        read = self._by_pairs(unknown) if unknown else []
        found.update((row["ref"], row) for row in read)
        missing = []
        for ref in sorted(refs - found.keys()):
            row = kept.get(ref)
            if row is None:
                missing.append(ref)
            else:
                found[ref] = row
        if missing:
            rows = self._conn.execute(
                f"SELECT {self._task_reader.select} FROM task "
                f"WHERE ref IN ({_marks(len(missing))})",
                missing,
            )
            fetched = [self._task_reader.decode(values) for values in rows]
            found.update((row["ref"], row) for row in fetched)
            read += fetched
        self.touched.update((row["ref"], row) for row in read)
        return [found[ref] for ref in sorted(found)]

    def _by_pairs(self, pairs: set[tuple[str, str]]) -> list[dict[str, Any]]:
        providers = sorted({provider for provider, _ in pairs})
        ids = sorted({task_id for _, task_id in pairs})
        rows = self._conn.execute(
            f"SELECT {self._task_reader.select} FROM task "
            f"WHERE provider IN ({_marks(len(providers))}) "
            f"AND provider_task_id IN ({_marks(len(ids))})",
            [*providers, *ids],
        )
        decoded = [self._task_reader.decode(values) for values in rows]
        return [row for row in decoded if (row["provider"], row["provider_task_id"]) in pairs]

    def deliveries(self, keys: set[DeliveryId]) -> dict[DeliveryId, dict[str, Any]]:
        if not keys:
            return {}
        rows = self._conn.execute(STORED_DELIVERIES, {"keys": keys_json(keys)})
        return {
            (provider, task_id, key): {
                "provider": provider,
                "provider_task_id": task_id,
                "delivery_key": key,
                "task_ref": ref,
                "state": state,
            }
            for provider, task_id, key, ref, state in rows
        }

    def lock_ids(self, task_ids: set[str]) -> None:
        """Nothing to do: the transaction holds SQLite's one write lock already."""

    def held(self, refs: set[str]) -> dict[str, list[dict[str, Any]]]:
        """The deliveries held for these tasks until their provider id is settled."""
        ordered = sorted(refs)
        rows = self._conn.execute(
            f"SELECT {_DELIVERY_READER.select} FROM delivery "
            f"WHERE task_ref IN ({_marks(len(ordered))}) AND {UNFOLDED_WHERE} "
            "AND outcome = 'held' ORDER BY id",
            ordered,
        )
        found: dict[str, list[dict[str, Any]]] = {}
        for values in rows:
            row = _DELIVERY_READER.decode(values)
            found.setdefault(row["task_ref"], []).append(row)
        return found

    def unmatched(self, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """Deliveries kept for these (provider, id) pairs before any task had the id."""
        found: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for pair in sorted(pairs):
            rows = self._conn.execute(
                f"SELECT {_DELIVERY_READER.select} FROM delivery WHERE provider = ? "
                "AND provider_task_id = ? AND task_ref IS NULL ORDER BY id",
                pair,
            )
            decoded = [_DELIVERY_READER.decode(values) for values in rows]
            if decoded:
                found[pair] = decoded
        return found

    def flush(self, writes: Writes, tasks: list[TaskWork], now: datetime) -> None:
        conn = self._conn
        self._insert(_NEW_DELIVERIES, writes.deliveries)
        self._insert(_NEW_OBSERVATIONS, writes.observations)
        for change in writes.delivery_updates:
            statement, row = _delivery_update(tuple(sorted(n for n in change if n != "id")))
            conn.execute(statement, row.encode(change))
        if writes.duplicates:
            stamp = _encode_when(now)
            conn.executemany(
                "UPDATE delivery SET duplicate_count = duplicate_count + ?, last_seen_at = ? "
                "WHERE provider = ? AND provider_task_id = ? AND delivery_key = ?",
                [(n, stamp, *key) for key, n in writes.duplicates.items()],
            )
        self._update_tasks(tasks)
        self.touched.update((work.ref, work.row) for work in tasks)  # as this batch leaves them
        if writes.transitions:
            self._insert_transitions(writes.transitions)
        if writes.messages:
            conn.executemany(
                _INSERT_MESSAGE,
                [_NEW_MESSAGES_ROW.encode(row) for row in message_rows(writes.messages)],
            )
        if writes.artifacts:
            conn.executemany(
                _INSERT_ARTIFACT,
                [
                    (
                        a["task_ref"],
                        a["provider"],
                        a["name"],
                        a["source"],
                        a["state"],
                        _encode_when(a["expires_at"]),
                        _encode_when(a["next_attempt_at"]),
                        a["attempts"],
                        _encode_when(a["created_at"]),
                    )
                    for a in writes.artifacts
                ],
            )

    def _insert_transitions(self, transitions: list[Transition]) -> None:
        """With `seq` handed out here (the write lock is ours): each event learns its own."""
        (last,) = self._conn.execute("SELECT coalesce(max(seq), 0) FROM transition").fetchone()
        rows = []
        for offset, t in enumerate(transitions, start=1):
            t.seq = last + offset
            source_id = str(t.source_row["id"]) if t.source_row else None
            rows.append(
                (
                    t.seq,
                    t.task_ref,
                    t.from_state,
                    t.to_state,
                    t.source,
                    source_id,
                    _encode_when(t.at),
                )
            )
        self._conn.executemany(_INSERT_TRANSITION, rows)

    def _update_tasks(self, tasks: list[TaskWork]) -> None:
        """Each task's changed columns only, one statement per set of columns."""
        by_shape: dict[tuple[str, ...], list[TaskWork]] = {}
        for work in tasks:
            by_shape.setdefault(work.changed_fields(self._task_fields), []).append(work)
        for changed, works in by_shape.items():
            if changed:
                statement, row = _task_update(changed)
                self._conn.executemany(statement, [row.encode(work.row) for work in works])

    def _insert(self, new: _NewRows, rows: list[dict[str, Any]]) -> None:
        """Insert rows with ids handed out here: the write lock is ours, so max(id) is stable."""
        if not rows:
            return
        (last,) = self._conn.execute(f"SELECT coalesce(max(id), 0) FROM {new.table}").fetchone()
        for offset, row in enumerate(rows, start=1):
            row["id"] = last + offset
        self._conn.executemany(new.insert, [new.row.encode(row) for row in rows])


# A COMMIT to run: the connection, and the loop and future that await it.
_Job = tuple[sqlite3.Connection, asyncio.AbstractEventLoop, "asyncio.Future[None]"]


class Committer:
    """One thread that runs COMMITs, each answered on its caller's loop.

    Not a `ThreadPoolExecutor`: profiled under load, its hand-off (a concurrent future,
    its condition and callbacks, the idle semaphore) took 5-10% of the loop's samples, and
    the thread must hold the GIL for all of that Python after each fsync, each time
    waiting for the busy loop to let go of it. Here the thread holds it only to read the
    next job and to hand the result back (`call_soon_threadsafe`).
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="taskledger-commit", daemon=True)
        self._thread.start()

    def commit(self, conn: sqlite3.Connection) -> asyncio.Future[None]:
        """A future of the running loop, done once `conn`'s COMMIT has ended (with its
        error, if it failed)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._jobs.put((conn, loop, done))
        return done

    def stop(self) -> None:
        """End the thread once the COMMITs queued before have run (blocks: call it on a
        thread)."""
        self._jobs.put(None)
        self._thread.join()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            conn, loop, done = job
            error: Exception | None = None
            try:
                conn.execute("COMMIT")
            except Exception as exc:  # handed to the caller, which rolls back
                error = exc
            # A closed loop (RuntimeError) has nobody awaiting this COMMIT any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, done, error)


def _settle(done: asyncio.Future[None], error: Exception | None) -> None:
    if done.cancelled():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


class LedgerWriter:
    """The ledger's SQLite writer: its batches, each on a `SqliteSession`, and the task
    rows they leave (`KeptTasks`)."""

    def __init__(self, file: SqliteFile, task_fields: tuple[str, ...]) -> None:
        self.writer = SqliteWriter(file)  # its connection, one transaction at a time
        self._task_fields = task_fields
        self.kept = KeptTasks()

    async def run(self, work: Callable[[SqliteSession], T]) -> T:
        def batch(conn: sqlite3.Connection) -> tuple[T, dict[str, dict[str, Any]]]:
            session = SqliteSession(conn, self._task_fields, self.kept)
            return work(session), session.touched

        try:
            result, touched = await self.writer.run(batch)
        except BaseException:
            self.kept.clear()  # rolled back, or its COMMIT's fate unknown to this caller
            raise
        self.kept.keep(touched)
        return result

    async def close(self) -> None:
        self.kept.clear()
        await self.writer.close()


class SqliteWriter:
    """One connection; each call is one write transaction: its statements on the caller's
    thread, its commit on the writer's own thread. Calls run one at a time."""

    def __init__(self, file: SqliteFile) -> None:
        self._file = file
        self._conn: sqlite3.Connection | None = None
        self._committer: Committer | None = None

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in a write transaction, waiting (without blocking) for the write lock.

        The wait, for this process's other writers ahead and then for the lock, ends at the
        current write deadline (`schemas.write_deadline`), the lock's after at most the busy
        timeout: then `WriteBusy`, and nothing was written.
        """
        loop = asyncio.get_running_loop()
        gate = self._file.write_gate()
        await take_turn(gate, current_deadline())
        try:
            until = wait_until(loop, self._file.busy_timeout_ms / 1000)
            conn = await self._begin_when_free(loop, until)
            result = self._work(conn, work)
            await self._commit(conn)
            return result
        finally:
            gate.release()

    async def _begin_when_free(
        self, loop: asyncio.AbstractEventLoop, until: float
    ) -> sqlite3.Connection:
        delay = 0.001
        while (conn := self._begin()) is None:
            left = until - loop.time()
            if left <= 0:
                raise WriteBusy("database unavailable: the write lock stayed busy")
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 0.05)
        return conn

    def _begin(self) -> sqlite3.Connection | None:
        """A connection inside `BEGIN IMMEDIATE`, or None while another writer holds the lock."""
        try:
            if self._conn is None:
                self._conn = self._file.connect(busy_timeout_ms=0)
                self._conn.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return None
            self._drop()
            raise StorageUnavailable(f"database unavailable: {fault(exc)}") from exc
        except sqlite3.Error as exc:
            self._drop()
            raise StorageUnavailable(f"database unavailable: {fault(exc)}") from exc
        return self._conn

    def _work(self, conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return work(conn)
        except BaseException as exc:
            self._failed(conn, exc)
            raise

    async def _commit(self, conn: sqlite3.Connection) -> None:
        """COMMIT on the committer thread; a cancelled caller still waits for it to end,
        since the connection must not be touched while it runs."""
        if self._committer is None:
            self._committer = Committer()
        done = self._committer.commit(conn)
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await done
            if conn.in_transaction:
                self._rollback(conn)
            raise
        except BaseException as exc:
            self._failed(conn, exc)
            raise

    def _failed(self, conn: sqlite3.Connection, exc: BaseException) -> None:
        """Roll back, then say why in the store's terms."""
        self._rollback(conn)
        if isinstance(exc, sqlite3.IntegrityError):
            raise UniqueRace() from exc
        if isinstance(exc, sqlite3.Error):
            raise StorageUnavailable(f"database error: {fault(exc)}") from exc

    def _rollback(self, conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            self._drop()

    def _drop(self) -> None:
        """Forget a connection whose state is unknown; the next call opens a new one."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    async def close(self) -> None:
        async with self._file.write_gate():
            self._drop()
            committer, self._committer = self._committer, None
        if committer is not None:
            await asyncio.to_thread(committer.stop)
