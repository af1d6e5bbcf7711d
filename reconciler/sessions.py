"""The HTTP sessions provider calls go out on, each giving back an `Answer` read in full.

Polls take aiohttp's own session: through httpx (its request and response models, cookie
jar, auth and redirect steps, then the transport's conversions) a poll cost about 290 µs
of CPU against 85 µs on aiohttp alone, and polls are most of the reconciler's work.
Submits, and every call when a test gives an `httpx` transport, take an `httpx.AsyncClient`.
Neither catches errors: `reconciler.clients` translates both libraries' errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import httpx

# How long a request may wait for a pooled connection, take to connect, or wait between
# reads of its answer.
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 15.0
POOL_TIMEOUT_SECONDS = 5.0


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
        response = await self._http.request(method, url, headers=headers, json=json)
        return Answer(response.status_code, response.headers, response.content)


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
        async with self._session.request(
            method, url, headers=headers, json=json, allow_redirects=False
        ) as response:
            return Answer(response.status, response.headers, await response.read())

    async def aclose(self) -> None:
        await self._session.close()
