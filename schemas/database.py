"""The database engine: URL normalization, SQLite pragmas and write transactions, and the
start-up check that the database answers and is migrated."""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import orjson
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from schemas.errors import ConfigError, DatabaseNotMigrated, DatabaseUnreachable, LedgerError
from schemas.migrate import head_revision, known_revision

SQLITE_BUSY_TIMEOUT_MS = 5_000
DATABASE_URL_VARIABLE = "TASKLEDGER_DATABASE_URL"
# How long a process waits at start-up for the database to answer before giving up.
START_CHECK_SECONDS = 10.0
READ_ONLY = {"taskledger_read_only": True}


@dataclass(frozen=True, slots=True)
class SqliteFile:
    """A SQLite ledger file and the pragmas every connection to it runs with."""

    path: str
    synchronous: str = "FULL"
    busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS

    def configure(self, connection: Any, busy_timeout_ms: int | None = None) -> None:
        """WAL, durable commits, a busy timeout, foreign keys; BEGIN is ours, not the driver's."""
        busy = self.busy_timeout_ms if busy_timeout_ms is None else busy_timeout_ms
        connection.isolation_level = None
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={self.synchronous}")
        cursor.execute(f"PRAGMA busy_timeout={int(busy)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    def write_gate(self) -> asyncio.Lock:
        """The lock every writer to this file in this process holds for its transaction.

        SQLite's busy handler is a polling loop with no queue: writers of one process that
        meet on the write lock sleep and retry, and under load one of them can lose every
        retry until its busy timeout. Writers of one process therefore queue here, in
        order, and meet the busy handler only across processes (receiver and reconciler).
        """
        gates = _GATES.setdefault(asyncio.get_running_loop(), {})
        key = _real_path(self.path)
        gate = gates.get(key)
        if gate is None:
            gate = gates[key] = asyncio.Lock()
        return gate

    def connect(self, busy_timeout_ms: int | None = None) -> sqlite3.Connection:
        """A plain `sqlite3` connection, configured like the engine's."""
        busy = self.busy_timeout_ms if busy_timeout_ms is None else busy_timeout_ms
        connection = sqlite3.connect(self.path, timeout=busy / 1000, check_same_thread=False)
        self.configure(connection, busy)
        return connection


@functools.cache
def _real_path(path: str) -> str:
    """One name per file, however it was spelt (resolved once, not on every write)."""
    return os.path.realpath(path)


# Per event loop (a lock serves one loop) and per file: see `SqliteFile.write_gate`.
_GATES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)
# The file behind each SQLite engine, for the store's direct writer (see `sqlite_file`).
_FILES: weakref.WeakKeyDictionary[sa.Engine, SqliteFile] = weakref.WeakKeyDictionary()


# Every statement planned for its own parameters. asyncpg prepares each statement once per
# connection, and PostgreSQL's default then settles on one generic plan after five runs,
# costed on the statistics of that moment: a ledger that started empty (or whose
# statistics lag, autovacuum being off or behind) kept reading its deliveries by
# sequential scan as they grew into the hundreds of thousands. Planning these short
# statements costs far less than one such scan. The ingest's transaction, whose statements
# are all keyed, is planned once and by index instead (`store.transactions.INGEST_BEGIN`).
POSTGRES_SESSION = {"plan_cache_mode": "force_custom_plan"}

# How connections reach PostgreSQL, named by the URL's `pooling` parameter: `session` (the
# default: directly, or through a pooler that keeps one server connection per client), or
# `transaction`, through a pooler that hands the server connection to another client after
# every transaction (PgBouncer's transaction pooling, how most managed PostgreSQL is reached).
POOLING_PARAMETER = "pooling"
POOLING_MODES = ("session", "transaction")
# In transaction pooling, no statement outlives its transaction on a server connection:
# nothing is cached, each statement is prepared under a name no other client can be using
# (PgBouncer may have given another client the connection before), and no session setting
# is sent (PgBouncer refuses startup parameters it does not know). Each statement being
# prepared for one execution, PostgreSQL plans it for its parameters without being told.
TRANSACTION_POOLING = {"statement_cache_size": 0, "prepared_statement_cache_size": 0}


def normalize_url(url: str) -> str:
    """Pick the async driver for a plain `sqlite:` or `postgresql:` URL."""
    parsed = make_url(url)
    driver = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
    name = "postgresql" if parsed.drivername == "postgres" else parsed.drivername
    return parsed.set(drivername=driver.get(name, name)).render_as_string(hide_password=False)


