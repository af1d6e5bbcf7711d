"""APIDot's wire format (Vidgo's too): `{"code": 200, "data": {...}}` envelopes around a task."""

from __future__ import annotations

from schemas.states import State
from schemas.wire.fields import CODE_MAX_CHARS, Fields, checked_envelope, url_expiry
from schemas.wire.formats import WireFormat, WireSpec
from schemas.wire.observation import Lifetime, Observation

STATES: dict[str, State] = {
    "not_started": State.QUEUED,
    "running": State.RUNNING,
    "finished": State.SUCCEEDED,
    "failed": State.FAILED,
}
# Where a body may say when its task finished: the start of its result URLs' lifetime.
FINISHED_TIME_KEYS = ("finished_time", "completed_time", "updated_time")


def read_task(body: object, missing: State | None, lifetime: Lifetime) -> Observation:
    data = _data(body)
    task_id = data.text("task_id")
    urls = _files(data)
    return Observation(
        provider_task_id=task_id,
        state=data.state("status", STATES, missing),
        progress=data.progress("progress"),
        result_urls=urls,
        error_code=data.message("error_code", CODE_MAX_CHARS),
        error_message=data.message("error_message"),
        provider_time=data.time("created_time"),
        extra=url_expiry(urls, data.first_time(FINISHED_TIME_KEYS), lifetime),
    )


def read_task_id(body: object) -> str:
    return _data(body).text("task_id")


def build_submit(
    model: str, request: dict[str, object], callback_url: str | None
) -> dict[str, object]:
    """The request nested under `input`."""
    callback: dict[str, object] = {} if callback_url is None else {"callback_url": callback_url}
    return {"model": model, **callback, "input": dict(request)}


def _data(body: object) -> Fields:
    """The `data` object of an answer whose `code` (when given) is 200."""
    return checked_envelope(Fields.of(WireFormat.APIDOT, body)).sub("data")


def _files(data: Fields) -> tuple[str, ...]:
    """Files listed under `data.files`, `data.output.files`, or both."""
    urls = data.urls("files", "file_url")
    if isinstance(data.get("output"), dict):
        urls += data.sub("output").urls("files", "file_url")
    return tuple(dict.fromkeys(urls))


SPEC = WireSpec(
    submit_path="/api/generate/submit",
    status_path="/api/generate/status/{task_id}",
    read_status=read_task,
    read_task_id=read_task_id,
    build_submit=build_submit,
)
