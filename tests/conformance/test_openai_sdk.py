"""Bodies built at run time from the official OpenAI SDK's own types (`openai`, a dev
dependency): every `Video.status` the SDK declares, with and without its optional fields,
as a poll answer and as a signed callback; the `video.*` events; and the non-video events
a project webhook also receives, which are kept as `ignored`.

The SDK has no model for the `video.*` events (it lists them among the webhook event types);
they are built with the envelope every SDK event model shares, which is checked here too.
"""

from __future__ import annotations

import typing
from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import orjson
import pytest
from openai.types import Video
from openai.types.video_create_error import VideoCreateError
from openai.types.webhooks import BatchCompletedWebhookEvent, WebhookCreateParams
from openai.types.webhooks.unwrap_webhook_event import UnwrapWebhookEvent

from schemas.ledger import result_of
from schemas.settings import DEFAULT_RESULT_TTL_SECONDS
from schemas.states import State
from schemas.wire import WireFormat, openai_content_paths
from tests.conformance.conftest import Ledger
from tests.conformance.corpus import POLLED_AT, Case, client_answering

PROVIDERS = {"openai": WireFormat.OPENAI}
SOURCE = f"openai SDK types v{openai.__version__}"
CREATED_AT = 1758941485
COMPLETED_AT = CREATED_AT + 300
EXPIRES_AT = COMPLETED_AT + 3600
STATE_OF_STATUS = {
    "queued": State.QUEUED,
    "in_progress": State.RUNNING,
    "completed": State.SUCCEEDED,
    "failed": State.FAILED,
}
SDK_STATUSES: tuple[str, ...] = typing.get_args(Video.model_fields["status"].annotation)
ERROR = VideoCreateError(code="moderation_blocked", message="Your request was blocked.")
LIFETIME = timedelta(seconds=DEFAULT_RESULT_TTL_SECONDS[WireFormat.OPENAI])


def sdk_video(status: str, *, optional: bool) -> dict[str, Any]:
    """A `Video` as the SDK models it; `optional`: with every optional field set."""
    extra: dict[str, Any] = {}
    if optional:
        extra = {
            "completed_at": COMPLETED_AT,
            "expires_at": EXPIRES_AT,
            "prompt": "a lighthouse at dusk",
            "remixed_from_video_id": "video_source",
            "error": ERROR if status == "failed" else None,
        }
    video = Video(
        id=f"video_{status}_{'full' if optional else 'bare'}",
        created_at=CREATED_AT,
        model="sora-2",
        object="video",
        progress=100 if status in ("completed", "failed") else 40,
        seconds="8",
        size="1280x720",
        status=typing.cast(Any, status),
        **extra,
    )
    return video.model_dump(mode="json", exclude_none=not optional)


VIDEOS = [(status, optional) for status in SDK_STATUSES for optional in (False, True)]
VIDEO_IDS = [f"{status}-{'full' if optional else 'bare'}" for status, optional in VIDEOS]


def as_case(body: dict[str, Any]) -> Case:
    return Case("openai", str(body["id"]), SOURCE, body, ("poll",), {})


def sdk_event_types() -> tuple[str, ...]:
    (listed,) = typing.get_args(typing.get_type_hints(WebhookCreateParams)["event_types"])
    return typing.get_args(listed)


def sdk_event_models() -> dict[str, Any]:
    """Each SDK webhook event model, by the event type it declares."""
    members = typing.get_args(typing.get_args(UnwrapWebhookEvent)[0])
    return {typing.get_args(m.model_fields["type"].annotation)[0]: m for m in members}


def envelope(event_type: str, data_id: str) -> dict[str, Any]:
    return {
        "id": f"evt_{data_id}",
        "object": "event",
        "created_at": CREATED_AT,
        "type": event_type,
        "data": {"id": data_id},
    }


