"""Provider wire formats: callback and status bodies normalized into one `Observation`.

Four formats exist (see PROVIDERS.md): `openai` (video objects and signed video
events), `apidot` (APIDot, Vidgo), `evolink` (EvoLink) and `aivideoapi` (AI Video API:
EvoLink's paths, with shapes known only from third-party code, read in both readings).

Parsers are pure: a result URL's expiry is the body's own (`expires_at`) or, given a
lifetime (`result_ttl_seconds`), the body's completion time (else `now`) plus it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from urllib.parse import quote

from schemas.errors import IgnoredEvent, WireFormatError
from schemas.states import State


class WireFormat(StrEnum):
    OPENAI = "openai"
    APIDOT = "apidot"
    EVOLINK = "evolink"
    AIVIDEOAPI = "aivideoapi"

    @property
    def signs_callbacks(self) -> bool:
        """Standard Webhooks senders sign; the gateways bind callbacks by our URL token."""
        return self is WireFormat.OPENAI


@dataclass(frozen=True, slots=True)
class Observation:
    """What one provider body says about one task, in our terms.

    `extra` holds the rest of the task's result, JSON-ready: `expires_at` (ISO 8601 UTC)
    of its result URLs, `content` (OpenAI: variant -> API path fetched with the API key),
    `cost_credits` (EvoLink: credits the provider reserved for the task).
    """

    provider_task_id: str
    state: State
    progress: int | None = None
    result_urls: tuple[str, ...] = ()
    error_code: str | None = None
    error_message: str | None = None
    provider_time: datetime | None = None
    # A thin event (OpenAI `video.completed`) names the outcome but not the result:
    # the reconciler must fetch the task to complete the record.
    needs_fetch: bool = False
    extra: dict[str, object] = field(default_factory=dict)


ID_MAX_CHARS = 200  # the ledger columns hold 200
CODE_MAX_CHARS = 100
MESSAGE_MAX_CHARS = 1000
URL_MAX_CHARS = 4096
_NUMBER_TEXT_MAX_CHARS = 32
_TIME_TEXT_MAX_CHARS = 64
_SAFE_INT_MAX = 10**18
# Unix seconds stay below 1e11 until the year 5138: anything larger is milliseconds.
_MILLISECONDS_ABOVE = 10**11
_ENVELOPE_OK = 200
_EVOLINK_CANCELLED = "request_cancelled"

SUBMIT_PATHS: dict[WireFormat, str] = {
    WireFormat.OPENAI: "/v1/videos",
    WireFormat.APIDOT: "/api/generate/submit",
    WireFormat.EVOLINK: "/v1/videos/generations",
    WireFormat.AIVIDEOAPI: "/v1/videos/generations",
}
STATUS_PATHS: dict[WireFormat, str] = {
    WireFormat.OPENAI: "/v1/videos/{task_id}",
    WireFormat.APIDOT: "/api/generate/status/{task_id}",
    WireFormat.EVOLINK: "/v1/tasks/{task_id}",
    WireFormat.AIVIDEOAPI: "/v1/tasks/{task_id}",
}
# OpenAI's finished video is fetched per variant, with the API key, until `expires_at`.
OPENAI_CONTENT_PATH = "/v1/videos/{task_id}/content?variant={variant}"
OPENAI_CONTENT_VARIANTS = ("video", "thumbnail", "spritesheet")

_OPENAI_STATES: dict[str, State] = {
    "queued": State.QUEUED,
    "in_progress": State.RUNNING,
    "completed": State.SUCCEEDED,
    "failed": State.FAILED,
}
_OPENAI_VIDEO_EVENTS = "video."
_OPENAI_EVENTS: dict[str, State] = {
    "video.completed": State.SUCCEEDED,
    "video.failed": State.FAILED,
}
_APIDOT_STATES: dict[str, State] = {
    "not_started": State.QUEUED,
    "running": State.RUNNING,
    "finished": State.SUCCEEDED,
    "failed": State.FAILED,
}
# EvoLink documents a cancelled task as `failed` + `request_cancelled`; both spellings of
# a `cancelled` status occur too.
_EVOLINK_STATES: dict[str, State] = {
    "pending": State.QUEUED,
    "processing": State.RUNNING,
    "completed": State.SUCCEEDED,
    "failed": State.FAILED,
    "cancelled": State.CANCELLED,
    "canceled": State.CANCELLED,
}
# Where a body may say when its task finished: the start of its result URLs' lifetime.
_FINISHED_TIME_KEYS: dict[WireFormat, tuple[str, ...]] = {
    WireFormat.OPENAI: ("completed_at",),
    WireFormat.APIDOT: ("finished_time", "completed_time", "updated_time"),
    WireFormat.EVOLINK: ("completed_at", "completed", "finished_at", "updated_at", "updated"),
    WireFormat.AIVIDEOAPI: ("completed_at", "completed", "finished_at", "updated_at", "updated"),
}


@dataclass(frozen=True, slots=True)
class _Lifetime:
    """How long result URLs live (`ttl_seconds`, None: unknown) and when the body was read."""

    ttl_seconds: float | None = None
    now: datetime | None = None

    def expiry(self, finished: datetime | None) -> datetime | None:
        """`finished` (else `now`) plus the lifetime; None when either is unknown."""
        start = finished or self.now
        if self.ttl_seconds is None or start is None:
            return None
        try:
            return start + timedelta(seconds=self.ttl_seconds)
        except OverflowError:
            return None


_UNKNOWN_LIFETIME = _Lifetime()


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
    if fmt == WireFormat.OPENAI:
        return _openai_callback(body, _Lifetime(result_ttl_seconds, now))
    return normalize_status(fmt, body, result_ttl_seconds=result_ttl_seconds, now=now)


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
    return _STATUS_PARSERS[fmt](body, None, _Lifetime(result_ttl_seconds, now))


def parse_submit_response(fmt: WireFormat, body: object) -> Observation:
    """The submit endpoint's answer: the provider's task id and first state (queued if unsaid)."""
    return _STATUS_PARSERS[fmt](body, State.QUEUED, _UNKNOWN_LIFETIME)


def task_id_of(fmt: WireFormat, body: object) -> str:
    """The provider's task id named by a callback, status or submit body."""
    return _TASK_ID_READERS[fmt](body)