# The database kinds taskledger runs on, by the async driver it uses for each.
DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}


def checked_url(url: str) -> str:
    """`url`, trimmed, once it names a database taskledger runs on (a SQLite file, or a
    PostgreSQL database and only parameters it knows); otherwise a `ConfigError` in one line
    naming the variable (never the URL's password)."""
    url = url.strip()
    example = "sqlite:///path/to/ledger.db or postgresql://user@host:5432/name"
    try:
        parsed = make_url(normalize_url(url))
        port = parsed.port  # a host or port that does not parse ("[::1", "h:x") fails here
    except (sa.exc.ArgumentError, ValueError):
        raise ConfigError(f"{DATABASE_URL_VARIABLE} is not a database URL: use {example}") from None
    backend = parsed.get_backend_name()
    if DRIVERS.get(backend) != parsed.get_driver_name():
        raise ConfigError(
            f"{DATABASE_URL_VARIABLE} names {parsed.drivername}, which taskledger does not run"
            f" on: use {example}"
        )
    if port is not None and not 1 <= port <= 65535:
        # The driver would fail deep inside its connect (an OverflowError), not in one line.
        raise ConfigError(
            f"{DATABASE_URL_VARIABLE} names port {port}, which is not a TCP port (1 to 65535)"
        )
    if backend == "sqlite":
        _refuse_in_memory(parsed)
    if backend == "postgresql" and not parsed.database:
        # The driver would pick one (the user's name): tables would land in another database.
        raise ConfigError(
            f"{DATABASE_URL_VARIABLE} names no database: give its name, as in {example}"
        )
    if backend == "postgresql":
        _check_parameters(parsed)
    pooling_of(url)
    return url


def _refuse_in_memory(parsed: URL) -> None:
    """A SQLite database in memory lives and dies with one connection of one process: the
    receiver and the reconciler would each see their own, and nothing would be kept."""
    database = parsed.database or ""
    if (
        database in ("", ":memory:")
        or database.startswith("file::memory:")
        or (parsed.query.get("mode") == "memory")
    ):
        raise ConfigError(
            f"{DATABASE_URL_VARIABLE} names an in-memory SQLite database, which keeps nothing"
            " and which the receiver and the reconciler cannot share: name a file, as in"
            " sqlite:///path/to/ledger.db"
        )


# The parameters a PostgreSQL URL may carry: `pooling` (ours), `sslmode` (libpq's, given to
# asyncpg as its `ssl`) or `ssl` (asyncpg's own name for it), and `host` for the directory
# of the server's unix socket. asyncpg refuses any other with a traceback, or takes it as a
# string where it wants a number.
SSLMODE_PARAMETER = "sslmode"
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
URL_PARAMETERS = (POOLING_PARAMETER, SSLMODE_PARAMETER, "ssl", "host")


def _check_parameters(parsed: URL) -> None:
    """Each query parameter of a PostgreSQL URL is one taskledger takes, given once, with a
    value it takes; the line names the parameter, never its value unless it is a mode."""
    for name, value in parsed.query.items():
        if name not in URL_PARAMETERS:
            raise ConfigError(
                f"{DATABASE_URL_VARIABLE}: the parameter {name!r} is not one taskledger takes"
                f" (it takes {', '.join(URL_PARAMETERS)})"
            )
        if not isinstance(value, str):
            raise ConfigError(f"{DATABASE_URL_VARIABLE}: the parameter {name!r} is given twice")
    if SSLMODE_PARAMETER in parsed.query and "ssl" in parsed.query:
        raise ConfigError(
            f"{DATABASE_URL_VARIABLE}: give {SSLMODE_PARAMETER} or ssl, not both (they are one"
            " setting)"
        )
    for name in (SSLMODE_PARAMETER, "ssl"):
        mode = parsed.query.get(name)
        if mode is not None and mode not in SSL_MODES:
            raise ConfigError(
                f"{DATABASE_URL_VARIABLE}: {name} must be one of {', '.join(SSL_MODES)}"
                f" (got {mode!r})"
            )
    host = parsed.query.get("host")
    if host is not None and not str(host).startswith("/"):
        raise ConfigError(
            f"{DATABASE_URL_VARIABLE}: the parameter 'host' takes the directory of the server's"
            " socket (/var/run/postgresql); name a TCP host before the database, as in"
            " postgresql://user@host:5432/name"
        )


