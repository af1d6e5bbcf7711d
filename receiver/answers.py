"""The receiver's refusals as HTTP answers: one mapping for Starlette's handlers and the
callback endpoints, which answer over raw ASGI."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
import structlog
from starlette.types import Send

from receiver.errors import Overloaded, ReceiverError, Unprocessable
from schemas.errors import StorageUnavailable, ValueRefused

log = structlog.get_logger("taskledger.receiver")
_JSON = (b"content-type", b"application/json")


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete JSON answer; its ASGI header list is built once, with the answer."""

    status: int
    body: bytes
    retry_after_seconds: int | None = None
    _raw_headers: tuple[tuple[bytes, bytes], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        extra = [(name.lower().encode(), value.encode()) for name, value in self.headers.items()]
        raw = (_JSON, (b"content-length", str(len(self.body)).encode()), *extra)
        object.__setattr__(self, "_raw_headers", raw)  # shared by every send: never mutated

    @property
    def headers(self) -> dict[str, str]:
        """The headers beyond the content's own (for a Starlette `Response`)."""
        if self.retry_after_seconds is None:
            return {}
        return {"Retry-After": str(self.retry_after_seconds)}

    async def send(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status, "headers": self._raw_headers}
        )
        await send({"type": "http.response.body", "body": self.body})


def refusal(exc: Exception, path_kind: str) -> ReceiverError:
    """What a request that raised `exc` is told: a bug or a storage failure reads as a
    503 (a sender retries it), never as a 500 that could disable the endpoint."""
    if isinstance(exc, ReceiverError):
        return exc
    if isinstance(exc, StorageUnavailable):
        return Overloaded(f"storage unavailable: {exc}")
    if isinstance(exc, ValueRefused):  # a value of the request's that the database cannot hold
        return Unprocessable(str(exc))
    log.error("request_crashed", path_kind=path_kind, error=type(exc).__name__, exc_info=exc)
    return Overloaded("unexpected error")


def answer_of(error: ReceiverError) -> Answer:
    body = orjson.dumps({"error": error.reason, "message": error.message})
    retry = error.retry_after_seconds if isinstance(error, Overloaded) else None
    return Answer(error.status_code, body, retry)
