"""A provider's answer is bounded in time and size on both sessions (polls: aiohttp;
submits: httpx): one that drips a byte at a time, or sends 100 MB, must not hold up a
pass or fill the reconciler's memory. Against a real server on loopback."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import httpx
import pytest

from reconciler import sessions
from reconciler.sessions import AiohttpSession, AnswerTooLarge, HttpxSession, Session

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
Behaviour = Callable[[asyncio.StreamWriter], Awaitable[None]]


async def drip(writer: asyncio.StreamWriter) -> None:
    writer.write(HEAD + b"content-length: 1000\r\n\r\n")
    for _ in range(1000):  # bounded: 1 byte each 50 ms, far past the test's deadline
        writer.write(b" ")
        await writer.drain()
        await asyncio.sleep(0.05)


async def declared_huge(writer: asyncio.StreamWriter) -> None:
    writer.write(HEAD + b"content-length: %d\r\n\r\n{" % (sessions.ANSWER_MAX_BYTES + 1))
    await writer.drain()


async def endless(writer: asyncio.StreamWriter) -> None:
    writer.write(HEAD + b"transfer-encoding: chunked\r\n\r\n")
    chunk = b" " * 65536
    for _ in range(sessions.ANSWER_MAX_BYTES // len(chunk) + 8):  # bounded: past the cap
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()
    writer.write(b"0\r\n\r\n")


async def compressed_bomb(writer: asyncio.StreamWriter) -> None:
    """A few KB of gzip, its length declared, inflating to four times the cap."""
    body = gzip.compress(b" " * (sessions.ANSWER_MAX_BYTES * 4))
    writer.write(HEAD + b"content-encoding: gzip\r\ncontent-length: %d\r\n\r\n" % len(body))
    writer.write(body)
    await writer.drain()


@pytest.fixture
async def session_kind(request: pytest.FixtureRequest) -> AsyncIterator[Session]:
    if request.param == "aiohttp":
        session = AiohttpSession(pool_size=4, keepalive_seconds=5)
        yield session
        await session.aclose()
    else:
        async with httpx.AsyncClient() as http:
            yield HttpxSession(http)


async def served(behaviour: Behaviour) -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        try:
            await behaviour(writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/status"


@pytest.mark.parametrize("session_kind", ["aiohttp", "httpx"], indirect=True)
async def test_an_answer_that_drips_ends_at_its_deadline(
    session_kind: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sessions, "ANSWER_TOTAL_SECONDS", 0.5)
    server, url = await served(drip)
    async with server:
        started = asyncio.get_running_loop().time()
        with pytest.raises((aiohttp.ServerTimeoutError, httpx.ReadTimeout)):
            await asyncio.wait_for(session_kind.request("GET", url, {}), timeout=10)
        assert asyncio.get_running_loop().time() - started < 5


@pytest.mark.parametrize("session_kind", ["aiohttp", "httpx"], indirect=True)
@pytest.mark.parametrize(
    "behaviour",
    [declared_huge, endless, compressed_bomb],
    ids=["declared", "endless", "compressed"],
)
async def test_an_answer_past_the_cap_is_not_read_further(
    session_kind: Session, behaviour: Behaviour
) -> None:
    server, url = await served(behaviour)
    async with server:
        with pytest.raises(AnswerTooLarge):
            await asyncio.wait_for(session_kind.request("GET", url, {}), timeout=30)


async def declared_then_held(writer: asyncio.StreamWriter) -> None:
    """Two bytes declared and sent, the connection then held open (bounded: 20 s)."""
    writer.write(HEAD + b"content-length: 2\r\n\r\n{}")
    await writer.drain()
    await asyncio.sleep(20)


@pytest.mark.parametrize("session_kind", ["aiohttp", "httpx"], indirect=True)
async def test_an_answer_is_read_as_far_as_it_declares_without_waiting_for_more(
    session_kind: Session,
) -> None:
    server, url = await served(declared_then_held)
    async with server:
        started = asyncio.get_running_loop().time()
        answer = await asyncio.wait_for(session_kind.request("GET", url, {}), timeout=30)
        assert asyncio.get_running_loop().time() - started < 5
    assert answer.content == b"{}"
