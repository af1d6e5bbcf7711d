"""EvoLink's wire format: a bare task object, `results` as its URLs, reserved credits.

`Gateway` reads EvoLink-shaped tasks; AI Video API is one more such gateway (`aivideoapi`).
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.states import State
from schemas.wire.fields import Fields, checked_envelope, url_expiry, without
from schemas.wire.formats import WireFormat, WireSpec
from schemas.wire.observation import Lifetime, Observation

# EvoLink documents a cancelled task as `failed` + `request_cancelled`; both spellings of
# a `cancelled` status occur too.
STATES: dict[str, State] = {
    "pending": State.QUEUED,
    "processing": State.RUNNING,
    "completed": State.SUCCEEDED,
    "failed": State.FAILED,
    "cancelled": State.CANCELLED,
    "canceled": State.CANCELLED,
}
CANCELLED = "request_cancelled"
# Where a body may say when its task finished: the start of its result URLs' lifetime.
FINISHED_TIME_KEYS = ("completed_at", "completed", "finished_at", "updated_at", "updated")
SUBMIT_PATH = "/v1/videos/generations"
STATUS_PATH = "/v1/tasks/{task_id}"


@dataclass(frozen=True, slots=True)
class Gateway:
    """One EvoLink-shaped gateway: its task id's spellings; whether its answers may come in
    a `{"code": 200, "data": {...}}` envelope; whether `output.urls` lists results too."""

    fmt: WireFormat
    id_keys: tuple[str, ...]
    enveloped: bool = False
    output_urls: bool = False

    def read_task(self, body: object, missing: State | None, lifetime: Lifetime) -> Observation:
        task = self._task(body)
        task_id = task.text_of(*self.id_keys)
        code, message = task.error("error")
        state = task.state("status", STATES, missing)
        if state is State.FAILED and CANCELLED in (code, message):
            state = State.CANCELLED
        urls = self._urls(task)
        return Observation(
            provider_task_id=task_id,
            state=state,
            progress=task.progress("progress"),
            result_urls=urls,
            error_code=code,
            error_message=message,
            provider_time=task.time("created") or task.time("created_at"),
            extra={
                **url_expiry(urls, task.first_time(FINISHED_TIME_KEYS), lifetime),
                **_reserved_credits(task),
            },
        )

    def read_task_id(self, body: object) -> str:
        return self._task(body).text_of(*self.id_keys)

    def spec(self) -> WireSpec:
        return WireSpec(SUBMIT_PATH, STATUS_PATH, self.read_task, self.read_task_id, build_submit)

    def _task(self, body: object) -> Fields:
        """The task object: bare or wrapped as `{"data": {...}}` (with a `code`, if enveloped)."""
        task = Fields.of(self.fmt, body)
        if self.enveloped:
            checked_envelope(task)
        if not any(key in task.body for key in self.id_keys) and isinstance(task.get("data"), dict):
            return task.sub("data")
        return task

    def _urls(self, task: Fields) -> tuple[str, ...]:
        """`results` (URLs or `{"url"}` objects), and `output.urls` where the gateway has it."""
        urls = task.urls("results", "url")
        if self.output_urls and isinstance(task.get("output"), dict):
            urls += task.sub("output").urls("urls", "url")
        return tuple(dict.fromkeys(urls))


def build_submit(
    model: str, request: dict[str, object], callback_url: str | None
) -> dict[str, object]:
    """The request flat, with our callback URL when there is one."""
    body: dict[str, object] = {"model": model, **without(request, "model", "callback_url")}
    if callback_url is not None:
        body["callback_url"] = callback_url
    return body


def _reserved_credits(task: Fields) -> dict[str, object]:
    """The task's cost as the gateway reserved it (`usage.credits_reserved`), if it says."""
    if not isinstance(task.get("usage"), dict):
        return {}
    credits = task.sub("usage").amount("credits_reserved")
    return {} if credits is None else {"cost_credits": credits}


GATEWAY = Gateway(WireFormat.EVOLINK, ("id",))
SPEC = GATEWAY.spec()
