"""The store's transactions: a connection in a transaction, this process's SQLite write
gate, the write deadline, and database errors translated into the ledger's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schemas.clock import Clock
from schemas.database import READ_ONLY, sqlite_file
from schemas.errors import LedgerError, StorageUnavailable, ValueRefused
from schemas.ledger import Reader
from schemas.write_deadline import WriteBusy, take_turn
from schemas.write_deadline import current as current_deadline


class UniqueRace(Exception):
    """A unique key was taken by another writer first: the caller retries the batch."""


@dataclass(frozen=True, slots=True)
class Database:
    """What every part of the store works with: the engine, the clock, and how each
    provider's deliveries are read (to read stored ones again)."""

    engine: AsyncEngine
    clock: Clock
    readers: Mapping[str, Reader] = field(default_factory=dict)

    @property
    def locks_rows(self) -> bool:
        """PostgreSQL runs writers at once and locks rows; SQLite runs one writer at a time."""
        return self.engine.dialect.name == "postgresql"

    def write(self) -> Transaction:
        return Transaction(self.engine, read_only=False)

    def read(self) -> Transaction:
        return Transaction(self.engine, read_only=True)


class DryRun(Exception):
    """Raised inside a write transaction to roll it back on purpose."""


class Transaction:
    """`async with`: a connection in a transaction, with database errors made ours."""

    def __init__(self, engine: AsyncEngine, *, read_only: bool) -> None:
        self._engine = engine
        self._read_only = read_only
        self._conn: AsyncConnection | None = None
        self._file = None if read_only else sqlite_file(engine)
        self._held: asyncio.Lock | None = None

    async def __aenter__(self) -> AsyncConnection:
        """A write waits for its turn, a connection and BEGIN until the write deadline, if
        there is one (`schemas.write_deadline`), then raises `WriteBusy`."""
        until = None if self._read_only else current_deadline()
        if self._file is not None:  # SQLite writers of this process take turns
            gate = self._file.write_gate()
            await take_turn(gate, until)
            self._held = gate
        try:
            return await self._open(until)
        except BaseException:
            self._release()
            raise

    async def _open(self, until: float | None) -> AsyncConnection:
        conn = await self._connect(until)
        try:
            if self._read_only:
                conn = await conn.execution_options(**READ_ONLY)
            await self._begin(conn, until)
        except BaseException as exc:
            # Failed or cancelled mid-BEGIN: a BEGIN IMMEDIATE may hold SQLite's write lock,
            # and a connection left open would keep it from every other writer.
            await _discard(conn)
            await _close(conn)
            error = _not_begun(exc)
            if error is exc:
                raise
            raise error from exc
        self._conn = conn
        return conn

    async def _connect(self, until: float | None) -> AsyncConnection:
        return await _connect(self._engine, until)

    async def _begin(self, conn: AsyncConnection, until: float | None) -> None:
        """BEGIN; on SQLite its wait for the write lock ends at `until`, for which the
        connection's busy timeout is shortened meanwhile (SQLite waits in the driver's
        thread, where a cancellation could not stop it)."""
        if self._file is None or until is None:
            await conn.begin()
            return
        usual = self._file.busy_timeout_ms
        left = int((until - asyncio.get_running_loop().time()) * 1000)
        if left <= 0:
            raise WriteBusy("database unavailable: the write lock stayed busy")
        if left < usual:
            await conn.run_sync(_set_busy_timeout, left)
        await conn.begin()
        if left < usual:
            await conn.run_sync(_set_busy_timeout, usual)

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        assert self._conn is not None
        conn, self._conn = self._conn, None
        try:
            if exc is None:
                await conn.commit()
            else:
                await conn.rollback()
        except (SQLAlchemyError, OSError) as error:
            await _discard(conn)
            if exc is None:
                raise StorageUnavailable(f"commit failed: {type(error).__name__}") from error
        finally:
            try:
                await _close(conn)
            finally:  # even when cancelled while closing: other writers wait on the gate
                self._release()
        _translate(exc)

    def _release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.release()