def task_id_hint(fmt: WireFormat, body: object) -> str | None:
    """The task id a body names, if it can be read at all: for keeping an unreadable body
    beside its task. None when no id can be found."""
    try:
        return _TASK_ID_READERS[fmt](body)
    except WireFormatError:
        return None


def build_submit_body(
    fmt: WireFormat, model: str, request: dict[str, object], callback_url: str | None
) -> dict[str, object]:
    """The JSON to POST to the submit endpoint; `model` and `callback_url` override `request`.

    APIDot nests the request under `input`; EvoLink and AI Video API take it flat (an AI
    Video API request that wants `input` nesting says so itself: `{"input": {...}}`).
    """
    callback: dict[str, object] = {} if callback_url is None else {"callback_url": callback_url}
    if fmt == WireFormat.APIDOT:
        return {"model": model, **callback, "input": dict(request)}
    body: dict[str, object] = {"model": model, **_without(request, "model", "callback_url")}
    if fmt in (WireFormat.EVOLINK, WireFormat.AIVIDEOAPI):
        body.update(callback)
    return body


def submit_path(fmt: WireFormat) -> str:
    return SUBMIT_PATHS[fmt]


def status_path(fmt: WireFormat, task_id: str) -> str:
    """The status endpoint's path for one task, the id quoted as a single path segment."""
    if task_id.strip() in ("", ".", ".."):
        raise WireFormatError(f"{fmt} task id {task_id[:50]!r} cannot name a status path")
    return STATUS_PATHS[fmt].format(task_id=quote(task_id, safe=""))


