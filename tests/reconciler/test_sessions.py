"""Polls on aiohttp's own session, against real servers on loopback: what its answers and
its failures become (the same as through httpx, tested in `test_clients`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from reconciler.clients import ProviderClient
from reconciler.errors import ProviderUnavailable, RateLimited, Rejected
from reconciler.limits import RateLimiter
from reconciler.retry import RetryPolicy
from reconciler.sessions import AiohttpSession
from schemas.settings import ProviderSettings
from schemas.states import State
from schemas.wire import WireFormat
from tests.support.servers import serve

VIDEO_ID = "video_68d7512d07848190"
STATUS_PATH = f"/v1/videos/{VIDEO_ID}"
READ_TIMEOUT_SECONDS = 0.3
Connection = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def polling(base_url: str) -> AsyncIterator[ProviderClient]:
    """A client whose polls go out on an `AiohttpSession` (one attempt each: no retries)."""
    settings = ProviderSettings(
        "openai", WireFormat.OPENAI, base_url=base_url, api_key="sk-test", concurrency=4
    )
    session = AiohttpSession(4, 5.0, read_timeout_seconds=READ_TIMEOUT_SECONDS)
    async with httpx.AsyncClient() as submits:
        try:
            limiter = RateLimiter.for_provider(settings)
            yield ProviderClient(settings, submits, limiter, RetryPolicy(attempts=1), polls=session)
        finally:
            await session.aclose()


@asynccontextmanager
async def raw_server(connection: Connection) -> AsyncIterator[str]:
    """A TCP server on loopback handling each connection with `connection`; on exit it waits
    for every connection's handler (aiohttp sends a GET again once on a new connection
    after a hang-up)."""
    handlers: list[asyncio.Future[None]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.ensure_future(connection(reader, writer)))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await asyncio.wait_for(asyncio.gather(*handlers), timeout=5)
        await server.wait_closed()


def provider(answer: Callable[[Request], Response]) -> Starlette:
    async def status(request: Request) -> Response:
        return answer(request)

    return Starlette(routes=[Route(STATUS_PATH, status)])


async def test_a_poll_on_aiohttp_reads_the_status_and_sends_the_key() -> None:
    seen: list[str | None] = []

    def answer(request: Request) -> Response:
        seen.append(request.headers.get("authorization"))
        return JSONResponse({"id": VIDEO_ID, "object": "video", "status": "in_progress"})

    async with serve(provider(answer)) as url, polling(url) as client:
        found = await client.fetch_status(VIDEO_ID)
    assert found.observation is not None
    assert (found.observation.state, found.http_status, seen) == (
        State.RUNNING,
        200,
        ["Bearer sk-test"],
    )


async def test_a_poll_on_aiohttp_reads_retry_after_whatever_its_case() -> None:
    def answer(request: Request) -> Response:
        return JSONResponse({"error": {"message": "slow down"}}, 429, {"Retry-After": "7"})

    async with serve(provider(answer)) as url, polling(url) as client:
        with pytest.raises(RateLimited) as limited:
            await client.fetch_status(VIDEO_ID)
    assert limited.value.retry_after_seconds == 7.0


async def test_a_poll_on_aiohttp_does_not_follow_a_redirect() -> None:
    def answer(request: Request) -> Response:
        return RedirectResponse("http://169.254.169.254/latest/meta-data/", 302)

    async with serve(provider(answer)) as url, polling(url) as client:
        with pytest.raises(Rejected) as refused:
            await client.fetch_status(VIDEO_ID)
    assert (refused.value.status_code, refused.value.retryable) == (302, False)


async def test_a_poll_on_aiohttp_that_gets_no_answer_in_time_is_retryable() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.read()  # no answer: wait for the client to give up and hang up
        writer.close()
        await writer.wait_closed()

    async with raw_server(stall) as url, polling(url) as client:
        with pytest.raises(ProviderUnavailable) as unavailable:
            await client.fetch_status(VIDEO_ID)
    assert ("timed out" in str(unavailable.value), unavailable.value.retryable) == (True, True)


async def test_a_poll_on_aiohttp_whose_connection_closes_unanswered_is_retryable() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()
        await writer.wait_closed()

    async with raw_server(hang_up) as url, polling(url) as client:
        with pytest.raises(ProviderUnavailable) as unavailable:
            await client.fetch_status(VIDEO_ID)
    assert ("transport failed" in str(unavailable.value), unavailable.value.retryable) == (
        True,
        True,
    )


async def test_a_poll_on_aiohttp_to_a_base_url_it_cannot_speak_is_refused_for_good() -> None:
    async with polling("ftp://127.0.0.1:21") as client:
        with pytest.raises(Rejected) as refused:
            await client.fetch_status(VIDEO_ID)
    assert ("cannot be sent" in str(refused.value), refused.value.retryable) == (True, False)