async def _connect(engine: AsyncEngine, until: float | None) -> AsyncConnection:
    """A connection from the pool, waited for until `until` (then `WriteBusy`)."""
    try:
        async with asyncio.timeout_at(until):
            return await engine.connect()
    except TimeoutError as exc:
        if until is not None and asyncio.get_running_loop().time() >= until:
            raise WriteBusy("database unavailable: no connection before the deadline") from exc
        raise StorageUnavailable(f"database unavailable: {fault(exc)}") from exc
    except (SQLAlchemyError, OSError) as exc:
        raise StorageUnavailable(f"database unavailable: {fault(exc)}") from exc


@contextlib.asynccontextmanager
async def driver_write(engine: AsyncEngine) -> AsyncIterator[Any]:
    """A write transaction on the pool's own asyncpg connection, for statements that skip
    SQLAlchemy (`schemas.store.pg_ingest`): the pool, its settings and the write deadline
    stay those of every other transaction. asyncpg's errors become the store's; a
    connection whose state is unknown (cancelled or failed mid-statement) is dropped."""
    conn, driver, transaction = await _started(engine)
    try:
        try:
            yield driver
            await transaction.commit()
        except BaseException as exc:
            await _abandon(conn, driver, transaction, exc)
            error = _driver_error(exc)
            if error is exc:
                raise
            raise error from exc
    finally:
        await _close(conn)


# A connection the server ended unseen fails its next statement with one of these: asyncpg
# raises `InternalClientError` ("another operation is in progress") when the server's
# goodbye came before the statement.
_CONNECTION_ERRORS = (
    asyncpg.InterfaceError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InternalClientError,
    OSError,
)


async def _started(engine: AsyncEngine) -> tuple[AsyncConnection, Any, Any]:
    """A pooled connection with a transaction begun on its asyncpg connection. A connection
    that fails its BEGIN (closed while pooled, unseen) is dropped and another tried once:
    nothing was sent in it yet, so nothing is lost or doubled."""
    for attempt in (1, 2):
        conn = await _connect(engine, current_deadline())
        try:
            driver: Any = (await conn.get_raw_connection()).driver_connection
            transaction = _Transaction(driver)
            await transaction.start()
        except _CONNECTION_ERRORS as exc:
            await _discard(conn)
            await _close(conn)
            if attempt == 2:
                raise StorageUnavailable(f"database unavailable: {fault(exc)}") from exc
            continue
        except BaseException:
            # Cancelled mid-BEGIN: the server may have begun it, so the connection's state
            # is unknown and it is not handed to anyone else.
            await _discard(conn)
            await _close(conn)
            raise
        return conn, driver, transaction
    raise AssertionError("unreachable")


# The ingest's statements are keyed reads and writes of one batch (its tasks by primary or
# unique key, its deliveries by their unique key): an index is always the right way in, so
# for its transaction alone each is planned once per connection (a generic plan) and by
# index wherever one serves, whatever the statistics said when it was planned. The
# session's `force_custom_plan` (`schemas.database`) planned them again at every run: the
# write, the load's three statements and the delivery foreign key's check for each row,
# about 0.7 ms of planning for a batch of 16. With one plan each, PostgreSQL's CPU a
# callback fell by 40-45% (`python -m bench.instructions --database postgresql --clock 3`).
# Sent with BEGIN, in one round trip; both settings end with the transaction.
INGEST_BEGIN = (
    "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off"
)


class _Transaction:
    """BEGIN with the ingest's plan settings, then COMMIT or ROLLBACK, on an asyncpg
    connection (its own `transaction()` sends a bare BEGIN)."""

    def __init__(self, driver: Any) -> None:
        self._driver = driver

    async def start(self) -> None:
        await self._driver.execute(INGEST_BEGIN)

    async def commit(self) -> None:
        await self._driver.execute("COMMIT")

    async def rollback(self) -> None:
        await self._driver.execute("ROLLBACK")


async def _abandon(
    conn: AsyncConnection, driver: Any, transaction: Any, exc: BaseException
) -> None:
    """Roll back what a failed transaction did; drop the connection if that is not sure."""
    if isinstance(exc, asyncio.CancelledError) or driver.is_closed():
        await _discard(conn)
        return
    try:
        if driver.is_in_transaction():
            await transaction.rollback()
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        await _discard(conn)


