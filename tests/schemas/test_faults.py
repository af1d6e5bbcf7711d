"""A database error is reported by what an operator can act on (the disk is full, the file
is read-only, PostgreSQL's error class and SQLSTATE), never by the driver's text, which
may quote a statement's values: these go to logs, 503 answers and `/readyz`."""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from schemas.store.transactions import fault
from tests.support.databases import PG_HOST, PG_PORT, PG_USER


def test_a_write_to_a_read_only_sqlite_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    sqlite3.connect(path).execute("CREATE TABLE t (secret TEXT)").connection.close()
    engine = sa.create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    with pytest.raises(sa.exc.OperationalError) as caught, engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO t VALUES ('hunter2')"))
    engine.dispose()
    assert fault(caught.value) == ("OperationalError: the database is read-only (SQLITE_READONLY)")


def test_a_full_sqlite_database_says_the_disk_is_full(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "ledger.db")
    conn.execute("CREATE TABLE t (body BLOB)")
    conn.execute("PRAGMA max_page_count = 3")  # as full as a disk with no room left
    with pytest.raises(sqlite3.OperationalError) as caught:
        conn.execute("INSERT INTO t VALUES (?)", (b"x" * 100_000,))
    conn.close()
    assert fault(caught.value) == "OperationalError: the disk is full (SQLITE_FULL)"


async def test_a_postgresql_error_names_its_class_and_sqlstate() -> None:
    missing = f"taskledger_missing_{secrets.token_hex(4)}"
    engine = create_async_engine(f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{missing}")
    with pytest.raises(sa.exc.DBAPIError) as caught:
        async with engine.connect():
            pass
    await engine.dispose()
    assert fault(caught.value) == "DBAPIError (InvalidCatalogNameError, SQLSTATE 3D000)"
