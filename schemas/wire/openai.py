"""OpenAI's wire format: video objects (polls, submits) and signed Standard Webhooks events.

A finished video is fetched per variant, with the API key, until its `expires_at`.
"""

from __future__ import annotations

from urllib.parse import quote

from schemas.errors import IgnoredEvent
from schemas.states import State
from schemas.wire.fields import Fields, iso, kind, without
from schemas.wire.formats import WireFormat, WireSpec
from schemas.wire.observation import Lifetime, Observation

CONTENT_PATH = "/v1/videos/{task_id}/content?variant={variant}"
CONTENT_VARIANTS = ("video", "thumbnail", "spritesheet")
STATES: dict[str, State] = {
    "queued": State.QUEUED,
    "in_progress": State.RUNNING,
    "completed": State.SUCCEEDED,
    "failed": State.FAILED,
}
VIDEO_EVENTS = "video."
EVENTS: dict[str, State] = {
    "video.completed": State.SUCCEEDED,
    "video.failed": State.FAILED,
}
# Where a body may say when its task finished: the start of its result URLs' lifetime.
FINISHED_TIME_KEYS = ("completed_at",)


def read_video(body: object, missing: State | None, lifetime: Lifetime) -> Observation:
    video = Fields.of(WireFormat.OPENAI, body)
    task_id = video.text("id")
    state = video.state("status", STATES, missing)
    code, message = video.error("error")
    return Observation(
        provider_task_id=task_id,
        state=state,
        progress=video.progress("progress"),
        error_code=code,
        error_message=message,
        provider_time=video.first_time(FINISHED_TIME_KEYS) or video.time("created_at"),
        extra=_result(video, task_id, state, lifetime),
    )


def _result(video: Fields, task_id: str, state: State, lifetime: Lifetime) -> dict[str, object]:
    """A completed video's content paths and their expiry (the body's own, else by
    lifetime); nothing for a video that has none (a failed one's `expires_at` dates no
    result)."""
    if state is not State.SUCCEEDED:
        return {}
    result: dict[str, object] = {"content": content_paths(task_id)}
    expires_at = video.time("expires_at") or lifetime.expiry(video.first_time(FINISHED_TIME_KEYS))
    if expires_at is not None:
        result["expires_at"] = iso(expires_at)
    return result


def content_paths(task_id: str) -> dict[str, str]:
    """Each variant of a finished OpenAI video: its API path (relative to the base URL)."""
    quoted = quote(task_id, safe="")
    return {
        variant: CONTENT_PATH.format(task_id=quoted, variant=variant)
        for variant in CONTENT_VARIANTS
    }


def read_callback(body: object, lifetime: Lifetime) -> Observation:
    """A thin Standard Webhooks event (only the video id), or a full video object."""
    event = Fields.of(WireFormat.OPENAI, body)
    if not _is_event(event):
        return read_video(body, None, lifetime)
    given = event.get("type")
    name = given.strip().lower() if isinstance(given, str) else ""
    # A named type outside `video.*` is an event we do not follow; a blank one is malformed.
    if name and not name.startswith(VIDEO_EVENTS):
        raise IgnoredEvent(
            f"openai event type {name[:50]!r} is not about a video", reason="ignored"
        )
    if name not in EVENTS:
        shown = repr(name[:50]) if name else kind(given)
        raise event.fail("type", f"is not a video event we know ({shown})", "unknown_event")
    # No result: the fetch the event calls for brings it (a repeat of the same state fills a
    # result only where there was none).
    return Observation(
        provider_task_id=event.sub("data").text("id"),
        state=event.state("type", EVENTS, None),
        provider_time=event.time("created_at"),
        needs_fetch=True,
    )


def _is_event(fields: Fields) -> bool:
    given = fields.get("object")
    if given in ("event", "video"):
        return given == "event"
    return "type" in fields.body


def read_task_id(body: object) -> str:
    fields = Fields.of(WireFormat.OPENAI, body)
    if _is_event(fields):
        return fields.sub("data").text("id")
    return fields.text("id")


def build_submit(
    model: str, request: dict[str, object], callback_url: str | None
) -> dict[str, object]:
    """The request flat; OpenAI calls back to the project's webhook, never to a URL we give."""
    return {"model": model, **without(request, "model", "callback_url")}


SPEC = WireSpec(
    submit_path="/v1/videos",
    status_path="/v1/videos/{task_id}",
    read_status=read_video,
    read_task_id=read_task_id,
    build_submit=build_submit,
    read_callback=read_callback,
)
