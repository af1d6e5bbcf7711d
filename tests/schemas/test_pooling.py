"""The database URL's `pooling` parameter: how a user says PostgreSQL is reached through a
transaction pooler (PgBouncer), and the one line a wrong value gets from every process.
What the mode changes is shown through a real PgBouncer, in tests/e2e/test_pgbouncer.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.database import create_engine, pooling_of
from schemas.errors import ConfigError
from tests.ops.test_first_hour import ENTRY_POINTS, UPGRADE, refusal, service_environ

PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/ledger"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (PG, (PG, "session")),
        (f"{PG}?pooling=session", (PG, "session")),
        (f"{PG}?pooling=transaction", (PG, "transaction")),
        (f"{PG}?pooling=transaction&ssl=require", (f"{PG}?ssl=require", "transaction")),
    ],
    ids=["unset", "session", "transaction", "beside-another-parameter"],
)
def test_the_pooling_parameter_is_taken_off_the_url_and_names_the_mode(
    url: str, expected: tuple[str, str]
) -> None:
    assert pooling_of(url) == expected


@pytest.mark.parametrize("value", ["statement", "TRANSACTION"])
def test_another_pooling_value_is_refused_naming_the_setting_and_the_choices(value: str) -> None:
    with pytest.raises(ConfigError) as refused:
        pooling_of(f"{PG}?pooling={value}")
    assert str(refused.value) == (
        f"TASKLEDGER_DATABASE_URL: pooling must be one of session, transaction (got {value!r})"
    )


def test_transaction_pooling_on_sqlite_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pooling=transaction is for PostgreSQL"):
        create_engine(f"sqlite:///{tmp_path / 'l.db'}?pooling=transaction")


@pytest.mark.parametrize("name", ["web", "reconciler", "relay", "db upgrade"])
def test_a_wrong_pooling_value_is_one_line_and_exit_2(tmp_path: Path, name: str) -> None:
    env = service_environ(tmp_path / "unused.db", DATABASE_URL=f"{PG}?pooling=statement")
    code, line = refusal(ENTRY_POINTS.get(name, UPGRADE), env, tmp_path)
    assert code == 2
    assert line.endswith(
        "TASKLEDGER_DATABASE_URL: pooling must be one of session, transaction (got 'statement')"
    )


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("nonsense", "TASKLEDGER_DATABASE_URL is not a database URL: use sqlite:///"),
        ("mysql://u@host/db", "TASKLEDGER_DATABASE_URL names mysql, which taskledger does not"),
        ("postgresql+psycopg2://u@host/db", "names postgresql+psycopg2, which taskledger"),
    ],
    ids=["not-a-url", "another-database", "a-sync-driver"],
)
@pytest.mark.parametrize("name", ["web", "reconciler", "relay", "db upgrade"])
def test_a_database_url_taskledger_cannot_use_is_one_line_and_exit_2(
    tmp_path: Path, name: str, url: str, says: str
) -> None:
    """Not a traceback from the URL parser or a missing driver: the variable, and what works."""
    env = service_environ(tmp_path / "unused.db", DATABASE_URL=url)
    code, line = refusal(ENTRY_POINTS.get(name, UPGRADE), env, tmp_path)
    assert code == 2
    assert says in line
    assert "Traceback" not in line