def sdk_event(event_type: str, data_id: str) -> dict[str, Any] | None:
    """The event built and dumped by its SDK model, or None when that model wants more data."""
    model = sdk_event_models()[event_type]
    try:
        built = model.model_validate(envelope(event_type, data_id))
    except ValueError:
        return None
    dumped: dict[str, Any] = built.model_dump(mode="json")
    return dumped


NON_VIDEO_EVENTS = {
    event_type: body
    for event_type in sorted(sdk_event_models())
    if not event_type.startswith("video.")
    and (body := sdk_event(event_type, f"obj_{event_type.replace('.', '_')}")) is not None
}


# -- the SDK's declarations -------------------------------------------------------------


def test_every_video_status_the_sdk_declares_has_a_state() -> None:
    assert set(SDK_STATUSES) == set(STATE_OF_STATUS)


def test_sdk_lists_the_video_events_we_follow() -> None:
    assert {"video.completed", "video.failed"} <= set(sdk_event_types())


def test_sdk_event_models_share_the_envelope_the_video_events_are_built_with() -> None:
    built = BatchCompletedWebhookEvent.model_validate(envelope("batch.completed", "batch_1"))
    assert set(built.model_dump(mode="json")) == set(envelope("video.completed", "v"))


def test_the_named_non_video_events_are_built_by_the_sdk() -> None:
    named = {"response.completed", "batch.completed", "fine_tuning.job.succeeded"}
    assert named | {"eval.run.succeeded"} <= set(NON_VIDEO_EVENTS)


# -- video objects ------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "optional"), VIDEOS, ids=VIDEO_IDS)
async def test_sdk_video_is_read_by_the_client(status: str, optional: bool) -> None:
    body = sdk_video(status, optional=optional)
    async with client_answering(as_case(body)) as client:
        answer = await client.fetch_status(body["id"])
    observation = answer.observation
    assert observation is not None
    assert (observation.provider_task_id, observation.state) == (
        body["id"],
        STATE_OF_STATUS[status],
    )
    result = result_of(observation) or {}
    if status == "completed":
        assert result["content"] == openai_content_paths(body["id"])
        expected = datetime.fromtimestamp(EXPIRES_AT, UTC) if optional else POLLED_AT + LIFETIME
        assert result["expires_at"] == expected.isoformat()
    else:
        assert "content" not in result
    if status == "failed" and optional:
        assert result["error"] == {"code": ERROR.code, "message": ERROR.message}


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(("status", "optional"), VIDEOS, ids=VIDEO_IDS)
async def test_sdk_video_as_a_signed_callback_sets_the_task(
    ledger: Ledger, status: str, optional: bool
) -> None:
    body = sdk_video(status, optional=optional)
    response, task = await ledger.deliver(
        "openai", WireFormat.OPENAI, orjson.dumps(body), body["id"]
    )
    assert (response.status_code, response.json()) == (200, {"outcome": "applied"})
    assert task is not None
    assert task["state"] == STATE_OF_STATUS[status].value
    if status == "completed":
        assert task["result"]["content"] == openai_content_paths(body["id"])


# -- events -----------------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(
    ("event_type", "state"),
    [("video.completed", State.SUCCEEDED), ("video.failed", State.FAILED)],
)
async def test_sdk_video_event_moves_its_task(
    ledger: Ledger, event_type: str, state: State
) -> None:
    video_id = f"video_event_{state.value}"
    body = orjson.dumps(envelope(event_type, video_id))
    response, task = await ledger.deliver("openai", WireFormat.OPENAI, body, video_id)
    assert (response.status_code, response.json()) == (200, {"outcome": "applied"})
    assert task is not None
    assert task["state"] == state.value


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("event_type", sorted(NON_VIDEO_EVENTS))
async def test_sdk_non_video_event_is_kept_as_ignored(ledger: Ledger, event_type: str) -> None:
    body = orjson.dumps(NON_VIDEO_EVENTS[event_type])
    response, _ = await ledger.deliver("openai", WireFormat.OPENAI, body, None)
    assert (response.status_code, response.json()) == (200, {"outcome": "ignored"})
