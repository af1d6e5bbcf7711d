"""Slow-body and many-connection clients do not starve the senders that behave."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from tests.conftest import FakeClock
from tests.support.senders import apidot_body
from tests.support.service import Service, running_service, settings_for

JSON = {"content-type": "application/json"}


@pytest.fixture
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    settings = settings_for(database_url, body_timeout_seconds=1.0)
    async with running_service(settings, clock) as service:
        yield service


async def stalled_request(base_url: str, path: str) -> bytes:
    """Headers promise 500 bytes, 10 arrive, then nothing: the answer the server gives."""
    url = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        "Content-Type: application/json\r\nContent-Length: 500\r\n\r\n"
    )
    writer.write(head.encode() + b'{"code": 2')
    await writer.drain()
    try:
        async with asyncio.timeout(10):
            return await reader.readline()
    finally:
        writer.close()


async def test_stalled_body_gets_408_while_others_are_served(service: Service) -> None:
    task = await service.register("apidot", provider_task_id="t-slow")
    path = urlsplit(task["callback_url"]).path
    stalled = [asyncio.create_task(stalled_request(service.base_url, path)) for _ in range(20)]
    await asyncio.sleep(0.1)
    body = apidot_body("t-slow", "running", 10)
    answers = [await service.http.post(path, content=body, headers=JSON) for _ in range(5)]
    assert [a.status_code for a in answers] == [200] * 5
    lines = await asyncio.gather(*stalled)
    assert {line.split(b" ")[1] for line in lines} == {b"408"}


async def test_a_forged_token_is_refused_without_waiting_for_its_body(service: Service) -> None:
    task = await service.register("apidot", provider_task_id="t-forged")
    path = urlsplit(task["callback_url"]).path
    forged = path.rsplit("/", 1)[0] + "/" + "x" * 40
    # The body never completes: read first, it would be answered 408 at the body deadline.
    line = await stalled_request(service.base_url, forged)
    assert line.split(b" ")[1] == b"401", line


async def test_many_idle_connections_do_not_block_a_sender(service: Service) -> None:
    url = urlsplit(service.base_url)
    idle = [await asyncio.open_connection(url.hostname, url.port) for _ in range(200)]
    try:
        task = await service.register("apidot", provider_task_id="t-idle")
        path = urlsplit(task["callback_url"]).path
        answer = await service.http.post(
            path, content=apidot_body("t-idle", "running", 5), headers=JSON
        )
        assert answer.status_code == 200
    finally:
        for _, writer in idle:
            writer.close()
