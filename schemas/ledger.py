"""The evidence the ledger folds in (callbacks, polls, expiry) and how it becomes a `Report`.

Pure: these types carry what the store needs; the store decides and writes.
"""

from __future__ import annotations

from dataclasses import field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

from schemas.errors import IgnoredEvent, WireFormatError
from schemas.json_text import NUL_ESCAPE, NUL_READ_AS, without_nul
from schemas.records import record
from schemas.states import REAL_TERMINAL, Outcome, Report, Snapshot, Source, State
from schemas.wire import ID_MAX_CHARS, Kind, Observation, normalize_callback, task_id_hint

# What makes a delivery unique in the ledger: provider, provider's task id, message key.
DeliveryId = tuple[str, str, str]


class Auth(StrEnum):
    """How a delivery proved it came from the provider."""

    TOKEN = "token"  # noqa: S105 - the name of a method, not a secret
    SIGNATURE = "signature"


@record
class Unread:
    """Why an authenticated body was kept without being folded in: `reason` is a short code
    (for metrics), `detail` says more. `ignored`: it speaks of no task we follow."""

    reason: str
    detail: str
    ignored: bool = False


@record
class Delivery:
    """One authenticated callback, ready to be stored and, when it could be read, merged.

    `observation` is None when the body could not be read (`unread` says why); it is kept
    all the same, under the task id the body names (`task_id`, "" when none can be found).
    """

    provider: str
    delivery_key: str
    body: bytes
    headers: dict[str, str]
    auth: Auth
    observation: Observation | None
    received_at: datetime
    task_ref: str | None = None
    task_id: str = ""
    unread: Unread | None = None

    @property
    def signed(self) -> bool:
        return self.auth is Auth.SIGNATURE

    @property
    def provider_task_id(self) -> str:
        return self.observation.provider_task_id if self.observation else self.task_id

    @property
    def identity(self) -> DeliveryId:
        return self.provider, self.provider_task_id, self.delivery_key


NOT_JSON: Any = object()  # what `parse_payload` gives for a body that is not JSON
# Why: orjson reads JSON as RFC 8259 allows readers to limit it, and refuses past that.
NOT_READ_AS_JSON = (
    "not JSON, or JSON past what is read: integers over 64 bits, nesting over 1,024 levels,"
    " lone surrogates"
)


@record
class Reader:
    """How one provider's callbacks are read: its wire format, how long the result URLs it
    sends stay valid (recorded as `expires_at`), and whether its outputs are archived."""

    kind: Kind
    result_ttl_seconds: float | None = None
    archive: bool = False


@record
class Reading:
    """What a body says, as far as it can be read: its observation and task id, or why not
    (`task_id` is "" when no id can be found)."""

    observation: Observation | None
    task_id: str
    unread: Unread | None = None


_BOM = b"\xef\xbb\xbf"


def parse_payload(body: bytes) -> Any:
    """The body as JSON, or `NOT_JSON` (a UTF-8 byte order mark before it is skipped, as
    RFC 8259 lets a reader do; the body is kept as it came)."""
    try:
        payload = orjson.loads(body[3:] if body.startswith(_BOM) else body)
    except orjson.JSONDecodeError:
        return NOT_JSON
    return without_nul(payload) if NUL_ESCAPE in body else payload  # `storable_json`, inline


def read_payload(reader: Reader, payload: Any, received_at: datetime) -> Reading:
    """A parsed callback body read by its provider's normalizer."""
    if payload is NOT_JSON:
        return Reading(None, "", Unread("not_json", NOT_READ_AS_JSON))
    try:
        observation = normalize_callback(
            reader.kind, payload, result_ttl_seconds=reader.result_ttl_seconds, now=received_at
        )
    except WireFormatError as exc:
        unread = Unread(exc.reason, str(exc), ignored=isinstance(exc, IgnoredEvent))
        return Reading(None, _storable(task_id_hint(reader.kind, payload)) or "", unread)
    except Exception as exc:
        problem = f"the reader failed on this body ({type(exc).__name__}); kept as it came"
        return Reading(None, "", Unread("reader_failed", problem))
    task_id = observation.provider_task_id
    if _storable(task_id) is None:
        problem = f"the task id is empty, over {ID_MAX_CHARS} characters or holds NUL"
        return Reading(None, "", Unread("bad_task_id", problem))
    return Reading(observation, task_id)


def read_delivery(delivery: Delivery, reader: Reader) -> Delivery:
    """`delivery` (a stored one, say) with its body read again by the current code."""
    reading = read_payload(reader, parse_payload(delivery.body), delivery.received_at)
    return replace(
        delivery, observation=reading.observation, task_id=reading.task_id, unread=reading.unread
    )


def _storable(task_id: str | None) -> str | None:
    """A task id the ledger can hold, or None: none holds NUL (PostgreSQL's text cannot),
    nor the character a NUL is read as (`storable_json`), which would make it another id."""
    if not task_id or len(task_id) > ID_MAX_CHARS or "\x00" in task_id or NUL_READ_AS in task_id:
        return None
    return task_id


@record
class Poll:
    """One answer (or failure) of the provider's status endpoint for one task."""

    task_ref: str
    observed_at: datetime
    next_poll_at: datetime | None
    observation: Observation | None = None
    http_status: int | None = None
    body: str | None = None
    error: str | None = None
    # A 2xx answer that could not be read: why. The task is flagged for attention.
    unrecognized: str | None = None
    # The reconciler stops asking (set with `next_poll_at=None`): why, for the operator.
    attention: str | None = None


@record
class Expiry:
    """The reconciler gives up on a task that outlived its provider's maximum age."""

    task_ref: str
    at: datetime
    reason: str


@record
class Submission:
    """What came of submitting a task to its provider on the owner's behalf."""

    task_ref: str
    at: datetime
    status: SubmissionStatus
    next_poll_at: datetime | None
    observation: Observation | None = None
    error: str | None = None


class SubmissionStatus(StrEnum):
    PENDING = "pending"  # not sent yet, or refused in a way worth trying again
    SENDING = "sending"  # claimed for sending: from here on it is never sent a second time
    SENT = "sent"
    REJECTED = "rejected"  # the provider refused it: the task failed
    UNKNOWN = "unknown"  # it may have reached the provider: never sent twice


Evidence = Delivery | Poll | Expiry | Submission


@record
class Stored:
    """What became of one piece of evidence once committed."""

    outcome: Outcome
    task_ref: str | None = None
    state: State | None = None
    refusal: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def refused(self) -> bool:
        return self.refusal is not None


def report_of(observation: Observation, source: Source, *, signed: bool = True) -> Report:
    return Report(
        state=observation.state,
        source=source,
        signed=signed,
        progress=observation.progress or 0,
        result=result_of(observation),
    )


def result_of(observation: Observation) -> dict[str, Any] | None:
    """The parts of a provider answer worth keeping: media URLs, error, expiry."""
    result: dict[str, Any] = {}
    if observation.result_urls:
        result["urls"] = list(observation.result_urls)
    if observation.error_code or observation.error_message:
        result["error"] = {"code": observation.error_code, "message": observation.error_message}
    if observation.extra:
        result.update(observation.extra)
    return result or None


def settled(snapshot: Snapshot) -> bool:
    """Nothing left to ask the provider: a confirmed real terminal state, and for a success
    its result (a thin event confirms the end but carries none: it must be fetched)."""
    if snapshot.state is State.SUCCEEDED and not snapshot.result:
        return False
    return snapshot.state in REAL_TERMINAL and snapshot.confirmed