def names_sqlite(url: str) -> bool:
    """Whether a (checked) database URL names a SQLite file."""
    return make_url(normalize_url(url)).get_backend_name() == "sqlite"


def describe(url: str | URL) -> str:
    """The database a URL names, without user or password: fit for a log line (an engine's
    `URL` too)."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        return "an unreadable URL"
    # No query either (libpq takes `?password=`). `URL.set` ignores None: `_replace` drops.
    bare = parsed.set(query={})._replace(username=None, password=None)
    return bare.render_as_string(hide_password=True)


async def reachable_revision(ping: Callable[[], Awaitable[str | None]], url: str) -> str | None:
    """The migration the database is at (None: empty), read by `ping` (the store's); one that
    does not answer within `START_CHECK_SECONDS` is `DatabaseUnreachable`, in one line."""
    try:
        return await asyncio.wait_for(ping(), START_CHECK_SECONDS)
    except (LedgerError, OSError, TimeoutError) as exc:
        raise DatabaseUnreachable(
            f"{DATABASE_URL_VARIABLE}: cannot reach {describe(url)} ({_cause(exc)})"
        ) from None


def refuse_unknown(revision: str | None, url: str) -> None:
    """A database a newer taskledger migrated is refused in one line: nothing here can
    upgrade it, and this code does not know its tables."""
    if revision is not None and not known_revision(revision):
        raise DatabaseNotMigrated(
            f"{DATABASE_URL_VARIABLE}: {describe(url)} is at migration {revision}, newer than"
            f" this taskledger knows (its newest: {head_revision()}): run the taskledger that"
            " migrated it, or a newer one"
        )


async def require_current(ping: Callable[[], Awaitable[str | None]], url: str) -> None:
    """Start-up: the database answers and is at the newest migration. A SQLite file that
    is not there is not made by asking it (SQLite would make an empty one)."""
    head = head_revision()
    _refuse_missing_file(url, head)
    revision = await reachable_revision(ping, url)
    refuse_unknown(revision, url)
    if revision != head:
        raise DatabaseNotMigrated(
            f"{DATABASE_URL_VARIABLE}: {describe(url)} is at migration {revision or 'none'},"
            f" not {head}: run `taskledger db upgrade`"
        )
    _require_writable(url)


def _refuse_missing_file(url: str, head: str | None) -> None:
    file = sqlite_path(url)
    if file is not None and not os.path.exists(file):
        raise DatabaseNotMigrated(
            f"{DATABASE_URL_VARIABLE}: {describe(url)} is at migration none (there is no such"
            f" file), not {head}: run `taskledger db upgrade`"
        )


def sqlite_path(url: str) -> str | None:
    """The file a (checked) SQLite URL names; None for any other database."""
    parsed = make_url(normalize_url(url))
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or not path or path == ":memory:":
        return None
    return path


def _require_writable(url: str) -> None:
    """SQLite opens a file this process may not write read-only, without a word: it would
    start, say it is ready, and refuse every write. Start-up says so instead."""
    path = sqlite_path(url)
    if path is None:
        return
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise DatabaseUnreachable(
            f"{DATABASE_URL_VARIABLE}: {describe(url)} is read-only for this process"
            " (it may not write the file)"
        )


def _cause(exc: BaseException) -> str:
    """The root of a chain of errors, on one line."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, TimeoutError):
        return f"no answer within {START_CHECK_SECONDS:g} s"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def create_engine(
    url: str,
    *,
    synchronous: str = "FULL",
    pool_size: int = 10,
    busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
) -> AsyncEngine:
    """An async engine for the ledger; SQLite gets WAL, a busy timeout and durable commits."""
    url, pooling = pooling_of(normalize_url(url))
    if url.startswith("sqlite"):
        if pooling != "session":
            raise ConfigError(
                f"{DATABASE_URL_VARIABLE}: {POOLING_PARAMETER}={pooling} is for PostgreSQL"
            )
        return _sqlite_engine(url, synchronous, busy_timeout_ms)
    url = _asyncpg_url(url)
    connect_args: dict[str, Any] = {"server_settings": POSTGRES_SESSION}
    if pooling == "transaction":
        connect_args = {**TRANSACTION_POOLING, "prepared_statement_name_func": _statement_name}
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # JSON columns read back with orjson, as they are written: the standard library's
        # decoder was 2.4% of a PostgreSQL receiver's samples under load (its ingest reads
        # tasks as JSON).
        json_serializer=_dumps,
        json_deserializer=orjson.loads,
        connect_args=connect_args,
    )
    sa.event.listen(engine.sync_engine, "checkout", _refuse_closed)
    return engine


