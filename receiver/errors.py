"""The receiver's errors; each maps to one HTTP answer in `app.py`'s exception handlers."""

from __future__ import annotations


class ReceiverError(Exception):
    """Root of the receiver's errors: carries the HTTP status and a stable reason code."""

    status_code = 400
    reason = "bad_request"

    def __init__(
        self, message: str, *, provider: str | None = None, task_ref: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.task_ref = task_ref


class MalformedBody(ReceiverError):
    status_code, reason = 400, "malformed"


class Unauthenticated(ReceiverError):
    status_code, reason = 401, "unauthenticated"


class Forbidden(ReceiverError):
    status_code, reason = 403, "forbidden"


class UnknownRoute(ReceiverError):
    status_code, reason = 404, "unknown_provider"


class NotFound(ReceiverError):
    status_code, reason = 404, "not_found"


class MethodNotAllowed(ReceiverError):
    status_code, reason = 405, "method_not_allowed"


class Conflict(ReceiverError):
    status_code, reason = 409, "conflict"


class BodyTimeout(ReceiverError):
    """The sender took too long to send its body (a slow or stalled client)."""

    status_code, reason = 408, "body_timeout"


class BodyTooLarge(ReceiverError):
    status_code, reason = 413, "too_large"


class NotJson(ReceiverError):
    status_code, reason = 415, "not_json"


class Compressed(ReceiverError):
    """An API body sent with a Content-Encoding (gzip, br): the API reads bodies as sent."""

    status_code, reason = 415, "compressed"


class Unprocessable(ReceiverError):
    status_code, reason = 422, "invalid"


class Overloaded(ReceiverError):
    """Storage unavailable or the writer saturated: the sender should retry later."""

    status_code, reason = 503, "unavailable"
    retry_after_seconds = 5
