"""`taskledger run` checks every setting of web, reconciler and relay before it migrates or
starts anything: a bad one is one line naming the variable and exit 2, never each process's
line and then "stopped the others". So does `taskledger db prune` for what it reads; and
each process names its database the same way, without its user."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

import pytest

from schemas.database import describe
from tests.ops.test_first_hour import (
    TASKLEDGER,
    base_environ,
    project,
    refusal,
    service_environ,
)
from tests.support.databases import temporary_database
from tests.support.servers import free_fixed_port
from tests.support.service import migrate
from tests.support.waiting import until

START_SECONDS = 60.0
# A whsec_ secret that base64 cannot read (29 characters: one more than a multiple of 4).
UNREADABLE_WHSEC = "whsec_" + "Q" * 29


def refused_run(tmp_path: Path, *args: str, **settings: str) -> str:
    """The one line `taskledger run` refuses `settings` with (exit 2), having written
    nothing: no database, no migration, no process started."""
    database = tmp_path / "l.db"
    env = service_environ(database, **settings)
    command = [TASKLEDGER, "run", "--port", str(free_fixed_port()), *args]
    code, line = refusal(command, env, project(tmp_path))
    assert code == 2, line
    assert not database.exists()  # refused before the database was migrated
    return line


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        (
            {"ARCHIVE_URL": "gs://bucket"},
            "TASKLEDGER_ARCHIVE_URL must be s3://bucket[/prefix], file:///dir, a directory"
            " path or off (got 'gs://bucket')",
        ),
        ({"ARCHIVE_URL": "s3://"}, "TASKLEDGER_ARCHIVE_URL must name a bucket"),
        (
            {"PROVIDERS": "apidot,fal"},
            "TASKLEDGER_PROVIDER_FAL_WEBHOOK_USER_ID is required",
        ),
        (
            {"PROVIDER_APIDOT_MEDIA_HOSTS": "cdn.example.com,http://x/"},
            "TASKLEDGER_PROVIDER_APIDOT_MEDIA_HOSTS must be host names like cdn.example.com",
        ),
        (
            {"ARCHIVE_URL": "./var/media", "ARCHIVE_PRESIGN": "true"},
            "TASKLEDGER_ARCHIVE_PRESIGN is for an S3 archive",
        ),
    ],
    ids=[
        "archive-another-scheme",
        "archive-no-bucket",
        "fal-without-user-id",
        "media-host-a-url",
        "presign-a-local-archive",
    ],
)
def test_a_bad_setting_of_any_process_is_one_line_before_anything_starts(
    tmp_path: Path, settings: dict[str, str], says: str
) -> None:
    assert refused_run(tmp_path, **settings).startswith(f"taskledger: {says}")


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        (
            {"ARCHIVE_URL": "s3://bucket/p", "ARCHIVE_SPOOL_DIR": "{file}/spool"},
            "TASKLEDGER_ARCHIVE_SPOOL_DIR: cannot use {file}/spool",
        ),
        (
            {"PROMETHEUS_MULTIPROC_DIR": "{file}"},
            "PROMETHEUS_MULTIPROC_DIR: {file} is not a directory",
        ),
    ],
    ids=["archive-spool-under-a-file", "metrics-directory-a-file"],
)
def test_a_directory_setting_naming_a_file_is_one_line_before_anything_starts(
    tmp_path: Path, settings: dict[str, str], says: str
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    settings = {name: value.format(file=afile) for name, value in settings.items()}
    prometheus = settings.pop("PROMETHEUS_MULTIPROC_DIR", None)
    database = tmp_path / "l.db"
    env = service_environ(database, **settings)
    if prometheus is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = prometheus
    command = [TASKLEDGER, "run", "--port", str(free_fixed_port())]
    code, line = refusal(command, env, project(tmp_path))
    assert (code, line.startswith("taskledger: " + says.format(file=afile))) == (2, True), line
    assert not database.exists()


def test_several_workers_on_sqlite_are_refused_naming_the_option(tmp_path: Path) -> None:
    line = refused_run(tmp_path, "--workers", "2")
    assert line.startswith("taskledger: --workers 2: SQLite takes one writer per file")


def test_several_workers_on_sqlite_are_refused_naming_web_concurrency(tmp_path: Path) -> None:
    database = tmp_path / "l.db"
    env = service_environ(database) | {"WEB_CONCURRENCY": "3"}
    code, line = refusal(
        [TASKLEDGER, "run", "--port", str(free_fixed_port())], env, project(tmp_path)
    )
    assert (code, line.split(":")[:2]) == (2, ["taskledger", " WEB_CONCURRENCY=3"])
    assert not database.exists()


def test_a_size_too_large_says_its_limit_in_bytes_people_read(tmp_path: Path) -> None:
    assert refused_run(tmp_path, MAX_BODY_BYTES="1e30") == (
        "taskledger: TASKLEDGER_MAX_BODY_BYTES must be at most 1 PiB, 1125899906842624 bytes"
        " (got '1e30')"
    )


def test_a_whsec_secret_that_is_not_base64_says_so_in_words_without_the_secret(
    tmp_path: Path,
) -> None:
    line = refused_run(
        tmp_path, PROVIDERS="openai", PROVIDER_OPENAI_WEBHOOK_SECRETS=UNREADABLE_WHSEC
    )
    assert line == (
        "taskledger: TASKLEDGER_PROVIDER_OPENAI_WEBHOOK_SECRETS: a whsec_ secret must be"
        " base64 after the prefix (as the provider shows it)"
    )
    assert UNREADABLE_WHSEC.removeprefix("whsec_") not in line


@pytest.mark.parametrize("dry_run", [["--dry-run"], []], ids=["dry-run", "for-real"])
def test_db_prune_refuses_an_archive_it_could_not_open_before_pruning(
    tmp_path: Path, dry_run: list[str]
) -> None:
    database = tmp_path / "l.db"
    env = base_environ(DATABASE_URL=f"sqlite:///{database}", ARCHIVE_URL="gs://bucket")
    code, line = refusal([TASKLEDGER, "db", "prune", *dry_run], env, tmp_path)
    assert code == 2
    assert line.startswith("taskledger: TASKLEDGER_ARCHIVE_URL must be s3://bucket[/prefix]")
    assert not database.exists()  # nothing was read, nothing pruned


async def test_the_relay_names_its_database_as_the_others_do_without_its_user(
    tmp_path: Path,
) -> None:
    async with temporary_database("postgresql", tmp_path) as url:
        await migrate(url)
        log = tmp_path / "relay.log"
        env = service_environ(tmp_path / "unused.db", DATABASE_URL=url)
        with log.open("wb") as out:
            relay = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "reconciler.relay",
                env=env,
                cwd=tmp_path,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        try:
            await until(lambda: '"event":"relay_started"' in log.read_text(), START_SECONDS)
        finally:
            with contextlib.suppress(ProcessLookupError):
                relay.terminate()
            await asyncio.wait_for(relay.wait(), START_SECONDS)
    (line,) = [line for line in log.read_text().splitlines() if "relay_started" in line]
    assert f'"database":"{describe(url)}"' in line
    assert "@" not in line