# -- reading fields -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Fields:
    """Typed reads from one JSON object; every mismatch is a WireFormatError naming the field."""

    fmt: WireFormat
    body: Mapping[str, object]
    path: str = ""

    @classmethod
    def of(cls, fmt: WireFormat, body: object) -> _Fields:
        if not isinstance(body, dict):
            raise WireFormatError(
                f"{fmt} body must be a JSON object, not {_kind(body)}", reason="not_object"
            )
        return cls(fmt, body)

    def fail(self, key: str, problem: str, reason: str = "bad_field") -> WireFormatError:
        return WireFormatError(
            f"{self.fmt} body: field '{self.path}{key}' {problem}", reason=reason
        )

    def get(self, key: str) -> object:
        return self.body.get(key)

    def sub(self, key: str) -> _Fields:
        value = self.body.get(key)
        if not isinstance(value, dict):
            raise self.fail(key, f"must be an object, not {_kind(value)}")
        return _Fields(self.fmt, value, f"{self.path}{key}.")

    def text(self, key: str, max_chars: int = ID_MAX_CHARS) -> str:
        value = self.body.get(key)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"must be a non-empty string, not {_kind(value)}")
        if len(value.strip()) > max_chars:
            raise self.fail(key, f"is longer than {max_chars} characters")
        return value.strip()

    def text_of(self, *keys: str) -> str:
        """The first of `keys` the body gives, read as `text`: one field, several spellings."""
        given = next((key for key in keys if self.body.get(key) is not None), keys[0])
        return self.text(given)

    def state(self, key: str, table: Mapping[str, State], missing: State | None) -> State:
        value = self.body.get(key)
        if value is None and missing is not None:
            return missing
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, not {_kind(value)}", "unknown_status")
        state = table.get(value.strip().lower())
        if state is None:
            raise self.fail(key, f"has unknown value {value[:50]!r}", "unknown_status")
        return state

    def progress(self, key: str) -> int | None:
        """A percentage clamped to 0..100, rounded down; absent is None."""
        value = self.body.get(key)
        if value is None:
            return None
        number = _number(value)
        if number is None:
            raise self.fail(key, f"must be a finite number, not {_kind(value)}")
        return min(100, max(0, math.floor(number)))

    def time(self, key: str) -> datetime | None:
        """Informational: an unreadable time is None, never an error."""
        return _moment(self.body.get(key))

    def finished(self) -> datetime | None:
        """When the body says its task finished, if it says so (informational)."""
        for key in _FINISHED_TIME_KEYS[self.fmt]:
            moment = self.time(key)
            if moment is not None:
                return moment
        return None

    def amount(self, key: str) -> int | float | None:
        """Informational: a JSON number (finite, JSON-safe), else None, never an error."""
        value = self.body.get(key)
        if isinstance(value, str) or (isinstance(value, int) and abs(value) >= _SAFE_INT_MAX):
            return None
        return _number(value)

    def message(self, key: str, max_chars: int = MESSAGE_MAX_CHARS) -> str | None:
        return _short_text(self.body.get(key), max_chars)

    def error(self, key: str) -> tuple[str | None, str | None]:
        """An error given as `{"code", "message"}` or as a bare message string."""
        value = self.body.get(key)
        if value is None or isinstance(value, str):
            return None, _short_text(value, MESSAGE_MAX_CHARS)
        if not isinstance(value, dict):
            raise self.fail(key, f"must be an object or a string, not {_kind(value)}")
        found = _Fields(self.fmt, value)
        return found.message("code", CODE_MAX_CHARS), found.message("message")

    def urls(self, key: str, url_key: str) -> tuple[str, ...]:
        """A list of URL strings or of objects carrying the URL under `url_key`."""
        value = self.body.get(key)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.fail(key, f"must be an array, not {_kind(value)}")
        return tuple(self._url(f"{key}[{n}]", item, url_key) for n, item in enumerate(value))

    def _url(self, key: str, item: object, url_key: str) -> str:
        if isinstance(item, dict):
            return _Fields(self.fmt, item, f"{self.path}{key}.").text(url_key, URL_MAX_CHARS)
        if isinstance(item, str) and 0 < len(item.strip()) <= URL_MAX_CHARS:
            return item.strip()
        raise self.fail(key, f"must be a URL or an object with '{url_key}', not {_kind(item)}")


