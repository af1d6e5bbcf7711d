"""A `TASKLEDGER_DATABASE_URL` no process can use, as each entry point meets it: one line on
stderr naming the variable (never the password), no traceback, and the documented exit code
(2 for the setting, 3 for a database that does not answer). And libpq's `sslmode`, taken.
`checked_url` itself is in tests/schemas/test_database_urls.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.migrate import head_revision
from tests.ops.test_first_hour import (
    ENTRY_POINTS,
    TASKLEDGER,
    UPGRADE,
    WEB,
    project,
    refusal,
    run,
    service_environ,
    started,
)
from tests.support.databases import temporary_database
from tests.support.servers import free_fixed_port


def entry_point(name: str) -> list[str]:
    """The command of `name`: a process, `db upgrade`, or `run` (on a port of its own)."""
    if name == "run":
        return [TASKLEDGER, "run", "--port", str(free_fixed_port())]
    return ENTRY_POINTS.get(name, UPGRADE)


def prefix(name: str) -> str:
    """How `name` begins its line."""
    return {"web": "web", "reconciler": "reconciler", "relay": "relay"}.get(name, "taskledger")


@pytest.mark.parametrize("name", ["web", "reconciler", "relay", "db upgrade", "run"])
def test_a_port_outside_the_tcp_range_is_one_line_and_exit_2(tmp_path: Path, name: str) -> None:
    """It was an OverflowError deep in asyncpg's connect: some 140 lines of traceback."""
    url = "postgresql://taskledger:hunter2@127.0.0.1:99999/ledger"
    env = service_environ(tmp_path / "unused.db", DATABASE_URL=url)
    code, line = refusal(entry_point(name), env, project(tmp_path))
    assert (code, line) == (
        2,
        f"{prefix(name)}: TASKLEDGER_DATABASE_URL names port 99999, which is not a TCP port"
        " (1 to 65535)",
    )


@pytest.mark.parametrize("query", ["foo=bar", "sslmode=sometimes"])
@pytest.mark.parametrize("name", ["web", "reconciler", "relay", "db upgrade"])
def test_a_parameter_taskledger_does_not_take_is_one_line_and_exit_2(
    tmp_path: Path, name: str, query: str
) -> None:
    """asyncpg's connect was called with it: a traceback, or in the web process uvicorn's
    "Error loading ASGI app factory", which names no setting."""
    url = f"postgresql://taskledger:hunter2@127.0.0.1:5432/ledger?{query}"
    env = service_environ(tmp_path / "unused.db", DATABASE_URL=url)
    code, line = refusal(entry_point(name), env, tmp_path)
    assert code == 2
    assert line.startswith(f"{prefix(name)}: TASKLEDGER_DATABASE_URL: ")
    assert ("the parameter 'foo' is not one" if query == "foo=bar" else "sslmode must be") in line
    assert "hunter2" not in line


@pytest.mark.parametrize("name", ["web", "reconciler", "relay", "db upgrade"])
def test_an_sslmode_is_taken_and_a_database_that_does_not_answer_is_exit_3(
    tmp_path: Path, name: str
) -> None:
    """Past the setting's check (it is libpq's, and taskledger's), the database is tried."""
    port = free_fixed_port()
    url = f"postgresql://taskledger:hunter2@127.0.0.1:{port}/ledger?sslmode=require"
    env = service_environ(tmp_path / "unused.db", DATABASE_URL=url, SPOOL_ENABLED="false")
    code, line = refusal(entry_point(name), env, tmp_path)
    assert code == 3
    assert f"TASKLEDGER_DATABASE_URL: cannot reach postgresql://127.0.0.1:{port}/ledger (" in line
    assert "hunter2" not in line


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("web", "sqlite+aiosqlite:///:memory:"),
        ("web", "sqlite://"),
        ("db upgrade", "sqlite:///:memory:"),
        ("db upgrade", "sqlite://"),
        ("reconciler", "sqlite:///:memory:"),
        ("relay", "sqlite+aiosqlite://"),
    ],
)
def test_an_in_memory_sqlite_database_is_one_line_and_exit_2(
    tmp_path: Path, name: str, url: str
) -> None:
    """create_engine crashed (a pool that takes no size), or each process had its own."""
    env = service_environ(tmp_path / "unused.db", DATABASE_URL=url)
    code, line = refusal(entry_point(name), env, tmp_path)
    assert code == 2
    assert line.startswith(
        f"{prefix(name)}: TASKLEDGER_DATABASE_URL names an in-memory SQLite database"
    )


def test_a_sqlite_file_that_does_not_open_is_one_line_every_time(tmp_path: Path) -> None:
    """aiosqlite's thread outlived the failed connect, and its traceback ("Event loop is
    closed") came before the one line in most runs of the web process (the reconciler and
    the relay share the cause: tests/schemas/test_database_urls.py shows it every time, so
    three starts here are the end-to-end look, not the proof)."""
    env = service_environ(tmp_path)  # a directory: SQLite cannot open it
    said = (
        f"web: TASKLEDGER_DATABASE_URL: cannot reach sqlite+aiosqlite:///{tmp_path}"
        " (OperationalError: unable to open database file)"
    )
    for _ in range(3):
        assert refusal(WEB, env, tmp_path) == (3, said)


async def test_a_url_with_an_sslmode_upgrades_and_serves(tmp_path: Path) -> None:
    """`sslmode` was handed to asyncpg's connect, which takes no such argument."""
    async with temporary_database("postgresql", tmp_path) as url:
        given = f"{url}?sslmode=disable".replace("postgresql+asyncpg://", "postgresql://")
        env = service_environ(tmp_path / "unused.db", DATABASE_URL=given, SPOOL_ENABLED="false")
        upgraded = run(UPGRADE, env, tmp_path)
        assert upgraded.returncode == 0, upgraded.stderr
        database = url.rpartition("@")[2]
        assert upgraded.stdout == (
            f"taskledger: upgraded postgresql://{database} from migration none to"
            f" {head_revision()}\n"
        )
        port = free_fixed_port()
        with started([*WEB[:-1], str(port)], env, tmp_path, port) as web:
            assert web.process.poll() is None  # ready: it answered /readyz with 200
