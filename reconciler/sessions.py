"""The HTTP sessions provider calls go out on, each giving back an `Answer` read in full.

Polls take aiohttp's own session: through httpx (its request and response models, cookie
jar, auth and redirect steps, then the transport's conversions) a poll cost about 290 µs
of CPU against 85 µs on aiohttp alone, and polls are most of the reconciler's work.
Submits, and every call when a test gives an `httpx` transport, take an `httpx.AsyncClient`.
Neither catches errors: `reconciler.clients` translates both libraries' errors. What the
libraries raise of their callers' errors (`ValueError`, `OverflowError`) while making a
request, before any answer, leaves as `CannotSend`: only then is it known not to have left.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

import aiohttp
import httpx

# How long a request may wait for a pooled connection, take to connect, or wait between
# reads of its answer.
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 15.0
POOL_TIMEOUT_SECONDS = 5.0
# A whole answer, from sending to its last byte: a provider that drips one (a byte every
# few seconds keeps every read timeout happy) must not hold up a pass.
ANSWER_TOTAL_SECONDS = 30.0
# The most of an answer read: a status or submit answer is a few KiB, and a provider's
# answer of 100 MB must not become 100 MB of the reconciler's memory (each time it polls).
ANSWER_MAX_BYTES = 4 << 20
# The libraries' own errors: `reconciler.clients` reads each of them as it is.
_LIBRARY_ERRORS = (httpx.HTTPError, httpx.InvalidURL, aiohttp.ClientError)
# What the libraries raise of a request their callers got wrong, as Python's own errors: a
# host IDNA cannot encode (`UnicodeError` from the resolver), a header value with a control
# character or outside Latin-1, a port out of range (`OverflowError`, in anyio's group).
_MISMADE = (ValueError, OverflowError)
_T = TypeVar("_T")


class AnswerTooLarge(Exception):
    """The answer's body goes past `ANSWER_MAX_BYTES`: it is not read further."""


class CannotSend(Exception):
    """The request could not be made (built, or its connection opened), for a fault in it:
    nothing of it reached the provider, and the same request will fail the same way. Its
    message is the name of the library's error (whose own message may quote the URL or a
    header), which is its `__cause__`."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A provider's HTTP answer: status, headers (names in any case) and the whole body."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


class Session(Protocol):
    """Sends one request (`json`: a body to send as JSON) and reads its whole answer."""

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], json: object = None
    ) -> Answer: ...


class HttpxSession:
    """An `httpx.AsyncClient` (the caller's: it closes it)."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], json: object = None
    ) -> Answer:
        try:
            request = self._http.build_request(method, url, headers=headers, json=json)
        except _LIBRARY_ERRORS:
            raise
        except Exception as exc:  # nothing is sent before the request is built
            raise CannotSend(type(exc).__name__) from exc
        try:
            async with asyncio.timeout(ANSWER_TOTAL_SECONDS):
                response = await _made(self._http.send(request, stream=True))
                try:
                    body = await _capped(response.headers, response.aiter_bytes())
                finally:
                    await response.aclose()
        except TimeoutError:
            raise httpx.ReadTimeout(_LATE) from None
        return Answer(response.status_code, response.headers, body)


class AiohttpSession:
    """aiohttp's session and pool, closed by `aclose`. As through httpx, redirects are
    answers (not followed) and certificates are checked against httpx's CA bundle; proxy
    variables of the environment are not read (nor were they on the aiohttp transport)."""

    def __init__(
        self,
        pool_size: int,
        keepalive_seconds: float,
        read_timeout_seconds: float = READ_TIMEOUT_SECONDS,
    ) -> None:
        connector = aiohttp.TCPConnector(
            limit=pool_size,
            keepalive_timeout=keepalive_seconds,
            ssl=httpx.create_ssl_context(),
        )
        timeout = aiohttp.ClientTimeout(
            connect=POOL_TIMEOUT_SECONDS + CONNECT_TIMEOUT_SECONDS,
            sock_connect=CONNECT_TIMEOUT_SECONDS,
            sock_read=read_timeout_seconds,
        )
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], json: object = None
    ) -> Answer:
        try:
            async with asyncio.timeout(ANSWER_TOTAL_SECONDS):
                sending = self._session.request(
                    method, url, headers=headers, json=json, allow_redirects=False
                )
                async with await _made(sending) as response:
                    body = await _read_capped(response)
        except TimeoutError:
            raise aiohttp.ServerTimeoutError(_LATE) from None
        return Answer(response.status, response.headers, body)

    async def aclose(self) -> None:
        await self._session.close()


_LATE = f"the answer was not complete within {ANSWER_TOTAL_SECONDS:g} s"


async def _made(sending: Awaitable[_T]) -> _T:
    """`await sending` (a request sent, up to its answer's head); `CannotSend` for an error
    of the request's making (`_MISMADE`, alone or all of an exception group) that is not
    the library's own. Once the head is in, no error is read as one: the body's errors
    come after the provider had the request."""
    try:
        return await sending
    except _LIBRARY_ERRORS:
        raise
    except Exception as exc:
        if _mismade(exc):
            raise CannotSend(_name(exc)) from exc
        raise


def _mismade(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_mismade(inner) for inner in exc.exceptions)
    return isinstance(exc, _MISMADE) and not isinstance(exc, _LIBRARY_ERRORS)


def _name(exc: BaseException) -> str:
    """The error's type name; a group's, its first error's (anyio's `ExceptionGroup`
    around an `OverflowError` is named `OverflowError`)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return type(exc).__name__


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    """`_capped` for aiohttp: an answer whose `Content-Length` is within the cap is read
    whole (aiohttp's parser reads that many bytes and no more), without the chunks' loop;
    unless it is compressed, when that length is not what it inflates to (a few MB of
    gzip can be gigabytes): then its inflated bytes are counted as they come."""
    declared = response.headers.get("content-length", "")
    compressed = response.headers.get("content-encoding", "identity").lower() != "identity"
    if _is_count(declared) and int(declared) <= ANSWER_MAX_BYTES and not compressed:
        return await response.read()
    return await _capped(response.headers, response.content.iter_chunked(1 << 16))


async def _capped(headers: Mapping[str, str], chunks: AsyncIterator[bytes]) -> bytes:
    """The body of `chunks`, refused (`AnswerTooLarge`) past `ANSWER_MAX_BYTES`, at once
    when its `Content-Length` says so."""
    declared = headers.get("content-length", "")
    if _is_count(declared) and int(declared) > ANSWER_MAX_BYTES:
        raise AnswerTooLarge(f"the answer declares {declared} bytes")
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > ANSWER_MAX_BYTES:
            raise AnswerTooLarge(f"the answer goes past {ANSWER_MAX_BYTES} bytes")
    return bytes(body)


def _is_count(text: str) -> bool:
    """ASCII digits only: `str.isdigit` also takes `²` and other digits `int` refuses."""
    return text.isascii() and text.isdigit()