def _kind(value: object) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    for kind, name in ((str, "string"), (list, "array"), (dict, "object")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _number(value: object) -> int | float | None:
    """A finite number from a JSON number or numeric string ("50", "50.5", "50%")."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str) and len(value) <= _NUMBER_TEXT_MAX_CHARS:
        return _number_in(value.strip().removesuffix("%"))
    return None


def _number_in(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _short_text(value: object, max_chars: int) -> str | None:
    """A stripped, capped string (or a small integer as text); anything else is None."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < _SAFE_INT_MAX:
        return str(value)
    if not isinstance(value, str):
        return None
    return value.strip()[:max_chars] or None


def _moment(value: object) -> datetime | None:
    """Unix seconds (or milliseconds) or ISO-8601 text as an aware UTC datetime."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return _from_unix(value)
    if isinstance(value, str) and 0 < len(value.strip()) <= _TIME_TEXT_MAX_CHARS:
        return _from_iso(value.strip())
    return None


def _from_unix(value: float) -> datetime | None:
    try:
        seconds = float(value)
        if seconds >= _MILLISECONDS_ABOVE:
            seconds /= 1000
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _from_iso(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        number = _number_in(text)
        return None if number is None else _from_unix(number)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def _without(request: Mapping[str, object], *keys: str) -> dict[str, object]:
    return {key: value for key, value in request.items() if key not in keys}


# -- shared ---------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _checked_envelope(answer: _Fields) -> _Fields:
    """An answer whose `code`, when given, is 200; any other code is the provider's refusal."""
    code = answer.get("code")
    if code is not None and _number(code) != _ENVELOPE_OK:
        said = answer.message("message") or answer.message("msg") or "no message"
        shown = _short_text(code, CODE_MAX_CHARS) or _kind(code)
        raise answer.fail("code", f"is {shown}, not 200: {said}", "provider_error")
    return answer


def _url_expiry(urls: tuple[str, ...], task: _Fields, lifetime: _Lifetime) -> dict[str, object]:
    """`expires_at` of a task's result URLs, when it has some and their lifetime is known."""
    expires_at = lifetime.expiry(task.finished()) if urls else None
    return {} if expires_at is None else {"expires_at": _iso(expires_at)}


# -- openai ---------------------------------------------------------------------------


def _openai_video(body: object, missing: State | None, lifetime: _Lifetime) -> Observation:
    video = _Fields.of(WireFormat.OPENAI, body)
    task_id = video.text("id")
    state = video.state("status", _OPENAI_STATES, missing)
    code, message = video.error("error")
    return Observation(
        provider_task_id=task_id,
        state=state,
        progress=video.progress("progress"),
        error_code=code,
        error_message=message,
        provider_time=video.finished() or video.time("created_at"),
        extra=_openai_result(video, task_id, state, lifetime),
    )


def _openai_result(
    video: _Fields, task_id: str, state: State, lifetime: _Lifetime
) -> dict[str, object]:
    """A completed video's content paths; its expiry (the body's own, else by lifetime)."""
    result: dict[str, object] = {}
    expires_at = video.time("expires_at")
    if state is State.SUCCEEDED:
        result["content"] = openai_content_paths(task_id)
        expires_at = expires_at or lifetime.expiry(video.finished())
    if expires_at is not None:
        result["expires_at"] = _iso(expires_at)
    return result


def openai_content_paths(task_id: str) -> dict[str, str]:
    """Each variant of a finished OpenAI video: its API path (relative to the base URL)."""
    quoted = quote(task_id, safe="")
    return {
        variant: OPENAI_CONTENT_PATH.format(task_id=quoted, variant=variant)
        for variant in OPENAI_CONTENT_VARIANTS
    }


def _openai_callback(body: object, lifetime: _Lifetime) -> Observation:
    """A thin Standard Webhooks event (only the video id), or a full video object."""
    event = _Fields.of(WireFormat.OPENAI, body)
    if not _is_openai_event(event):
        return _openai_video(body, None, lifetime)
    kind = event.get("type")
    name = kind.strip().lower() if isinstance(kind, str) else ""
    # A named type outside `video.*` is an event we do not follow; a blank one is malformed.
    if name and not name.startswith(_OPENAI_VIDEO_EVENTS):
        raise IgnoredEvent(
            f"openai event type {name[:50]!r} is not about a video", reason="ignored"
        )
    if name not in _OPENAI_EVENTS:
        shown = repr(name[:50]) if name else _kind(kind)
        raise event.fail("type", f"is not a video event we know ({shown})", "unknown_event")
    # No result: the fetch the event calls for brings it (a repeat of the same state fills a
    # result only where there was none).
    return Observation(
        provider_task_id=event.sub("data").text("id"),
        state=event.state("type", _OPENAI_EVENTS, None),
        provider_time=event.time("created_at"),
        needs_fetch=True,
    )


def _is_openai_event(fields: _Fields) -> bool:
    kind = fields.get("object")
    if kind in ("event", "video"):
        return kind == "event"
    return "type" in fields.body


def _openai_task_id(body: object) -> str:
    fields = _Fields.of(WireFormat.OPENAI, body)
    if _is_openai_event(fields):
        return fields.sub("data").text("id")
    return fields.text("id")


# -- apidot / vidgo -------------------------------------------------------------------


def _apidot_data(body: object) -> _Fields:
    """The `data` object of an answer whose `code` (when given) is 200."""
    return _checked_envelope(_Fields.of(WireFormat.APIDOT, body)).sub("data")


def _apidot_task(body: object, missing: State | None, lifetime: _Lifetime) -> Observation:
    data = _apidot_data(body)
    task_id = data.text("task_id")
    urls = _apidot_files(data)
    return Observation(
        provider_task_id=task_id,
        state=data.state("status", _APIDOT_STATES, missing),
        progress=data.progress("progress"),
        result_urls=urls,
        error_code=data.message("error_code", CODE_MAX_CHARS),
        error_message=data.message("error_message"),
        provider_time=data.time("created_time"),
        extra=_url_expiry(urls, data, lifetime),
    )


def _apidot_files(data: _Fields) -> tuple[str, ...]:
    """Files listed under `data.files`, `data.output.files`, or both."""
    urls = data.urls("files", "file_url")
    if isinstance(data.get("output"), dict):
        urls += data.sub("output").urls("files", "file_url")
    return tuple(dict.fromkeys(urls))


def _apidot_task_id(body: object) -> str:
    return _apidot_data(body).text("task_id")


# -- evolink / ai video api -----------------------------------------------------------

# AI Video API's shapes are known only from third-party code: its task id has three
# spellings, its answers may come in a `{"code": 200, "data": {...}}` envelope, and its
# result URLs are `results` (EvoLink's) or `output.urls`.
_GATEWAY_ID_KEYS: dict[WireFormat, tuple[str, ...]] = {
    WireFormat.EVOLINK: ("id",),
    WireFormat.AIVIDEOAPI: ("id", "taskId", "task_id"),
}


def _gateway_fields(fmt: WireFormat, body: object) -> _Fields:
    """The task object: bare or wrapped as `{"data": {...}}` (AI Video API: with a `code`)."""
    task = _Fields.of(fmt, body)
    if fmt is WireFormat.AIVIDEOAPI:
        _checked_envelope(task)
    if not any(key in task.body for key in _GATEWAY_ID_KEYS[fmt]) and isinstance(
        task.get("data"), dict
    ):
        return task.sub("data")
    return task


def _gateway_task(
    fmt: WireFormat, body: object, missing: State | None, lifetime: _Lifetime
) -> Observation:
    task = _gateway_fields(fmt, body)
    task_id = task.text_of(*_GATEWAY_ID_KEYS[fmt])
    code, message = task.error("error")
    state = task.state("status", _EVOLINK_STATES, missing)
    if state is State.FAILED and _EVOLINK_CANCELLED in (code, message):
        state = State.CANCELLED
    urls = _gateway_urls(task)
    return Observation(
        provider_task_id=task_id,
        state=state,
        progress=task.progress("progress"),
        result_urls=urls,
        error_code=code,
        error_message=message,
        provider_time=task.time("created") or task.time("created_at"),
        extra={**_url_expiry(urls, task, lifetime), **_reserved_credits(task)},
    )


def _gateway_urls(task: _Fields) -> tuple[str, ...]:
    """`results` (URLs or `{"url"}` objects); AI Video API: and `output.urls`."""
    urls = task.urls("results", "url")
    if task.fmt is WireFormat.AIVIDEOAPI and isinstance(task.get("output"), dict):
        urls += task.sub("output").urls("urls", "url")
    return tuple(dict.fromkeys(urls))


def _reserved_credits(task: _Fields) -> dict[str, object]:
    """The task's cost as the gateway reserved it (`usage.credits_reserved`), if it says."""
    if not isinstance(task.get("usage"), dict):
        return {}
    credits = task.sub("usage").amount("credits_reserved")
    return {} if credits is None else {"cost_credits": credits}


def _evolink_task(body: object, missing: State | None, lifetime: _Lifetime) -> Observation:
    return _gateway_task(WireFormat.EVOLINK, body, missing, lifetime)


def _aivideoapi_task(body: object, missing: State | None, lifetime: _Lifetime) -> Observation:
    return _gateway_task(WireFormat.AIVIDEOAPI, body, missing, lifetime)


def _evolink_task_id(body: object) -> str:
    return _gateway_fields(WireFormat.EVOLINK, body).text("id")


def _aivideoapi_task_id(body: object) -> str:
    keys = _GATEWAY_ID_KEYS[WireFormat.AIVIDEOAPI]
    return _gateway_fields(WireFormat.AIVIDEOAPI, body).text_of(*keys)


_StatusParser = Callable[[object, State | None, _Lifetime], Observation]

_STATUS_PARSERS: dict[WireFormat, _StatusParser] = {
    WireFormat.OPENAI: _openai_video,
    WireFormat.APIDOT: _apidot_task,
    WireFormat.EVOLINK: _evolink_task,
    WireFormat.AIVIDEOAPI: _aivideoapi_task,
}
_TASK_ID_READERS: dict[WireFormat, Callable[[object], str]] = {
    WireFormat.OPENAI: _openai_task_id,
    WireFormat.APIDOT: _apidot_task_id,
    WireFormat.EVOLINK: _evolink_task_id,
    WireFormat.AIVIDEOAPI: _aivideoapi_task_id,
}
