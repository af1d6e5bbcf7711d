"""The web process's HTTP protocol: uvicorn's httptools protocol, with a deadline for a
request's head.

uvicorn times out a connection idle between requests (`--timeout-keep-alive`), but not
one that has sent no request yet, or only part of its head: such connections stay open as
long as their peer likes, each holding a descriptor (and, under uvicorn's
`--limit-concurrency`, which counts connections, a place every real callback is then
refused). Here a connection must send a whole request head within `HEAD_TIMEOUT_SECONDS`
of opening, and of each new request starting on it (`TASKLEDGER_BODY_TIMEOUT_SECONDS`, as
for its body); else it is answered 408 and closed.

The Procfile's web command names it: `uvicorn … --http receiver.server:HttpProtocol`.
"""

from __future__ import annotations

import asyncio
import math
import os

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from schemas.settings import BODY_TIMEOUT_SECONDS, PREFIX


def _head_timeout() -> float:
    """As long as a request's body may take (`TASKLEDGER_BODY_TIMEOUT_SECONDS`). A value the
    settings refuse is theirs to name (the app exits on it); here it reads as the default."""
    try:
        seconds = float(os.environ.get(f"{PREFIX}BODY_TIMEOUT_SECONDS", BODY_TIMEOUT_SECONDS))
    except ValueError:
        return BODY_TIMEOUT_SECONDS
    return seconds if math.isfinite(seconds) and seconds > 0 else BODY_TIMEOUT_SECONDS


HEAD_TIMEOUT_SECONDS = _head_timeout()
_TIMED_OUT_BODY = b'{"error":"head_timeout","message":"the request head took too long"}'
_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_TIMED_OUT_BODY), _TIMED_OUT_BODY)
)


class HttpProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol`, closing a connection whose request head is late."""

    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(HEAD_TIMEOUT_SECONDS, self._head_late)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_late(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_TIMED_OUT)  # no request of its is being answered
        self.transport.close()
