"""Provider wire formats: callback and status bodies normalized into one `Observation`.

Three formats exist (see PROVIDERS.md): `openai` (video objects and signed video
events), `apidot` (APIDot, Vidgo) and `evolink` (EvoLink, AI Video API).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from urllib.parse import quote

from schemas.errors import WireFormatError
from schemas.states import State


class WireFormat(StrEnum):
    OPENAI = "openai"
    APIDOT = "apidot"
    EVOLINK = "evolink"

    @property
    def signs_callbacks(self) -> bool:
        """Standard Webhooks senders sign; the gateways bind callbacks by our URL token."""
        return self is WireFormat.OPENAI


@dataclass(frozen=True, slots=True)
class Observation:
    """What one provider body says about one task, in our terms."""

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
    extra: dict[str, str] = field(default_factory=dict)


ID_MAX_CHARS = 200  # the ledger columns hold 200
CODE_MAX_CHARS = 100
MESSAGE_MAX_CHARS = 1000
URL_MAX_CHARS = 4096
_NUMBER_TEXT_MAX_CHARS = 32
_TIME_TEXT_MAX_CHARS = 64
_SAFE_INT_MAX = 10**18
# Unix seconds stay below 1e11 until the year 5138: anything larger is milliseconds.
_MILLISECONDS_ABOVE = 10**11
_APIDOT_OK = 200
_EVOLINK_CANCELLED = "request_cancelled"

SUBMIT_PATHS: dict[WireFormat, str] = {
    WireFormat.OPENAI: "/v1/videos",
    WireFormat.APIDOT: "/api/generate/submit",
    WireFormat.EVOLINK: "/v1/videos/generations",
}
STATUS_PATHS: dict[WireFormat, str] = {
    WireFormat.OPENAI: "/v1/videos/{task_id}",
    WireFormat.APIDOT: "/api/generate/status/{task_id}",
    WireFormat.EVOLINK: "/v1/tasks/{task_id}",
}

_OPENAI_STATES: dict[str, State] = {
    "queued": State.QUEUED,
    "in_progress": State.RUNNING,
    "completed": State.SUCCEEDED,
    "failed": State.FAILED,
}
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
_EVOLINK_STATES: dict[str, State] = {
    "pending": State.QUEUED,
    "processing": State.RUNNING,
    "completed": State.SUCCEEDED,
    "failed": State.FAILED,
}


def normalize_callback(fmt: WireFormat, body: object) -> Observation:
    """What a callback body, as the provider sends it, says about its task."""
    if fmt == WireFormat.OPENAI:
        return _openai_callback(body)
    return normalize_status(fmt, body)


def normalize_status(fmt: WireFormat, body: object) -> Observation:
    """What the status endpoint's body says about its task."""
    return _STATUS_PARSERS[fmt](body, None)


def parse_submit_response(fmt: WireFormat, body: object) -> Observation:
    """The submit endpoint's answer: the provider's task id and first state (queued if unsaid)."""
    return _STATUS_PARSERS[fmt](body, State.QUEUED)


def task_id_of(fmt: WireFormat, body: object) -> str:
    """The provider's task id named by a callback, status or submit body."""
    return _TASK_ID_READERS[fmt](body)


def build_submit_body(
    fmt: WireFormat, model: str, request: dict[str, object], callback_url: str | None
) -> dict[str, object]:
    """The JSON to POST to the submit endpoint; `model` and `callback_url` override `request`."""
    callback: dict[str, object] = {} if callback_url is None else {"callback_url": callback_url}
    if fmt == WireFormat.APIDOT:
        return {"model": model, **callback, "input": dict(request)}
    body: dict[str, object] = {"model": model, **_without(request, "model", "callback_url")}
    if fmt == WireFormat.EVOLINK:
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
            raise WireFormatError(f"{fmt} body must be a JSON object, not {_kind(body)}")
        return cls(fmt, body)

    def fail(self, key: str, problem: str) -> WireFormatError:
        return WireFormatError(f"{self.fmt} body: field '{self.path}{key}' {problem}")

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

    def state(self, key: str, table: Mapping[str, State], missing: State | None) -> State:
        value = self.body.get(key)
        if value is None and missing is not None:
            return missing
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, not {_kind(value)}")
        state = table.get(value.strip().lower())
        if state is None:
            raise self.fail(key, f"has unknown value {value[:50]!r}")
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


# -- openai ---------------------------------------------------------------------------


def _openai_video(body: object, missing: State | None = None) -> Observation:
    video = _Fields.of(WireFormat.OPENAI, body)
    task_id = video.text("id")
    code, message = video.error("error")
    expires_at = video.time("expires_at")
    return Observation(
        provider_task_id=task_id,
        state=video.state("status", _OPENAI_STATES, missing),
        progress=video.progress("progress"),
        error_code=code,
        error_message=message,
        provider_time=video.time("completed_at") or video.time("created_at"),
        extra={} if expires_at is None else {"expires_at": expires_at.isoformat()},
    )


def _openai_callback(body: object) -> Observation:
    """A thin Standard Webhooks event (only the video id), or a full video object."""
    event = _Fields.of(WireFormat.OPENAI, body)
    if not _is_openai_event(event):
        return _openai_video(body)
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
    answer = _Fields.of(WireFormat.APIDOT, body)
    code = answer.get("code")
    if code is not None and _number(code) != _APIDOT_OK:
        said = answer.message("message") or answer.message("msg") or "no message"
        shown = _short_text(code, CODE_MAX_CHARS) or _kind(code)
        raise answer.fail("code", f"is {shown}, not 200: {said}")
    return answer.sub("data")


def _apidot_task(body: object, missing: State | None = None) -> Observation:
    data = _apidot_data(body)
    task_id = data.text("task_id")
    return Observation(
        provider_task_id=task_id,
        state=data.state("status", _APIDOT_STATES, missing),
        progress=data.progress("progress"),
        result_urls=_apidot_files(data),
        error_code=data.message("error_code", CODE_MAX_CHARS),
        error_message=data.message("error_message"),
        provider_time=data.time("created_time"),
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


def _evolink_fields(body: object) -> _Fields:
    """The task object, bare or wrapped as `{"data": {...}}`."""
    task = _Fields.of(WireFormat.EVOLINK, body)
    if "id" not in task.body and isinstance(task.get("data"), dict):
        return task.sub("data")
    return task


def _evolink_task(body: object, missing: State | None = None) -> Observation:
    task = _evolink_fields(body)
    task_id = task.text("id")
    code, message = task.error("error")
    state = task.state("status", _EVOLINK_STATES, missing)
    if state is State.FAILED and _EVOLINK_CANCELLED in (code, message):
        state = State.CANCELLED
    return Observation(
        provider_task_id=task_id,
        state=state,
        progress=task.progress("progress"),
        result_urls=task.urls("results", "url"),
        error_code=code,
        error_message=message,
        provider_time=task.time("created"),
    )


def _evolink_task_id(body: object) -> str:
    return _evolink_fields(body).text("id")


_StatusParser = Callable[[object, State | None], Observation]

_STATUS_PARSERS: dict[WireFormat, _StatusParser] = {
    WireFormat.OPENAI: _openai_video,
    WireFormat.APIDOT: _apidot_task,
    WireFormat.EVOLINK: _evolink_task,
}
_TASK_ID_READERS: dict[WireFormat, Callable[[object], str]] = {
    WireFormat.OPENAI: _openai_task_id,
    WireFormat.APIDOT: _apidot_task_id,
    WireFormat.EVOLINK: _evolink_task_id,
}
