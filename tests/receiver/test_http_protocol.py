"""The web process's protocol (`receiver.server`), as the Procfile starts it: connections
that send no request, or only part of one, are answered 408 and closed, and do not keep
callbacks out however many they are."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from receiver import app as app_module
from receiver.server import HEAD_MAX_BYTES, HEADERS_MAX
from tests.conftest import FakeClock
from tests.ops.test_first_hour import service_environ
from tests.support.senders import apidot_body
from tests.support.servers import free_port, receiver_process
from tests.support.service import Service, migrate, running_service, settings_for

HEAD_SECONDS = 1
# More idle connections than uvicorn's `--limit-concurrency 2048` (the Procfile's before)
# let through: each used to count as one in flight.
IDLE_CONNECTIONS = 2_100


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[tuple[str, dict[str, str]]]:
    database = tmp_path / "ledger.db"
    env = service_environ(database, BODY_TIMEOUT_SECONDS=str(HEAD_SECONDS))
    await migrate(env["TASKLEDGER_DATABASE_URL"])
    port = free_port()
    async with receiver_process(env, port):
        yield f"http://127.0.0.1:{port}", env


async def answer_to(port: int, sent: bytes) -> bytes:
    """What the server answers a connection that sends `sent` and then nothing, up to its
    closing the connection (bounded: a server that never closes fails the wait)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(sent)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=HEAD_SECONDS * 10)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "sent",
    [b"", b"POST /callbacks/apidot/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le"],
    ids=["nothing", "half-a-head"],
)
async def test_a_late_request_head_is_answered_408_and_closed(
    receiver: tuple[str, dict[str, str]], sent: bytes
) -> None:
    port = int(receiver[0].rsplit(":", 1)[1])
    answer = await answer_to(port, sent)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert answer.endswith(b'"message":"the request head took too long"}')


HEAD_START = b"POST /callbacks/apidot/x HTTP/1.1\r\nHost: 127.0.0.1\r\n"


@pytest.mark.parametrize(
    "head",
    [
        HEAD_START + b"X-Big: " + b"a" * (HEAD_MAX_BYTES + 1),  # unfinished, in many reads
        HEAD_START + b"X-h: v\r\n" * (HEADERS_MAX + 1) + b"Content-Length: 0\r\n\r\n",
    ],
    ids=["bytes", "header-lines"],
)
async def test_a_head_too_large_is_answered_431_and_closed_at_once(
    receiver: tuple[str, dict[str, str]], head: bytes
) -> None:
    """Before the head's timeout (which answers 408), nothing of it kept: a head of small
    headers, fed for the whole timeout, had grown a receiver to 3.7 GB."""
    port = int(receiver[0].rsplit(":", 1)[1])
    answer = await answer_to(port, head)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


async def test_a_head_within_the_bounds_is_served(receiver: tuple[str, dict[str, str]]) -> None:
    port = int(receiver[0].rsplit(":", 1)[1])
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    answer = await answer_to(port, head + b"X-h: v\r\n" * (HEADERS_MAX - 3) + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


async def test_idle_connections_do_not_keep_callbacks_out(
    receiver: tuple[str, dict[str, str]],
) -> None:
    base_url, env = receiver
    port = int(base_url.rsplit(":", 1)[1])
    admin = {"authorization": f"Bearer {env['TASKLEDGER_ADMIN_TOKEN']}"}
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(IDLE_CONNECTIONS)]
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            task = await http.post(
                "/v1/tasks",
                json={"provider": "apidot", "provider_task_id": "t-idle"},
                headers=admin,
            )
            assert task.status_code == 201, task.text
            path = httpx.URL(task.json()["callback_url"]).path
            answer = await http.post(
                path,
                content=apidot_body("t-idle", "running", 10),
                headers={"content-type": "application/json"},
            )
        assert answer.status_code == 200, answer.text
    finally:
        for _, writer in idle:
            writer.close()


async def test_requests_past_the_in_flight_limit_get_503_with_retry_after(
    database_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests being answered are counted by the app (not connections, by uvicorn): past
    the limit, a 503 that says when to come back; below it again, served."""
    monkeypatch.setattr(app_module, "IN_FLIGHT_MAX", 2)
    async with running_service(settings_for(database_url), clock) as service:
        port = int(service.base_url.rsplit(":", 1)[1])
        # A valid token: its body is then read (a forged one is refused before that).
        task = await service.register("apidot", provider_task_id="t-held")
        path = urlsplit(task["callback_url"]).path
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{".encode()
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for _, writer in held:
            writer.write(head)  # a body that never ends: the request stays in flight
            await writer.drain()
        busy = await until_answered(service, lambda r: r.status_code == 503)
        assert busy.headers["retry-after"] == "5"
        assert busy.json()["error"] == "unavailable"
        assert (await service.http.get("/healthz")).status_code == 200  # alive, busy or not
        for _, writer in held:
            writer.close()
        await until_answered(service, lambda r: r.status_code == 200)


async def until_answered(
    service: Service, wanted: Callable[[httpx.Response], bool], within: float = 10
) -> httpx.Response:
    """`GET /readyz` until its answer is `wanted` (bounded)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        answer = await service.http.get("/readyz")
        if wanted(answer) or asyncio.get_running_loop().time() > deadline:
            assert wanted(answer), answer.text
            return answer
        await asyncio.sleep(0.02)
