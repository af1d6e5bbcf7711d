"""The store's ingest path on SQLite: one `sqlite3` connection on one writer thread.

Profiled under load, SQLAlchemy's per-row work (bind and result processors, the
async adapter's thread hop for every cursor call) cost about 250 µs per delivery;
plain parameterized statements cost about 40. So, for the hot path only, the SQL
below is written against the tables' own column lists, values are converted by
codecs derived from the tables' column types (the same stored forms SQLAlchemy
writes and reads: `YYYY-MM-DD HH:MM:SS.ffffff` UTC, JSON text, 0/1), and a whole
batch runs as one call on the writer thread, inside `BEGIN IMMEDIATE ... COMMIT`.
Everything else, and PostgreSQL, goes through SQLAlchemy.

Every statement below is assembled only from the tables' own column names and `?`
placeholders; values are always bound, never formatted in (hence the S608 waivers).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect

from schemas.database import SqliteFile
from schemas.errors import StorageUnavailable
from schemas.fold import TaskWork, Writes
from schemas.tables import DELIVERY, OBSERVATION, TASK, TRANSITION, UTCDateTime

T = TypeVar("T")
Encoder = Callable[[Any], Any]
Decoder = Callable[[Any], Any]
_QUOTE = sqlite_dialect.dialect().identifier_preparer.quote


class UniqueRace(Exception):
    """A unique key was taken by another writer first: the caller retries the batch."""


def _encode_when(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the ledger")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


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


def _codec(column: sa.Column[Any]) -> tuple[Encoder, Decoder]:
    kind = column.type
    if isinstance(kind, UTCDateTime):
        return _encode_when, _decode_when
    if isinstance(kind, sa.JSON):
        return _encode_json, _decode_json
    if isinstance(kind, sa.Boolean):
        return _encode_bool, _decode_bool
    return _same, _same


class _Table:
    """A table's column names, SQL fragments and codecs, computed once."""

    def __init__(self, table: sa.Table) -> None:
        self.name = _QUOTE(table.name)
        self.columns = [column.name for column in table.c]
        self.encoders = {column.name: _codec(column)[0] for column in table.c}
        self.decoders = [_codec(column)[1] for column in table.c]
        self.select = ", ".join(_QUOTE(name) for name in self.columns)

    def insert(self, names: Sequence[str]) -> str:
        marks = ", ".join("?" for _ in names)
        return f"INSERT INTO {self.name} ({', '.join(_QUOTE(n) for n in names)}) VALUES ({marks})"

    def decode(self, values: Iterable[Any]) -> dict[str, Any]:
        return {
            name: decode(value)
            for name, decode, value in zip(self.columns, self.decoders, values, strict=True)
        }

    def encode(self, row: dict[str, Any], names: Sequence[str]) -> tuple[Any, ...]:
        encoders = self.encoders
        return tuple(encoders[name](row[name]) for name in names)


_TASKS = _Table(TASK)
_DELIVERIES = _Table(DELIVERY)
_OBSERVATIONS = _Table(OBSERVATION)
_TRANSITIONS = _Table(TRANSITION)
_DELIVERY_FIELDS = [name for name in _DELIVERIES.columns if name != "id"]
_OBSERVATION_FIELDS = [name for name in _OBSERVATIONS.columns if name != "id"]
_TRANSITION_FIELDS = ("task_ref", "from_state", "to_state", "source", "source_id", "at")


def _marks(count: int) -> str:
    return ", ".join("?" * count)


