"""Settings that used to pass start-up and fail later, through the real entry points: one
line on stderr naming the variable, exit 2, no traceback. The rest of each refusal is
checked at unit level (`tests/schemas/test_settings_refusals.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ops.test_first_hour import (
    ENTRY_POINTS,
    TASKLEDGER,
    project,
    refusal,
    service_environ,
)
from tests.support.servers import free_fixed_port

UNREACHABLE = "postgresql://taskledger@127.0.0.1:{port}/ledger"


@pytest.mark.parametrize(
    ("name", "variable"),
    [
        ("web", "TASKLEDGER_RECONCILER_METRICS_PORT"),
        ("reconciler", "TASKLEDGER_RECONCILER_METRICS_PORT"),
        ("relay", "TASKLEDGER_NOTIFY_METRICS_PORT"),
    ],
)
def test_a_metrics_port_of_a_superscript_digit_is_one_line_and_exit_2(
    tmp_path: Path, name: str, variable: str
) -> None:
    env = service_environ(tmp_path / "unused.db") | {variable: "²"}
    code, line = refusal(ENTRY_POINTS[name], env, tmp_path)
    assert (code, line) == (2, f"{name}: {variable} must be a TCP port number (got '²')")


@pytest.mark.parametrize("variable", ["PORT", "WEB_CONCURRENCY"])
def test_run_with_a_superscript_digit_is_one_line_and_exit_2(tmp_path: Path, variable: str) -> None:
    env = service_environ(tmp_path / "l.db") | {variable: "²"}
    code, line = refusal([TASKLEDGER, "run"], env, project(tmp_path))
    assert code == 2
    assert line.startswith(f"taskledger: {variable} must be ")
    assert not (tmp_path / "l.db").exists()  # refused before anything started


def test_a_receiver_whose_spool_directory_is_a_file_is_one_line_and_exit_2(
    tmp_path: Path,
) -> None:
    """It used to start (PostgreSQL down, the spool on), say `spooling` on /readyz, and
    answer every callback 503."""
    blocker = tmp_path / "spool"
    blocker.write_text("a file")
    url = UNREACHABLE.format(port=free_fixed_port())
    env = service_environ(tmp_path / "unused.db", DATABASE_URL=url, SPOOL_DIR=str(blocker))
    code, line = refusal(ENTRY_POINTS["web"], env, tmp_path)
    assert code == 2
    assert line.startswith(f"web: TASKLEDGER_SPOOL_DIR: cannot use {blocker} (")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TASKLEDGER_PROVIDER_APIDOT_BASE_URL", "http://a..b"),
        ("TASKLEDGER_PROVIDER_APIDOT_API_KEY", "sk-a\x01b"),
    ],
    ids=["empty-host-label", "control-character-in-key"],
)
def test_a_provider_setting_its_first_poll_would_fail_on_is_one_line_and_exit_2(
    tmp_path: Path, variable: str, value: str
) -> None:
    """On a database not migrated: the setting is refused first (it used to be exit 3)."""
    env = service_environ(tmp_path / "empty.db") | {variable: value}
    code, line = refusal(ENTRY_POINTS["reconciler"], env, tmp_path)
    assert code == 2
    assert line.startswith(f"reconciler: {variable} must ")
