"""The web process's HTTP protocol: uvicorn's httptools protocol, with a deadline for a
request's head.

uvicorn times out a connection idle between requests (`--timeout-keep-alive`), but not
one that has sent no request yet, or only part of its head: such connections stay open as
long as their peer likes, each holding a descriptor (and, under uvicorn's
`--limit-concurrency`, which counts connections, a place every real callback is then
refused). Here a connection must send a whole request head within `HEAD_TIMEOUT_SECONDS`
of opening, and of each new request starting on it (`TASKLEDGER_BODY_TIMEOUT_SECONDS`, as
for its body); else it is answered 408 and closed. A head past `HEAD_MAX_BYTES` or
`HEADERS_MAX` header lines is answered 431 and closed.

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
# A request head's bound, in bytes and in header lines: past it, 431 and the connection
# closed. Neither httptools nor uvicorn has one: a head of small headers fed for the head
# timeout grew a receiver to 3.7 GB, and one long header's value, joined at every read,
# held the event loop for seconds. A read is at most 256 KiB (uvloop's buffer), so one
# that ends a body and starts a pipelined head never counts past this alone.
HEAD_MAX_BYTES = 512 * 1024
HEADERS_MAX = 256
_TIMED_OUT_BODY = b'{"error":"head_timeout","message":"the request head took too long"}'
_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_TIMED_OUT_BODY), _TIMED_OUT_BODY)
)


_TOO_LARGE_BODY = b'{"error":"head_too_large","message":"the request head is too large"}'
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_TOO_LARGE_BODY), _TOO_LARGE_BODY)
)


class HttpProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol`, closing a connection whose request head is late (408) or too
    large (431)."""

    _head_deadline: asyncio.TimerHandle | None = None
    _head_bytes = 0
    _head_refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._head_refused:
            return  # answered 431: nothing more is read
        super().data_received(data)
        if self._head_deadline is not None:  # a head still being read: its bytes count
            self._head_bytes += len(data)
            if self._head_bytes > HEAD_MAX_BYTES:
                self._refuse_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        if len(self.headers) > HEADERS_MAX:
            self._refuse_head()
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._head_refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._head_refused:
            super().on_message_complete()

    def _refuse_head(self) -> None:
        self._head_refused = True
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(_TOO_LARGE)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_deadline is None:
            self._head_bytes = 0
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
