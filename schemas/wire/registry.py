"""Each wire format's `WireSpec`, and the operations that read or write a body by its format.

Parsers are pure: a result URL's expiry is the body's own (`expires_at`) or, given a
lifetime (`result_ttl_seconds`), the body's completion time (else `now`) plus it.
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import quote

from schemas.errors import WireFormatError
from schemas.states import State
from schemas.wire import aivideoapi, apidot, evolink, openai
from schemas.wire.formats import WireFormat, WireSpec
from schemas.wire.observation import UNKNOWN_LIFETIME, Lifetime, Observation

# Adding a wire format: a `WireFormat` member, a module with its `SPEC`, and a line here.
SPECS: dict[WireFormat, WireSpec] = {
    WireFormat.OPENAI: openai.SPEC,
    WireFormat.APIDOT: apidot.SPEC,
    WireFormat.EVOLINK: evolink.SPEC,
    WireFormat.AIVIDEOAPI: aivideoapi.SPEC,
}
SUBMIT_PATHS: dict[WireFormat, str] = {fmt: spec.submit_path for fmt, spec in SPECS.items()}
STATUS_PATHS: dict[WireFormat, str] = {fmt: spec.status_path for fmt, spec in SPECS.items()}


def normalize_callback(
    fmt: WireFormat,
    body: object,
    *,
    result_ttl_seconds: float | None = None,
    now: datetime | None = None,
) -> Observation:
    """What a callback body, as the provider sends it, says about its task.

    `result_ttl_seconds` and `now` (when it was received) date its result URLs' expiry;
    see `normalize_status`.
    """
    spec = SPECS[fmt]
    lifetime = Lifetime(result_ttl_seconds, now)
    if spec.read_callback is not None:
        return spec.read_callback(body, lifetime)
    return spec.read_status(body, None, lifetime)


def normalize_status(
    fmt: WireFormat,
    body: object,
    *,
    result_ttl_seconds: float | None = None,
    now: datetime | None = None,
) -> Observation:
    """What the status endpoint's body says about its task.

    When it lists results, `extra["expires_at"]` is the body's own expiry or, given the
    provider's URL lifetime `result_ttl_seconds`, the body's finished time (else `now`,
    when the body was read) plus it; without either, no expiry is recorded.
    """
    return SPECS[fmt].read_status(body, None, Lifetime(result_ttl_seconds, now))


def parse_submit_response(fmt: WireFormat, body: object) -> Observation:
    """The submit endpoint's answer: the provider's task id and first state (queued if unsaid)."""
    return SPECS[fmt].read_status(body, State.QUEUED, UNKNOWN_LIFETIME)


def task_id_of(fmt: WireFormat, body: object) -> str:
    """The provider's task id named by a callback, status or submit body."""
    return SPECS[fmt].read_task_id(body)


def task_id_hint(fmt: WireFormat, body: object) -> str | None:
    """The task id a body names, if it can be read at all: for keeping an unreadable body
    beside its task. None when no id can be found."""
    try:
        return SPECS[fmt].read_task_id(body)
    except WireFormatError:
        return None


def build_submit_body(
    fmt: WireFormat, model: str, request: dict[str, object], callback_url: str | None
) -> dict[str, object]:
    """The JSON to POST to the submit endpoint; `model` and `callback_url` override `request`.

    APIDot nests the request under `input`; EvoLink and AI Video API take it flat (an AI
    Video API request that wants `input` nesting says so itself: `{"input": {...}}`).
    """
    return SPECS[fmt].build_submit(model, request, callback_url)


def submit_path(fmt: WireFormat) -> str:
    return SPECS[fmt].submit_path


def status_path(fmt: WireFormat, task_id: str) -> str:
    """The status endpoint's path for one task, the id quoted as a single path segment."""
    if task_id.strip() in ("", ".", ".."):
        raise WireFormatError(f"{fmt} task id {task_id[:50]!r} cannot name a status path")
    return SPECS[fmt].status_path.format(task_id=quote(task_id, safe=""))