def _driver_error(exc: BaseException) -> BaseException:
    """An asyncpg error in the store's terms (`exc` itself when it is not the database's)."""
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        return UniqueRace()
    if _refuses_a_value(exc):
        return ValueRefused(f"the database refused a value: {fault(exc)}")
    if isinstance(exc, (asyncpg.PostgresError, *_CONNECTION_ERRORS)):
        return StorageUnavailable(f"database error: {fault(exc)}")
    return exc


def _refuses_a_value(exc: BaseException) -> bool:
    """Whether PostgreSQL refused a value of the statement (a data exception), as asyncpg
    raises it or as SQLAlchemy's adapter wraps it (the adapter's error caused by it)."""
    error: BaseException | None = getattr(exc, "orig", None) or exc
    while error is not None:
        if isinstance(error, asyncpg.DataError):
            return True
        error = error.__cause__
    return False


# What an operator should read for the SQLite result codes a write meets in production.
_SQLITE_FAULTS = {
    "SQLITE_FULL": "the disk is full",
    "SQLITE_READONLY": "the database is read-only",
    "SQLITE_CANTOPEN": "the database file cannot be opened",
    "SQLITE_CORRUPT": "the database file is corrupt",
    "SQLITE_NOTADB": "the file is not a database",
}


def fault(exc: BaseException) -> str:
    """A database error as an operator can act on it, without its text (which may quote
    a statement's values): the error's kind, and the driver's code for it (SQLite's result
    code, PostgreSQL's error class and SQLSTATE)."""
    driver: BaseException | None = getattr(exc, "orig", None) or exc
    name = getattr(driver, "sqlite_errorname", None)
    if isinstance(name, str):
        # An extended code (SQLITE_READONLY_DBMOVED) says what its primary one says.
        said = _SQLITE_FAULTS.get(name) or _SQLITE_FAULTS.get(re.sub(r"_[A-Z]+$", "", name))
        return (
            f"{type(exc).__name__}: {said} ({name})" if said else f"{type(exc).__name__} ({name})"
        )
    while driver is not None and not isinstance(driver, asyncpg.PostgresError | OSError):
        driver = driver.__cause__
    if isinstance(driver, asyncpg.PostgresError):
        return f"{type(exc).__name__} ({type(driver).__name__}, SQLSTATE {driver.sqlstate})"
    if isinstance(driver, OSError) and driver is not exc:
        return f"{type(exc).__name__} ({type(driver).__name__}: {driver.strerror or driver})"
    return type(exc).__name__


def _not_begun(exc: BaseException) -> BaseException:
    """What a failed BEGIN is in the store's terms (`exc` itself when it is not the database's)."""
    if isinstance(exc, LedgerError):
        return exc
    if isinstance(exc, SQLAlchemyError) and _lock_busy(exc):
        return WriteBusy("database unavailable: the write lock stayed busy")
    if isinstance(exc, SQLAlchemyError | OSError):
        return StorageUnavailable(f"database unavailable: {fault(exc)}")
    return exc


def _lock_busy(exc: SQLAlchemyError) -> bool:
    code = getattr(getattr(exc, "orig", None), "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _set_busy_timeout(conn: sa.Connection, milliseconds: int) -> None:
    """Straight on the driver's connection: a statement through `conn` would begin."""
    cursor = conn.connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={int(milliseconds)}")
    finally:
        cursor.close()


def _translate(exc: BaseException | None) -> None:
    if exc is None or isinstance(exc, LedgerError | UniqueRace):
        return
    if isinstance(exc, IntegrityError):
        raise UniqueRace() from exc
    if _refuses_a_value(exc):
        raise ValueRefused(f"the database refused a value: {fault(exc)}") from exc
    if isinstance(exc, SQLAlchemyError | OSError):
        raise StorageUnavailable(f"database error: {fault(exc)}") from exc


async def _discard(conn: AsyncConnection) -> None:
    """Drop a connection whose state is unknown; it is broken already if this fails."""
    with contextlib.suppress(SQLAlchemyError, OSError):
        await conn.invalidate()


async def _close(conn: AsyncConnection) -> None:
    with contextlib.suppress(SQLAlchemyError, OSError):
        await conn.close()