class SqliteSession:
    """The three steps of an ingest (load tasks, load deliveries, write) on one connection."""

    def __init__(self, conn: sqlite3.Connection, task_fields: Sequence[str]) -> None:
        self._conn = conn
        self._task_fields = task_fields
        assigns = ", ".join(f"{_QUOTE(name)} = ?" for name in task_fields)
        self._update_task = f"UPDATE task SET {assigns} WHERE ref = ?"

    def tasks(self, refs: set[str], pairs: set[tuple[str, str]]) -> list[dict[str, Any]]:
        refs = set(refs)
        if pairs:
            providers = sorted({provider for provider, _ in pairs})
            ids = sorted({task_id for _, task_id in pairs})
            found = self._conn.execute(
                "SELECT ref, provider, provider_task_id FROM task "
                f"WHERE provider IN ({_marks(len(providers))}) "
                f"AND provider_task_id IN ({_marks(len(ids))})",
                [*providers, *ids],
            )
            refs |= {ref for ref, provider, task_id in found if (provider, task_id) in pairs}
        if not refs:
            return []
        ordered = sorted(refs)
        rows = self._conn.execute(
            f"SELECT {_TASKS.select} FROM task WHERE ref IN ({_marks(len(ordered))}) ORDER BY ref",
            ordered,
        )
        return [_TASKS.decode(row) for row in rows]

    def deliveries(self, keys: set[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
        if not keys:
            return {}
        providers = sorted({provider for provider, _ in keys})
        names = sorted({key for _, key in keys})
        rows = self._conn.execute(
            "SELECT provider, delivery_key, task_ref, state FROM delivery "
            f"WHERE provider IN ({_marks(len(providers))}) "
            f"AND delivery_key IN ({_marks(len(names))})",
            [*providers, *names],
        )
        return {
            (provider, key): {
                "provider": provider,
                "delivery_key": key,
                "task_ref": ref,
                "state": state,
            }
            for provider, key, ref, state in rows
            if (provider, key) in keys
        }

    def flush(self, writes: Writes, tasks: list[TaskWork], now: datetime) -> None:
        conn = self._conn
        self._insert(_DELIVERIES, _DELIVERY_FIELDS, writes.deliveries)
        self._insert(_OBSERVATIONS, _OBSERVATION_FIELDS, writes.observations)
        if writes.duplicates:
            stamp = _encode_when(now)
            conn.executemany(
                "UPDATE delivery SET duplicate_count = duplicate_count + ?, last_seen_at = ? "
                "WHERE provider = ? AND delivery_key = ?",
                [(n, stamp, p, k) for (p, k), n in writes.duplicates.items()],
            )
        if tasks:
            fields = self._task_fields
            conn.executemany(
                self._update_task,
                [(*_TASKS.encode(work.row, fields), work.row["ref"]) for work in tasks],
            )
        if writes.transitions:
            conn.executemany(
                _TRANSITIONS.insert(_TRANSITION_FIELDS),
                [
                    (
                        t.task_ref,
                        t.from_state,
                        t.to_state,
                        t.source,
                        str(t.source_row["id"]) if t.source_row else None,
                        _encode_when(t.at),
                    )
                    for t in writes.transitions
                ],
            )

    def _insert(self, table: _Table, names: Sequence[str], rows: list[dict[str, Any]]) -> None:
        """Insert rows one by one and give each its id (sqlite3 has no RETURNING executemany)."""
        if not rows:
            return
        statement = table.insert(names)
        cursor = self._conn.cursor()
        for row in rows:
            cursor.execute(statement, table.encode(row, names))
            row["id"] = cursor.lastrowid
        cursor.close()


class SqliteWriter:
    """One connection, one thread: every call runs there, in its own write transaction."""

    def __init__(self, file: SqliteFile) -> None:
        self._file = file
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="taskledger-sqlite")
        self._conn: sqlite3.Connection | None = None

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._transaction, work)

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            if self._conn is None:
                self._conn = self._file.connect()
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._drop()
            raise StorageUnavailable(f"database unavailable: {type(exc).__name__}") from exc
        try:
            result = work(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            self._rollback()
            if isinstance(exc, sqlite3.IntegrityError):
                raise UniqueRace() from exc
            if isinstance(exc, sqlite3.Error):
                raise StorageUnavailable(f"database error: {type(exc).__name__}") from exc
            raise
        return result

    def _rollback(self) -> None:
        if self._conn is None:
            return
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            self._drop()

    def _drop(self) -> None:
        """Forget a connection whose state is unknown; the next call opens a new one."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._drop)
        self._executor.shutdown(wait=True)
