"""`TASKLEDGER_DATABASE_URL` as `checked_url` takes it: a TCP port, a SQLite file (not memory),
and on PostgreSQL only the parameters taskledger knows, libpq's `sslmode` among them (given to
asyncpg as its `ssl`). Everything else is one line naming the variable, never the password.
What each process does with these is in tests/ops/test_database_url_refusals.py."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from schemas.clock import utc_now
from schemas.database import checked_url, create_engine, reachable_revision
from schemas.errors import ConfigError, DatabaseUnreachable
from schemas.store import LedgerStore
from tests.support.databases import temporary_database

PG = "postgresql://taskledger:hunter2@db.example.com:5432/ledger"
# libpq's modes, as its documentation lists them.
SSL_MODES = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


def refused(url: str) -> str:
    """The one line `checked_url` refuses `url` with (and it names no password)."""
    with pytest.raises(ConfigError) as refusal:
        checked_url(url)
    line = str(refusal.value)
    assert "\n" not in line
    assert "hunter2" not in line
    return line


# -- ports ------------------------------------------------------------------------------


@pytest.mark.parametrize("port", [0, 65536, 99999])
def test_a_port_outside_the_tcp_range_is_refused_naming_the_variable(port: int) -> None:
    """asyncpg's connect died of an OverflowError, in a traceback of some 140 lines."""
    assert refused(f"postgresql://taskledger:hunter2@127.0.0.1:{port}/ledger") == (
        f"TASKLEDGER_DATABASE_URL names port {port}, which is not a TCP port (1 to 65535)"
    )
    for edge in (1, 65535):  # the range's own ends are taken
        url = f"postgresql://taskledger:hunter2@127.0.0.1:{edge}/ledger"
        assert checked_url(url) == url


# -- SQLite in memory -------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///",
        "sqlite:///:memory:",
        "sqlite+aiosqlite://",
        "sqlite+aiosqlite:///:memory:",
        "sqlite:///file::memory:?uri=true",
        "sqlite:///ledger?mode=memory&uri=true",
    ],
)
def test_an_in_memory_sqlite_database_is_refused(url: str) -> None:
    """It keeps nothing, and the receiver and the reconciler would each have their own."""
    assert refused(url) == (
        "TASKLEDGER_DATABASE_URL names an in-memory SQLite database, which keeps nothing and"
        " which the receiver and the reconciler cannot share: name a file, as in"
        " sqlite:///path/to/ledger.db"
    )
    for file in ("sqlite:///./var/taskledger.db", "sqlite+aiosqlite:////srv/ledger/l.db"):
        assert checked_url(file) == file


# -- PostgreSQL's parameters ------------------------------------------------------------


@pytest.mark.parametrize("mode", SSL_MODES)
async def test_each_sslmode_is_taken_and_given_to_asyncpg_as_its_ssl(mode: str) -> None:
    url = f"{PG}?sslmode={mode}&pooling=transaction"
    assert checked_url(url) == url
    assert checked_url(f"{PG}?ssl={mode}") == f"{PG}?ssl={mode}"  # asyncpg's name for it
    engine = create_engine(url)  # (connects to nothing until used)
    try:
        _, given = engine.sync_engine.dialect.create_connect_args(engine.sync_engine.url)
    finally:
        await engine.dispose()
    assert given["ssl"] == mode  # what asyncpg's `connect` is called with
    assert "sslmode" not in given
    assert "pooling" not in given


@pytest.mark.parametrize("name", ["sslmode", "ssl"])
@pytest.mark.parametrize("value", ["bogus", "REQUIRE", "true"])
def test_another_ssl_mode_is_refused_naming_the_parameter_and_the_modes(
    name: str, value: str
) -> None:
    assert refused(f"{PG}?{name}={value}") == (
        f"TASKLEDGER_DATABASE_URL: {name} must be one of disable, allow, prefer, require,"
        f" verify-ca, verify-full (got {value!r})"
    )


