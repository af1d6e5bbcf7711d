"""`taskledger endpoints …` and `taskledger notify retry` against a running service, on both
backends: the secret printed once, what each command changes, and errors in one line."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
import structlog

from ops.cli import main
from schemas.ledger import Poll
from schemas.settings import NotifySettings
from schemas.states import State
from schemas.store import AttemptResult, LedgerStore
from schemas.wire import Observation
from tests.conftest import FakeClock
from tests.support.service import ADMIN_TOKEN, Service, running_service, settings_for

LOOPBACK = NotifySettings(allow_http=True, allowed_networks=(ip_network("127.0.0.1/32"),))
HOOK = "http://127.0.0.1:9/hook"
SECRET = re.compile(r"whsec_[A-Za-z0-9+/]{43}=")
DAY = timedelta(days=1)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No `.env` of the repository and no admin token from the caller's environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TASKLEDGER_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("TASKLEDGER_URL", raising=False)


@pytest.fixture
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    """The service, its log lines kept out of the command's output (both print to stdout)."""
    settings = settings_for(database_url, notify=LOOPBACK)
    with structlog.testing.capture_logs():
        async with running_service(settings, clock) as service:
            yield service


class Cli:
    """`taskledger` run beside the service's event loop, its output captured."""

    def __init__(self, service: Service, capsys: pytest.CaptureFixture[str]) -> None:
        self.service = service
        self.capsys = capsys

    async def run(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        connection = ["--url", self.service.base_url, "--token", ADMIN_TOKEN]
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


async def created(cli: Cli, *argv: str) -> dict[str, Any]:
    return dict(await cli.json("endpoints", "create", HOOK, *argv))


def secret_in(out: str) -> str:
    (secret,) = SECRET.findall(out)
    return secret


async def test_create_prints_the_secret_once_and_says_so(cli: Cli) -> None:
    code, out, err = await cli.run(
        "endpoints", "create", HOOK, "--description", "product", "--event", "task.succeeded"
    )
    assert code == 0, err
    secret = secret_in(out)
    assert "only time the service shows this secret" in err
    assert "task.succeeded" in out
    _, listed, _ = await cli.run("endpoints", "list")
    (endpoint_id,) = re.findall(r"ep_[0-9a-f]{24}", listed)
    _, shown, _ = await cli.run("endpoints", "show", endpoint_id)
    for later in (listed, shown):
        assert secret not in later
        assert secret[len("whsec_") + 4 :] not in later
    assert f"{secret[:10]}… (current)" in shown


async def test_create_sends_the_filters_it_was_given(cli: Cli) -> None:
    endpoint = await created(
        cli,
        "--provider",
        "apidot",
        "--owner",
        "team-a",
        "--owner",
        "team-b",
        "--event",
        "task.failed",
        "--include-unconfirmed",
    )
    assert SECRET.fullmatch(endpoint["secret"])
    assert endpoint["providers"] == ["apidot"]
    assert endpoint["owners"] == ["team-a", "team-b"]
    assert endpoint["event_types"] == ["task.failed"]
    assert endpoint["include_unconfirmed"] is True


async def test_a_refused_url_is_one_line_and_exit_1(cli: Cli) -> None:
    code, out, err = await cli.run("endpoints", "create", "http://169.254.169.254/latest")
    assert code == 1
    assert out == ""
    assert err.strip().splitlines() == [
        "taskledger: the service answered 422: url refused:"
        " 169.254.169.254: 169.254.169.254 is a cloud metadata address"
    ]


async def test_list_shows_each_endpoint_with_its_counts(
    cli: Cli, store: LedgerStore, clock: FakeClock
) -> None:
    endpoint = await created(cli)
    await failed_event(cli.service, store, clock)
    _, out, _ = await cli.run("endpoints", "list")
    (row,) = [line for line in out.splitlines() if line.startswith(endpoint["id"])]
    assert row.split()[:7] == [endpoint["id"], "http", HOOK, "enabled,", "failing", "0", "0"]
    listed = await cli.json("endpoints", "list")
    assert listed[0]["health"]["dispatches"] == {"pending": 0, "delivered": 0, "failed": 1}


async def test_show_lists_recent_failures(cli: Cli, store: LedgerStore, clock: FakeClock) -> None:
    endpoint = await created(cli)
    ref = await failed_event(cli.service, store, clock)
    _, out, _ = await cli.run("endpoints", "show", endpoint["id"])
    assert "recent failures" in out
    assert "HTTP 500" in out
    assert ref in out


async def test_update_changes_filters_and_can_drop_them(cli: Cli) -> None:
    endpoint = await created(cli, "--event", "task.failed")
    changed = await cli.json(
        "endpoints", "update", endpoint["id"], "--description", "ends", "--owner", "team-a"
    )
    assert (changed["description"], changed["owners"]) == ("ends", ["team-a"])
    dropped = await cli.json(
        "endpoints", "update", endpoint["id"], "--all-events", "--no-include-unconfirmed"
    )
    assert (dropped["event_types"], dropped["include_unconfirmed"]) == (None, False)
    moved = await cli.json(
        "endpoints", "update", endpoint["id"], "--new-url", "nats://127.0.0.1/taskledger"
    )
    assert moved["kind"] == "nats"


async def test_update_with_nothing_to_change_says_so(cli: Cli) -> None:
    endpoint = await created(cli)
    code, _, err = await cli.run("endpoints", "update", endpoint["id"])
    assert code == 1
    assert "nothing to change" in err


async def test_disable_shows_the_reason_and_enable_clears_it(cli: Cli) -> None:
    endpoint = await created(cli)
    code, out, _ = await cli.run("endpoints", "disable", endpoint["id"])
    assert code == 0
    assert "DISABLED since" in out
    assert "disabled by an operator" in out
    enabled = await cli.json("endpoints", "enable", endpoint["id"])
    assert (enabled["enabled"], enabled["disabled_reason"]) == (True, None)


async def test_delete_removes_the_endpoint(cli: Cli) -> None:
    endpoint = await created(cli)
    code, out, _ = await cli.run("endpoints", "delete", endpoint["id"])
    assert (code, out.strip()) == (0, f"taskledger: deleted endpoint {endpoint['id']}")
    code, _, err = await cli.run("endpoints", "show", endpoint["id"])
    assert (code, err.strip()) == (1, f"taskledger: no endpoint has the id {endpoint['id']}")


async def test_rotate_prints_a_new_secret_and_when_the_old_stops(
    cli: Cli, store: LedgerStore, clock: FakeClock
) -> None:
    endpoint = await created(cli)
    code, out, err = await cli.run("endpoints", "rotate", endpoint["id"], "--grace-seconds", "60")
    assert code == 0
    new = secret_in(out)
    assert new != endpoint["secret"]
    assert "only time the service shows this secret" in err
    stored = await store.endpoint(endpoint["id"])
    assert stored is not None
    assert [s["secret"] for s in stored.secrets] == [new, endpoint["secret"]]
    assert stored.secrets[1]["expires_at"] == (clock() + timedelta(seconds=60)).isoformat()


async def test_recover_requeues_and_warns_of_a_disabled_endpoint(
    cli: Cli, store: LedgerStore, clock: FakeClock
) -> None:
    endpoint = await created(cli)
    since = clock().isoformat()
    await failed_event(cli.service, store, clock)
    await cli.run("endpoints", "disable", endpoint["id"])
    code, out, err = await cli.run("endpoints", "recover", endpoint["id"], "--since", since)
    assert code == 0
    assert "requeued 1 failed event(s)" in out
    assert "is disabled" in err
    assert await cli.json("endpoints", "recover", endpoint["id"], "--since", since) == {
        "requeued": 0
    }


async def test_notify_retry_requeues_a_message(
    cli: Cli, store: LedgerStore, clock: FakeClock
) -> None:
    await created(cli)
    ref = await failed_event(cli.service, store, clock)
    (message,) = await store.messages_of_task(ref)
    code, out, _ = await cli.run("notify", "retry", message["msg_id"])
    assert (code, out.strip()) == (
        0,
        f"taskledger: requeued event {message['msg_id']} for 1 endpoint(s)",
    )
    code, _, err = await cli.run("notify", "retry", "msg_unknown")
    assert (code, err.strip()) == (1, "taskledger: no event has the msg id msg_unknown")


async def test_show_of_a_task_lists_its_events_and_tries(
    cli: Cli, store: LedgerStore, clock: FakeClock
) -> None:
    endpoint = await created(cli)
    ref = await failed_event(cli.service, store, clock)
    code, out, _ = await cli.run("show", ref)
    assert code == 0
    event = next(line for line in out.splitlines() if "event task.running" in line)
    assert f"{endpoint['id']} failed attempts=1 last=500 error=HTTP 500" in event
    tried = next(line for line in out.splitlines() if f"sent to {endpoint['id']}" in line)
    assert "status=500 latency=12ms error=HTTP 500 answer=oops" in tried
    assert out.index("event task.running") < out.index(f"sent to {endpoint['id']}")


async def test_audit_prints_a_disabled_endpoint(cli: Cli) -> None:
    endpoint = await created(cli)
    await cli.run("endpoints", "disable", endpoint["id"])
    code, out, _ = await cli.run("audit")
    assert code == 0
    assert "notifications: 1 endpoint(s), 0 pending, 0 not fanned out yet" in out
    assert f"DISABLED {endpoint['id']} {HOOK} since" in out
    assert "disabled by an operator" in out


async def failed_event(service: Service, store: LedgerStore, clock: FakeClock) -> str:
    """A task that started running; its event failed at every endpoint."""
    task = await service.register("apidot", provider_task_id="t-1")
    observation = Observation("t-1", State.RUNNING, 10)
    await store.ingest([Poll(task["ref"], clock(), None, observation, 200, "{}")])
    await store.fan_out(10)
    for job in await store.claim_dispatches("relay", 10, 30):
        failure = AttemptResult(False, 500, 12.0, "oops", "HTTP 500")
        await store.record_dispatch(job, "relay", failure, DAY)
    return str(task["ref"])
