"""`taskledger keys create|list|revoke` against a running service, on both backends: the key
printed once, listed by prefix after, revoked for good; errors in one line."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from ops.cli import main
from tests.conftest import FakeClock
from tests.support.service import ADMIN_TOKEN, Service, running_service, settings_for

KEY = re.compile(r"tlk_([0-9a-f]{16})_[A-Za-z0-9]{40}")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No `.env` of the repository and no admin token from the caller's environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TASKLEDGER_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("TASKLEDGER_URL", raising=False)


@pytest.fixture
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    """The service, its log lines kept out of the command's output (both print to stdout)."""
    with structlog.testing.capture_logs():
        async with running_service(settings_for(database_url), clock) as service:
            yield service


class Cli:
    """`taskledger` run beside the service's event loop, its output captured."""

    def __init__(self, service: Service, capsys: pytest.CaptureFixture[str]) -> None:
        self.service = service
        self.capsys = capsys

    async def run(self, *argv: str, token: str = ADMIN_TOKEN) -> tuple[int, str, str]:
        self.capsys.readouterr()
        connection = ["--url", self.service.base_url, "--token", token]
        code = await asyncio.to_thread(main, [*argv, *connection])
        out, err = self.capsys.readouterr()
        return code, out, err

    async def json(self, *argv: str) -> Any:
        code, out, err = await self.run(*argv, "--json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def cli(service: Service, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(service, capsys)


async def test_create_prints_the_key_once_and_says_so(cli: Cli) -> None:
    code, out, err = await cli.run("keys", "create", "ci reader", "--scope", "read")
    assert code == 0, err
    (match,) = KEY.finditer(out)
    assert "only time the service shows this key" in err
    _, listed, _ = await cli.run("keys", "list")
    assert match.group(0) not in listed
    assert f"tlk_{match.group(1)}_…" in listed
    assert "ci reader" in listed


async def test_create_sends_the_scope_and_owner(cli: Cli) -> None:
    created = await cli.json("keys", "create", "team-a writer", "--scope", "write", "--owner", "a")
    assert (created["scope"], created["owner"], created["name"]) == ("write", "a", "team-a writer")
    assert KEY.fullmatch(created["key"])


async def test_a_created_key_works_with_the_console_until_revoked(cli: Cli) -> None:
    created = await cli.json("keys", "create", "reader", "--scope", "read")
    code, _, err = await cli.run("tasks", token=created["key"])
    assert code == 0, err
    revoked = await cli.json("keys", "revoke", created["id"])
    assert revoked["revoked_at"] is not None
    code, _, err = await cli.run("tasks", token=created["key"])
    assert code == 1
    assert "401" in err


async def test_a_read_key_cannot_make_keys(cli: Cli) -> None:
    reader = await cli.json("keys", "create", "reader", "--scope", "read")
    code, out, err = await cli.run("keys", "create", "x", "--scope", "admin", token=reader["key"])
    assert (code, out) == (1, "")
    assert err.strip().splitlines() == [
        "taskledger: the service answered 403: this needs the admin scope; the key has read"
    ]


async def test_revoking_an_unknown_key_is_one_line_and_exit_1(cli: Cli) -> None:
    code, out, err = await cli.run("keys", "revoke", "0123456789abcdef")
    assert (code, out) == (1, "")
    assert err.strip().splitlines() == ["taskledger: no key has the id 0123456789abcdef"]


async def test_an_admin_key_limited_to_an_owner_is_refused_in_one_line(cli: Cli) -> None:
    code, _, err = await cli.run("keys", "create", "x", "--scope", "admin", "--owner", "a")
    assert code == 1
    assert "an admin key sees every owner" in err