def _refuse_closed(dbapi_connection: Any, _record: object, _proxy: object) -> None:
    """A pooled connection the server closed (a restart, a failover, an idle timeout) is
    known to asyncpg without a round trip: the pool drops it and checks out another. This
    stands in for SQLAlchemy's pre-ping, which cost three round trips (BEGIN, `SELECT`,
    ROLLBACK) at every checkout: half of a callback batch's. A connection that dies unseen
    fails its transaction, which the pool then drops (SQLAlchemy's disconnect handling) and
    the asyncpg path retries before its first statement (`store.transactions.driver_write`)."""
    if dbapi_connection.driver_connection.is_closed():
        raise sa.exc.DisconnectionError("the server closed this pooled connection")


def pooling_of(url: str) -> tuple[str, str]:
    """The URL without its `pooling` parameter, and the mode it names (`session` unless it
    names one); any other value is a `ConfigError` in one line."""
    parsed = make_url(url)
    mode = parsed.query.get(POOLING_PARAMETER, "session")
    if mode not in POOLING_MODES:
        raise ConfigError(
            f"{DATABASE_URL_VARIABLE}: {POOLING_PARAMETER} must be one of"
            f" {', '.join(POOLING_MODES)} (got {mode!r})"
        )
    bare = parsed.difference_update_query([POOLING_PARAMETER])
    return bare.render_as_string(hide_password=False), str(mode)


def _asyncpg_url(url: str) -> str:
    """libpq's `sslmode` as asyncpg takes it: its `ssl` argument, which takes the same modes
    (SQLAlchemy gives the URL's parameters to asyncpg's `connect` as they are)."""
    parsed = make_url(url)
    mode = parsed.query.get(SSLMODE_PARAMETER)
    if mode is None:
        return url
    bare = parsed.difference_update_query([SSLMODE_PARAMETER])
    return bare.update_query_dict({"ssl": mode}).render_as_string(hide_password=False)


def _statement_name() -> str:
    """A prepared statement's name, unique across every client of the pooler."""
    return f"__taskledger_{uuid.uuid4().hex}__"


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def sqlite_file(engine: AsyncEngine) -> SqliteFile | None:
    """The file and pragmas of an engine made by `create_engine`; None for anything else."""
    return _FILES.get(engine.sync_engine)


def _sqlite_engine(url: str, synchronous: str, busy_timeout_ms: int) -> AsyncEngine:
    database = make_url(url).database
    if database and database != ":memory:":
        try:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseUnreachable(
                f"{DATABASE_URL_VARIABLE}: cannot create the directory of {database}"
                f" ({_cause(exc)})"
            ) from None
    engine: AsyncEngine  # (the creator below opens connections once it is made)
    engine = create_async_engine(
        url,
        json_serializer=_dumps,
        json_deserializer=orjson.loads,
        pool_size=5,
        max_overflow=5,
        async_creator=lambda: _aiosqlite_connection(engine),
    )
    file = SqliteFile(database or ":memory:", synchronous.upper(), busy_timeout_ms)
    if database and database != ":memory:":
        _FILES[engine.sync_engine] = file

    @sa.event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        file.configure(dbapi_connection)

    @sa.event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        # A writer takes the lock up front (no deadlocking read-to-write upgrade);
        # readers that say so start a deferred transaction and never block writers.
        read_only = connection.get_execution_options().get("taskledger_read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


async def _aiosqlite_connection(engine: AsyncEngine) -> aiosqlite.Connection:
    """An aiosqlite connection to the engine's file, opened as SQLAlchemy opens one, except
    that one that fails to open waits for aiosqlite's thread to end: aiosqlite stops the
    thread without waiting, and a thread that answers after the event loop closed (a process
    that refuses to start, `asyncio.run` returning) prints a traceback of its own."""
    sync = engine.sync_engine
    args, kwargs = sync.dialect.create_connect_args(sync.url)
    connection = aiosqlite.connect(*args, **kwargs)
    thread = connection._thread
    thread.daemon = True  # as SQLAlchemy does: a connection never closed does not hold exit
    try:
        return await connection
    except BaseException:
        await asyncio.shield(asyncio.to_thread(thread.join, START_CHECK_SECONDS))
        raise


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