@pytest.mark.parametrize(
    "query",
    [
        "foo=bar",
        "password=hunter2",
        "SSLMODE=require",
        "sslrootcert=/etc/ssl/root.crt",
        "connect_timeout=5",
        "pooling=transaction&application_name=hunter2",
    ],
)
def test_a_parameter_taskledger_does_not_take_is_refused_naming_it_not_its_value(
    query: str,
) -> None:
    """asyncpg's connect took it as an argument it does not have: a traceback (or, in the
    web process, uvicorn's "Error loading ASGI app factory" naming no setting)."""
    name = query.rpartition("&")[2].partition("=")[0]
    assert refused(f"{PG}?{query}") == (
        f"TASKLEDGER_DATABASE_URL: the parameter {name!r} is not one taskledger takes (it takes"
        " pooling, sslmode, ssl, host)"
    )


def test_a_parameter_given_twice_is_refused() -> None:
    assert refused(f"{PG}?sslmode=require&sslmode=disable") == (
        "TASKLEDGER_DATABASE_URL: the parameter 'sslmode' is given twice"
    )


def test_sslmode_and_ssl_together_are_refused() -> None:
    assert refused(f"{PG}?sslmode=require&ssl=require") == (
        "TASKLEDGER_DATABASE_URL: give sslmode or ssl, not both (they are one setting)"
    )


def test_the_host_parameter_takes_the_servers_socket_directory() -> None:
    url = "postgresql://postgres@/ledger?host=/var/run/postgresql"
    assert checked_url(url) == url
    assert refused("postgresql://postgres:hunter2@/ledger?host=db.example.com:5432").startswith(
        "TASKLEDGER_DATABASE_URL: the parameter 'host' takes the directory of the server's socket"
    )


# -- connecting -------------------------------------------------------------------------


async def _show(url: str) -> tuple[bool, str]:
    """Whether this session is encrypted, and the server's `ssl` setting."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            encrypted = (
                await conn.execute(
                    sa.text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                )
            ).scalar_one()
            server = (await conn.execute(sa.text("SHOW ssl"))).scalar_one()
    finally:
        await engine.dispose()
    return bool(encrypted), str(server)


@pytest.mark.parametrize("mode", ["disable", "prefer"])
async def test_a_url_with_an_sslmode_connects_to_postgresql(tmp_path: Path, mode: str) -> None:
    async with temporary_database("postgresql", tmp_path) as url:
        encrypted, server = await _show(checked_url(f"{url}?sslmode={mode}"))
    if mode == "disable":
        assert not encrypted
    else:  # TLS when the server offers it
        assert encrypted == (server == "on")


async def test_sslmode_require_takes_tls_or_nothing(tmp_path: Path) -> None:
    """The mode reaches asyncpg: `require` on a server without TLS does not connect."""
    async with temporary_database("postgresql", tmp_path) as url:
        _, server = await _show(url)
        required = checked_url(f"{url}?sslmode=require")
        if server == "on":
            assert await _show(required) == (True, "on")
            return
        engine = create_engine(required)
        store = LedgerStore(engine, utc_now)
        try:
            with pytest.raises(DatabaseUnreachable, match="rejected SSL upgrade"):
                await reachable_revision(store.ping, required)
        finally:
            await store.close()
            await engine.dispose()


def _aiosqlite_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if "_connection_worker_thread" in t.name}


async def test_a_sqlite_file_that_does_not_open_leaves_no_driver_thread_running(
    tmp_path: Path,
) -> None:
    """aiosqlite stops its thread after a failed connect without waiting for it: a process
    that then refused to start closed its event loop while the thread still answered it, and
    printed that thread's traceback before its one line."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}")  # a directory: does not open
    before = _aiosqlite_threads()
    try:
        with pytest.raises(sa.exc.OperationalError, match="unable to open database file"):
            async with engine.connect():
                pass
        assert [t for t in _aiosqlite_threads() - before if t.is_alive()] == []
    finally:
        await engine.dispose()
