"""Provider bodies normalized into observations; anything malformed is a WireFormatError."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.errors import IgnoredEvent, WireFormatError
from schemas.states import State
from schemas.wire import (
    MESSAGE_MAX_CHARS,
    Observation,
    WireFormat,
    build_submit_body,
    normalize_callback,
    normalize_status,
    parse_submit_response,
    status_path,
    submit_path,
    task_id_hint,
    task_id_of,
)

OPENAI = WireFormat.OPENAI
APIDOT = WireFormat.APIDOT
EVOLINK = WireFormat.EVOLINK
AIVIDEOAPI = WireFormat.AIVIDEOAPI
DAY = 86_400.0
NOW = datetime(2025, 10, 1, 13, 0, tzinfo=UTC)

VIDEO_ID = "video_68d7512d07848190b3e45da0ecbebcde004da08e1e0678d5"
GATEWAY_ID = "task-unified-1757169743-7cvnl5zw"
MP4 = "https://cdn.example.com/out/clip.mp4"
THUMB = "https://cdn.example.com/out/clip.jpg"


def openai_video(**changes: object) -> dict[str, object]:
    video: dict[str, object] = {
        "id": VIDEO_ID,
        "object": "video",
        "model": "sora-2",
        "status": "completed",
        "progress": 100,
        "created_at": 1758941485,
        "completed_at": 1758941785,
        "expires_at": 1758945385,
        "size": "1280x720",
        "seconds": "8",
        "error": None,
    }
    return {**video, **changes}


def openai_event(event_type: str = "video.completed") -> dict[str, object]:
    return {
        "id": "evt_abc123",
        "object": "event",
        "created_at": 1758941485,
        "type": event_type,
        "data": {"id": VIDEO_ID},
    }


def apidot_body(**changes: object) -> dict[str, object]:
    data: dict[str, object] = {
        "task_id": GATEWAY_ID,
        "status": "finished",
        "progress": 100,
        "files": [{"file_url": MP4, "file_type": "video"}],
        "error_message": None,
        "created_time": "2025-10-01T12:00:00Z",
    }
    return {"code": 200, "data": {**data, **changes}}


def evolink_body(**changes: object) -> dict[str, object]:
    task: dict[str, object] = {
        "id": GATEWAY_ID,
        "object": "video.generation.task",
        "status": "completed",
        "progress": 100,
        "created": 1757169743,
        "model": "sora-2",
        "results": [MP4],
        "task_info": {"can_cancel": False, "estimated_time": 300},
    }
    return {**task, **changes}


def aivideoapi_body(**changes: object) -> dict[str, object]:
    """The status answer third-party clients read: `output.urls`, `error` as an object."""
    task: dict[str, object] = {
        "id": AIV_ID,
        "status": "completed",
        "progress": 100,
        "output": {"urls": [MP4]},
        "error": None,
    }
    return {**task, **changes}


AIV_ID = "3f1c9a52-6d0e-4e0b-9a57-0c2f4c1d7e88"


# -- documented status strings ----------------------------------------------------------

STATUS_TABLE = [
    (OPENAI, openai_video, "queued", State.QUEUED),
    (OPENAI, openai_video, "in_progress", State.RUNNING),
    (OPENAI, openai_video, "completed", State.SUCCEEDED),
    (OPENAI, openai_video, "failed", State.FAILED),
    (APIDOT, apidot_body, "not_started", State.QUEUED),
    (APIDOT, apidot_body, "running", State.RUNNING),
    (APIDOT, apidot_body, "finished", State.SUCCEEDED),
    (APIDOT, apidot_body, "failed", State.FAILED),
    (EVOLINK, evolink_body, "pending", State.QUEUED),
    (EVOLINK, evolink_body, "processing", State.RUNNING),
    (EVOLINK, evolink_body, "completed", State.SUCCEEDED),
    (EVOLINK, evolink_body, "failed", State.FAILED),
    (EVOLINK, evolink_body, "cancelled", State.CANCELLED),
    (EVOLINK, evolink_body, "canceled", State.CANCELLED),
    (AIVIDEOAPI, aivideoapi_body, "pending", State.QUEUED),
    (AIVIDEOAPI, aivideoapi_body, "processing", State.RUNNING),
    (AIVIDEOAPI, aivideoapi_body, "completed", State.SUCCEEDED),
    (AIVIDEOAPI, aivideoapi_body, "failed", State.FAILED),
    (AIVIDEOAPI, aivideoapi_body, "cancelled", State.CANCELLED),
]
STATUS_IDS = [f"{fmt}-{status}" for fmt, _, status, _ in STATUS_TABLE]


@pytest.mark.parametrize(("fmt", "make", "status", "state"), STATUS_TABLE, ids=STATUS_IDS)
def test_status_body_maps_documented_status_to_state(
    fmt: WireFormat, make: Callable[..., dict[str, object]], status: str, state: State
) -> None:
    assert normalize_status(fmt, make(status=status)).state is state


@pytest.mark.parametrize(
    ("fmt", "make", "status", "state"),
    [row for row in STATUS_TABLE if row[0] is not OPENAI],
    ids=[i for i in STATUS_IDS if not i.startswith("openai")],
)
def test_gateway_callback_maps_documented_status_to_state(
    fmt: WireFormat, make: Callable[..., dict[str, object]], status: str, state: State
) -> None:
    assert normalize_callback(fmt, make(status=status)).state is state


@pytest.mark.parametrize(
    ("fmt", "body"),
    [
        (OPENAI, openai_video(status="done")),
        (APIDOT, apidot_body(status="completed")),
        (EVOLINK, evolink_body(status="finished")),
        (AIVIDEOAPI, aivideoapi_body(status="succeeded")),
    ],
    ids=["openai", "apidot", "evolink", "aivideoapi"],
)
def test_unknown_status_is_rejected_naming_the_field(fmt: WireFormat, body: object) -> None:
    with pytest.raises(WireFormatError, match=rf"^{fmt} body: field '(data\.)?status'") as caught:
        normalize_status(fmt, body)
    assert caught.value.reason == "unknown_status"


def test_status_matching_ignores_case_and_surrounding_space() -> None:
    assert normalize_status(OPENAI, openai_video(status=" In_Progress ")).state is State.RUNNING


# -- openai ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "state"),
    [("video.completed", State.SUCCEEDED), ("video.failed", State.FAILED)],
    ids=["completed", "failed"],
)
def test_openai_event_type_maps_to_state(event_type: str, state: State) -> None:
    assert normalize_callback(OPENAI, openai_event(event_type)).state is state


def test_openai_event_names_the_video_and_needs_a_fetch() -> None:
    observation = normalize_callback(OPENAI, openai_event())
    assert observation == Observation(
        provider_task_id=VIDEO_ID,
        state=State.SUCCEEDED,
        provider_time=datetime(2025, 9, 27, 2, 51, 25, tzinfo=UTC),
        needs_fetch=True,
    )


@pytest.mark.parametrize("event_type", ["video.created", ""], ids=["video", "empty"])
def test_openai_video_event_of_unknown_type_is_rejected(event_type: str) -> None:
    with pytest.raises(WireFormatError, match="field 'type'") as caught:
        normalize_callback(OPENAI, openai_event(event_type))
    assert caught.value.reason == "unknown_event"


@pytest.mark.parametrize("event_type", ["response.completed", "batch.completed"])
def test_openai_event_about_something_other_than_a_video_is_ignored(event_type: str) -> None:
    with pytest.raises(IgnoredEvent) as caught:
        normalize_callback(OPENAI, openai_event(event_type))
    assert caught.value.reason == "ignored"


def test_openai_callback_accepts_a_full_video_object() -> None:
    observation = normalize_callback(OPENAI, openai_video(status="failed"))
    assert (observation.provider_task_id, observation.state) == (VIDEO_ID, State.FAILED)
    assert not observation.needs_fetch


def test_openai_event_without_data_id_is_rejected() -> None:
    with pytest.raises(WireFormatError, match=r"field 'data.id'"):
        normalize_callback(OPENAI, {**openai_event(), "data": {}})


CONTENT = {
    "video": f"/v1/videos/{VIDEO_ID}/content?variant=video",
    "thumbnail": f"/v1/videos/{VIDEO_ID}/content?variant=thumbnail",
    "spritesheet": f"/v1/videos/{VIDEO_ID}/content?variant=spritesheet",
}


def test_openai_completed_video_gives_id_progress_time_content_and_expiry() -> None:
    observation = normalize_status(OPENAI, openai_video())
    assert observation == Observation(
        provider_task_id=VIDEO_ID,
        state=State.SUCCEEDED,
        progress=100,
        provider_time=datetime(2025, 9, 27, 2, 56, 25, tzinfo=UTC),
        extra={"content": CONTENT, "expires_at": "2025-09-27T03:56:25+00:00"},
    )


def test_openai_videos_own_expiry_wins_over_the_lifetime() -> None:
    observation = normalize_status(OPENAI, openai_video(), result_ttl_seconds=DAY, now=NOW)
    assert observation.extra["expires_at"] == "2025-09-27T03:56:25+00:00"


def test_openai_completed_video_without_expiry_lives_the_lifetime_from_completion() -> None:
    body = openai_video(expires_at=None)
    observation = normalize_status(OPENAI, body, result_ttl_seconds=3600, now=NOW)
    assert observation.extra["expires_at"] == "2025-09-27T03:56:25+00:00"


@pytest.mark.parametrize("status", ["queued", "in_progress", "failed"])
def test_openai_unfinished_video_has_no_content(status: str) -> None:
    body = openai_video(status=status, expires_at=None)
    assert normalize_status(OPENAI, body, result_ttl_seconds=3600, now=NOW).extra == {}
    # Nor an expiry, though the body dates one: it dates no result.
    assert normalize_status(OPENAI, openai_video(status=status)).extra == {}


def test_openai_content_paths_quote_the_video_id() -> None:
    content = normalize_status(OPENAI, openai_video(id="video a/b")).extra["content"]
    assert content == {
        variant: f"/v1/videos/video%20a%2Fb/content?variant={variant}"
        for variant in ("video", "thumbnail", "spritesheet")
    }


def test_openai_event_carries_no_result_for_the_fetch_to_fill() -> None:
    observation = normalize_callback(OPENAI, openai_event(), result_ttl_seconds=DAY, now=NOW)
    assert (observation.extra, observation.result_urls) == ({}, ())


def test_openai_video_time_falls_back_to_created_at() -> None:
    observation = normalize_status(OPENAI, openai_video(status="queued", completed_at=None))
    assert observation.provider_time == datetime(2025, 9, 27, 2, 51, 25, tzinfo=UTC)


def test_openai_video_without_expiry_or_lifetime_records_no_expiry() -> None:
    assert normalize_status(OPENAI, openai_video(expires_at=None)).extra == {"content": CONTENT}


def test_openai_failed_video_carries_error_code_and_message() -> None:
    error = {"code": "moderation_blocked", "message": "The prompt was blocked."}
    observation = normalize_status(OPENAI, openai_video(status="failed", error=error))
    assert (observation.error_code, observation.error_message) == (
        "moderation_blocked",
        "The prompt was blocked.",
    )


def test_openai_video_has_no_result_urls() -> None:
    assert normalize_status(OPENAI, openai_video()).result_urls == ()


# -- apidot ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        apidot_body(),
        apidot_body(files=None, output={"files": [{"file_url": MP4, "file_type": "video"}]}),
    ],
    ids=["data.files", "data.output.files"],
)
def test_apidot_finished_reads_files_from_either_layout(body: object) -> None:
    observation = normalize_callback(APIDOT, body)
    assert (observation.provider_task_id, observation.result_urls) == (GATEWAY_ID, (MP4,))


def test_apidot_files_in_both_layouts_are_merged_without_duplicates() -> None:
    output = {"files": [{"file_url": MP4}, {"file_url": THUMB, "file_type": "image"}]}
    observation = normalize_status(APIDOT, apidot_body(output=output))
    assert observation.result_urls == (MP4, THUMB)


def test_apidot_finished_gives_progress_and_created_time() -> None:
    observation = normalize_status(APIDOT, apidot_body())
    assert (observation.progress, observation.provider_time) == (
        100,
        datetime(2025, 10, 1, 12, 0, tzinfo=UTC),
    )


def test_apidot_failed_carries_error_message() -> None:
    body = apidot_body(status="failed", files=[], error_message="  content policy  ")
    observation = normalize_callback(APIDOT, body)
    assert (observation.state, observation.error_message) == (State.FAILED, "content policy")


def test_apidot_running_without_files_has_no_urls() -> None:
    observation = normalize_status(APIDOT, apidot_body(status="running", progress=40, files=None))
    assert (observation.progress, observation.result_urls) == (40, ())


def test_apidot_answer_with_error_code_is_rejected_with_its_message() -> None:
    with pytest.raises(WireFormatError, match=r"404.*task not found"):
        normalize_status(APIDOT, {"code": 404, "message": "task not found"})


def test_apidot_file_without_url_is_rejected() -> None:
    with pytest.raises(WireFormatError, match=r"field 'data\.files\[0\]\.file_url'"):
        normalize_status(APIDOT, apidot_body(files=[{"file_type": "video"}]))


SCRIPT = "javascript:alert(1)"


@pytest.mark.parametrize(
    ("fmt", "body", "field"),
    [
        (APIDOT, apidot_body(files=[{"file_url": SCRIPT}]), "data.files[0].file_url"),
        (APIDOT, apidot_body(files=[{"file_url": " video "}]), "data.files[0].file_url"),
        (EVOLINK, evolink_body(results=[MP4, SCRIPT]), "results[1]"),
        (EVOLINK, evolink_body(results=[{"url": "video"}]), "results[0].url"),
        (AIVIDEOAPI, aivideoapi_body(output={"urls": ["ftp://cdn.example/a"]}), "output.urls[0]"),
    ],
    ids=["apidot-javascript", "apidot-bare-word", "evolink-javascript", "evolink-bare-word", "ftp"],
)
def test_strict_result_url_that_is_not_http_is_rejected(
    fmt: WireFormat, body: object, field: str
) -> None:
    message = rf"field '{re.escape(field)}' must be an http\(s\) URL"
    with pytest.raises(WireFormatError, match=message) as caught:
        normalize_callback(fmt, body)
    assert caught.value.reason == "bad_field"


def test_strict_result_url_scheme_is_read_in_any_case() -> None:
    url = "HTTPS://cdn.example.com/out/clip.mp4"
    observation = normalize_callback(APIDOT, apidot_body(files=[{"file_url": f" {url} "}]))
    assert observation.result_urls == (url,)


def test_apidot_body_without_data_is_rejected() -> None:
    with pytest.raises(WireFormatError, match="field 'data' must be an object"):
        normalize_callback(APIDOT, {"code": 200})


# -- evolink --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "results",
    [[MP4, THUMB], [{"url": MP4}, {"url": THUMB}]],
    ids=["strings", "objects"],
)
def test_evolink_completed_reads_results(results: list[object]) -> None:
    observation = normalize_callback(EVOLINK, evolink_body(results=results))
    assert observation.result_urls == (MP4, THUMB)


def test_evolink_completed_gives_id_progress_and_created_time() -> None:
    observation = normalize_status(EVOLINK, evolink_body())
    assert (observation.provider_task_id, observation.progress, observation.provider_time) == (
        GATEWAY_ID,
        100,
        datetime(2025, 9, 6, 14, 42, 23, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    "error",
    [{"code": "request_cancelled", "message": "Cancelled by user"}, "request_cancelled"],
    ids=["object", "string"],
)
def test_evolink_failed_with_request_cancelled_is_cancelled(error: object) -> None:
    body = evolink_body(status="failed", results=None, error=error)
    assert normalize_callback(EVOLINK, body).state is State.CANCELLED


def test_evolink_failed_with_other_error_stays_failed() -> None:
    error = {"code": "content_policy_violation", "message": "Blocked"}
    observation = normalize_callback(EVOLINK, evolink_body(status="failed", error=error))
    assert (observation.state, observation.error_code, observation.error_message) == (
        State.FAILED,
        "content_policy_violation",
        "Blocked",
    )


def test_evolink_error_given_as_string_is_the_message() -> None:
    body = evolink_body(status="failed", error="upstream timeout")
    observation = normalize_callback(EVOLINK, body)
    assert (observation.error_code, observation.error_message) == (None, "upstream timeout")


def test_evolink_callback_wrapped_in_data_is_unwrapped() -> None:
    observation = normalize_callback(EVOLINK, {"data": evolink_body(status="processing")})
    assert (observation.provider_task_id, observation.state) == (GATEWAY_ID, State.RUNNING)


def test_evolink_error_of_wrong_type_is_rejected() -> None:
    with pytest.raises(WireFormatError, match="field 'error' must be an object or a string"):
        normalize_status(EVOLINK, evolink_body(status="failed", error=[1]))


def test_error_message_is_capped() -> None:
    body = evolink_body(status="failed", error={"message": "x" * 5000})
    message = normalize_status(EVOLINK, body).error_message
    assert message == "x" * MESSAGE_MAX_CHARS


@pytest.mark.parametrize("credits", [7, 7.5])
def test_evolink_reserved_credits_are_the_tasks_cost(credits: float) -> None:
    body = evolink_body(status="pending", results=None, usage={"credits_reserved": credits})
    assert normalize_status(EVOLINK, body).extra == {"cost_credits": credits}


@pytest.mark.parametrize(
    "usage",
    [None, "7", {"credits_reserved": "7"}, {"credits_reserved": True}, {"other": 1}, 10**30],
    ids=["none", "text", "text-credits", "bool", "absent", "number"],
)
def test_evolink_usage_without_a_credit_number_records_no_cost(usage: object) -> None:
    body = evolink_body(status="pending", results=None, usage=usage)
    assert normalize_status(EVOLINK, body).extra == {}


def test_evolink_huge_credit_number_is_not_kept() -> None:
    body = evolink_body(status="pending", results=None, usage={"credits_reserved": 10**30})
    assert normalize_status(EVOLINK, body).extra == {}


# -- result URL expiry ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "body"),
    [(APIDOT, apidot_body()), (EVOLINK, evolink_body()), (AIVIDEOAPI, aivideoapi_body())],
    ids=str,
)
def test_result_urls_expire_a_lifetime_after_they_were_read(fmt: WireFormat, body: object) -> None:
    observation = normalize_status(fmt, body, result_ttl_seconds=DAY, now=NOW)
    assert observation.extra["expires_at"] == (NOW + timedelta(days=1)).isoformat()


@pytest.mark.parametrize(
    ("fmt", "body"),
    [
        (APIDOT, apidot_body(finished_time="2025-10-01T12:30:00Z")),
        (EVOLINK, evolink_body(completed_at=1759321800)),
        (AIVIDEOAPI, aivideoapi_body(completed_at="2025-10-01T12:30:00Z")),
    ],
    ids=str,
)
def test_result_urls_expire_a_lifetime_after_the_providers_finished_time(
    fmt: WireFormat, body: object
) -> None:
    observation = normalize_callback(fmt, body, result_ttl_seconds=DAY, now=NOW)
    assert observation.extra["expires_at"] == "2025-10-02T12:30:00+00:00"


@pytest.mark.parametrize(
    ("ttl", "now"), [(None, NOW), (DAY, None)], ids=["no-lifetime", "no-clock"]
)
def test_result_urls_without_lifetime_or_start_record_no_expiry(
    ttl: float | None, now: datetime | None
) -> None:
    observation = normalize_status(EVOLINK, evolink_body(), result_ttl_seconds=ttl, now=now)
    assert "expires_at" not in observation.extra


def test_task_without_result_urls_records_no_expiry() -> None:
    body = evolink_body(status="processing", results=None)
    assert normalize_status(EVOLINK, body, result_ttl_seconds=DAY, now=NOW).extra == {}


def test_lifetime_too_long_for_the_calendar_records_no_expiry() -> None:
    observation = normalize_status(EVOLINK, evolink_body(), result_ttl_seconds=1e15, now=NOW)
    assert "expires_at" not in observation.extra


# -- ai video api ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"code": 200, "msg": "success", "data": {"taskId": AIV_ID}},
        {"code": 200, "data": {"task_id": AIV_ID}},
        {"id": AIV_ID, "object": "video.generation.task", "status": "pending"},
    ],
    ids=["data.taskId", "data.task_id", "id"],
)
def test_aivideoapi_submit_answer_is_read_in_every_shape(body: object) -> None:
    observation = parse_submit_response(AIVIDEOAPI, body)
    assert (observation.provider_task_id, observation.state) == (AIV_ID, State.QUEUED)


def test_aivideoapi_status_reads_output_urls_and_results_without_duplicates() -> None:
    body = aivideoapi_body(output={"urls": [MP4, THUMB]}, results=[MP4])
    assert normalize_status(AIVIDEOAPI, body).result_urls == (MP4, THUMB)


def test_aivideoapi_enveloped_status_is_unwrapped() -> None:
    body = {"code": 200, "msg": "ok", "data": aivideoapi_body(status="processing", output=None)}
    observation = normalize_callback(AIVIDEOAPI, body)
    assert (observation.provider_task_id, observation.state) == (AIV_ID, State.RUNNING)


def test_aivideoapi_error_object_gives_code_and_message() -> None:
    error = {"code": "content_violation", "message": "Blocked by moderation"}
    observation = normalize_status(AIVIDEOAPI, aivideoapi_body(status="failed", error=error))
    assert (observation.state, observation.error_code, observation.error_message) == (
        State.FAILED,
        "content_violation",
        "Blocked by moderation",
    )


def test_aivideoapi_refusal_in_its_envelope_is_a_provider_error() -> None:
    with pytest.raises(WireFormatError, match=r"401.*invalid api key") as caught:
        normalize_status(AIVIDEOAPI, {"code": 401, "msg": "invalid api key", "data": None})
    assert caught.value.reason == "provider_error"


def test_evolink_does_not_read_aivideoapi_output_urls() -> None:
    body = evolink_body(results=None, output={"urls": [MP4]})
    assert normalize_status(EVOLINK, body).result_urls == ()


# -- progress and time ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (0, 0),
        (37, 37),
        (37.9, 37),
        ("50", 50),
        (" 50.5 ", 50),
        ("75%", 75),
        (-5, 0),
        (250, 100),
        (10**400, 100),
    ],
    ids=["missing", "zero", "int", "float", "text", "text-float", "percent", "neg", "over", "huge"],
)
def test_progress_is_an_int_clamped_to_0_100(value: object, expected: int | None) -> None:
    assert normalize_status(EVOLINK, evolink_body(progress=value)).progress == expected


@pytest.mark.parametrize(
    "value",
    [True, float("nan"), float("inf"), "fifty", "", [50], {"pct": 50}, "9" * 500],
    ids=["bool", "nan", "inf", "word", "empty", "list", "object", "long-text"],
)
def test_progress_that_is_not_a_number_is_rejected(value: object) -> None:
    with pytest.raises(WireFormatError, match=r"field 'data.progress' must be a finite number"):
        normalize_status(APIDOT, apidot_body(progress=value))


NOON = datetime(2025, 10, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1759320000, NOON),
        (1759320000.0, NOON),
        (1759320000000, NOON),
        ("1759320000", NOON),
        ("2025-10-01T12:00:00Z", NOON),
        ("2025-10-01 12:00:00", NOON),
        ("2025-10-01T14:00:00+02:00", NOON),
        ("yesterday", None),
        (True, None),
        (float("nan"), None),
        (10**400, None),
        (-(10**20), None),
        ("0001-01-01T00:00:00+01:00", None),
        ({"at": 1}, None),
    ],
    ids=[
        "unix",
        "unix-float",
        "unix-ms",
        "unix-text",
        "iso-z",
        "iso-naive",
        "iso-offset",
        "word",
        "bool",
        "nan",
        "huge",
        "huge-negative",
        "before-year-1",
        "object",
    ],
)
def test_provider_time_is_utc_or_none(value: object, expected: datetime | None) -> None:
    observation = normalize_status(APIDOT, apidot_body(created_time=value))
    assert observation.provider_time == expected


# -- malformed bodies -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(WireFormat), ids=str)
@pytest.mark.parametrize("body", [None, [], "video", 3, True], ids=repr)
def test_body_that_is_not_an_object_is_rejected(fmt: WireFormat, body: object) -> None:
    with pytest.raises(WireFormatError, match=f"^{fmt} body must be a JSON object"):
        normalize_callback(fmt, body)


@pytest.mark.parametrize(
    ("fmt", "body", "field"),
    [
        (OPENAI, openai_video(id=None), "id"),
        (OPENAI, openai_video(id=42), "id"),
        (APIDOT, apidot_body(task_id="  "), "data.task_id"),
        (EVOLINK, evolink_body(id=["x"]), "id"),
        (EVOLINK, evolink_body(id="x" * 1000), "id"),
    ],
    ids=["openai-missing", "openai-number", "apidot-blank", "evolink-array", "evolink-long"],
)
def test_bad_task_id_is_rejected_naming_the_field(
    fmt: WireFormat, body: object, field: str
) -> None:
    with pytest.raises(WireFormatError, match=f"field '{field}'"):
        normalize_status(fmt, body)


@pytest.mark.parametrize("fmt", list(WireFormat), ids=str)
def test_status_missing_from_status_body_is_rejected(fmt: WireFormat) -> None:
    bodies = {
        OPENAI: openai_video(),
        APIDOT: apidot_body(),
        EVOLINK: evolink_body(),
        AIVIDEOAPI: aivideoapi_body(),
    }
    body = copy.deepcopy(bodies[fmt])
    body.pop("status", None)
    inner = body.get("data")
    if isinstance(inner, dict):
        inner.pop("status")
    with pytest.raises(WireFormatError, match=r"status'? must be a string, not null"):
        normalize_status(fmt, body)


def test_results_that_are_not_a_list_are_rejected() -> None:
    with pytest.raises(WireFormatError, match="field 'results' must be an array"):
        normalize_status(EVOLINK, evolink_body(results=MP4))


# -- task ids -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "body", "task_id"),
    [
        (OPENAI, openai_event(), VIDEO_ID),
        (OPENAI, openai_video(), VIDEO_ID),
        (APIDOT, apidot_body(), GATEWAY_ID),
        (EVOLINK, evolink_body(), GATEWAY_ID),
        (EVOLINK, {"data": evolink_body()}, GATEWAY_ID),
        (AIVIDEOAPI, aivideoapi_body(), AIV_ID),
        (AIVIDEOAPI, {"code": 200, "data": {"taskId": AIV_ID, "status": "wobbly"}}, AIV_ID),
    ],
    ids=[
        "openai-event",
        "openai-video",
        "apidot",
        "evolink",
        "evolink-wrapped",
        "aivideoapi",
        "aivideoapi-enveloped",
    ],
)
def test_task_id_of_reads_the_provider_task_id(fmt: WireFormat, body: object, task_id: str) -> None:
    assert task_id_of(fmt, body) == task_id


@pytest.mark.parametrize(
    ("fmt", "body"),
    [
        (OPENAI, {"object": "event", "type": "video.completed", "data": {"id": ""}}),
        (OPENAI, {"object": "video"}),
        (APIDOT, {"code": 200, "data": {"task_id": 7}}),
        (EVOLINK, {"object": "video.generation.task"}),
        (AIVIDEOAPI, {"code": 200, "data": {"status": "pending"}}),
    ],
    ids=["openai-event", "openai-video", "apidot", "evolink", "aivideoapi"],
)
def test_task_id_of_rejects_a_missing_id(fmt: WireFormat, body: object) -> None:
    with pytest.raises(WireFormatError):
        task_id_of(fmt, body)
    assert task_id_hint(fmt, body) is None


def test_task_id_hint_reads_the_id_of_a_body_with_an_unknown_status() -> None:
    assert task_id_hint(EVOLINK, evolink_body(status="exploded")) == GATEWAY_ID


# -- submit ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "body", "task_id"),
    [
        (OPENAI, openai_video(status="queued", progress=0, completed_at=None), VIDEO_ID),
        (
            APIDOT,
            {
                "code": 200,
                "data": {
                    "task_id": GATEWAY_ID,
                    "status": "not_started",
                    "created_time": "2025-10-01T12:00:00Z",
                },
            },
            GATEWAY_ID,
        ),
        (
            EVOLINK,
            {
                "id": GATEWAY_ID,
                "object": "video.generation.task",
                "status": "pending",
                "progress": 0,
                "created": 1757169743,
                "task_info": {"can_cancel": True, "estimated_time": 300},
                "usage": {"credits_reserved": 100},
            },
            GATEWAY_ID,
        ),
    ],
    ids=["openai", "apidot", "evolink"],
)
def test_submit_response_gives_task_id_in_queued_state(
    fmt: WireFormat, body: object, task_id: str
) -> None:
    observation = parse_submit_response(fmt, body)
    assert (observation.provider_task_id, observation.state) == (task_id, State.QUEUED)


def test_evolink_submit_answer_keeps_the_reserved_credits() -> None:
    body = {"id": GATEWAY_ID, "status": "pending", "usage": {"credits_reserved": 7}}
    assert parse_submit_response(EVOLINK, body).extra == {"cost_credits": 7}


def test_submit_response_without_status_counts_as_queued() -> None:
    observation = parse_submit_response(EVOLINK, {"id": GATEWAY_ID})
    assert observation.state is State.QUEUED


def test_apidot_submit_refusal_is_rejected_with_its_message() -> None:
    body = {"code": 402, "message": "insufficient_credits", "data": None}
    with pytest.raises(WireFormatError, match=r"402.*insufficient_credits"):
        parse_submit_response(APIDOT, body)


REQUEST: dict[str, object] = {"prompt": "a cafe at sunrise", "seconds": "8", "size": "1280x720"}
CALLBACK = "https://hooks.example.com/cb/tok123"


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        (OPENAI, {"model": "sora-2", **REQUEST}),
        (APIDOT, {"model": "sora-2", "callback_url": CALLBACK, "input": REQUEST}),
        (EVOLINK, {"model": "sora-2", **REQUEST, "callback_url": CALLBACK}),
        (AIVIDEOAPI, {"model": "sora-2", **REQUEST, "callback_url": CALLBACK}),
    ],
    ids=["openai", "apidot", "evolink", "aivideoapi"],
)
def test_submit_body_has_the_format_s_layout(fmt: WireFormat, expected: object) -> None:
    assert build_submit_body(fmt, "sora-2", REQUEST, CALLBACK) == expected


@pytest.mark.parametrize("fmt", list(WireFormat), ids=str)
def test_submit_body_omits_callback_url_when_none(fmt: WireFormat) -> None:
    assert "callback_url" not in build_submit_body(fmt, "sora-2", REQUEST, None)


@pytest.mark.parametrize("fmt", [OPENAI, EVOLINK, AIVIDEOAPI], ids=str)
def test_submit_body_model_argument_wins_over_request(fmt: WireFormat) -> None:
    body = build_submit_body(fmt, "sora-2-pro", {**REQUEST, "model": "other"}, None)
    assert body["model"] == "sora-2-pro"


# -- paths ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "submit", "status"),
    [
        (OPENAI, "/v1/videos", "/v1/videos/abc"),
        (APIDOT, "/api/generate/submit", "/api/generate/status/abc"),
        (EVOLINK, "/v1/videos/generations", "/v1/tasks/abc"),
        (AIVIDEOAPI, "/v1/videos/generations", "/v1/tasks/abc"),
    ],
    ids=["openai", "apidot", "evolink", "aivideoapi"],
)
def test_paths_follow_the_format(fmt: WireFormat, submit: str, status: str) -> None:
    assert (submit_path(fmt), status_path(fmt, "abc")) == (submit, status)


def test_status_path_quotes_the_task_id_as_one_segment() -> None:
    assert status_path(EVOLINK, "a/b?c d") == "/v1/tasks/a%2Fb%3Fc%20d"


@pytest.mark.parametrize("task_id", ["", "  ", ".", ".."], ids=repr)
def test_status_path_rejects_an_id_that_names_no_task(task_id: str) -> None:
    with pytest.raises(WireFormatError):
        status_path(OPENAI, task_id)


# -- any input ------------------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)

FIELD_VALUES = (
    JSON
    | st.sampled_from(
        [
            "video",
            "event",
            "video.failed",
            "failed",
            "completed",
            "finished",
            "request_cancelled",
            "2025-10-01T12:00:00Z",
            200,
            "200",
        ]
    )
    | st.lists(st.text(max_size=5) | st.dictionaries(st.sampled_from(["url", "file_url"]), JSON))
)
VALID_BODIES: list[dict[str, object]] = [
    openai_video(),
    openai_video(status="failed", error={"code": "x", "message": "y"}),
    openai_event(),
    apidot_body(),
    apidot_body(files=None, output={"files": [{"file_url": MP4}]}),
    evolink_body(),
    {"data": evolink_body(status="failed", error={"code": "request_cancelled"})},
    evolink_body(status="pending", usage={"credits_reserved": 7}),
    aivideoapi_body(),
    {"code": 200, "data": aivideoapi_body(error={"code": "x", "message": "y"})},
]


@st.composite
def mutated_bodies(draw: st.DrawFn) -> dict[str, object]:
    """A documented body with one to three fields removed or replaced by any JSON value."""
    body = copy.deepcopy(draw(st.sampled_from(VALID_BODIES)))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        inner = body.get("data")
        target = inner if isinstance(inner, dict) and draw(st.booleans()) else body
        key = draw(st.sampled_from(sorted({*target, "output", "error", "code"})))
        if draw(st.booleans()):
            target.pop(key, None)
        else:
            target[key] = draw(FIELD_VALUES)
    return body


def callback_with_lifetime(fmt: WireFormat, body: object) -> Observation:
    return normalize_callback(fmt, body, result_ttl_seconds=DAY, now=NOW)


PARSERS: list[Callable[[WireFormat, object], object]] = [
    normalize_callback,
    callback_with_lifetime,
    normalize_status,
    parse_submit_response,
    task_id_of,
]


def outcome_of(fmt: WireFormat, body: object) -> list[object]:
    """What each parser makes of `body`; an observation's extra must be storable JSON."""
    results: list[object] = []
    for parse in PARSERS:
        try:
            result = parse(fmt, body)
        except WireFormatError:
            result = None
        if isinstance(result, Observation):
            orjson.dumps(result.extra)
        results.append(result)
    return results


@settings(max_examples=300)
@given(fmt=st.sampled_from(list(WireFormat)), body=JSON)
def test_any_json_value_parses_or_raises_wire_format_error(fmt: WireFormat, body: object) -> None:
    for result in outcome_of(fmt, body):
        assert result is None or isinstance(result, Observation | str)


@settings(max_examples=500)
@given(fmt=st.sampled_from(list(WireFormat)), body=mutated_bodies())
def test_any_mutated_documented_body_parses_or_raises_wire_format_error(
    fmt: WireFormat, body: object
) -> None:
    for result in outcome_of(fmt, body):
        assert result is None or isinstance(result, Observation | str)


@given(fmt=st.sampled_from(list(WireFormat)), task_id=st.text(min_size=1))
def test_status_path_is_one_quoted_segment_or_rejected(fmt: WireFormat, task_id: str) -> None:
    try:
        path = status_path(fmt, task_id)
    except WireFormatError:
        return
    prefix, _, segment = path.rpartition("/")
    assert (prefix, unquote(segment)) == (status_path(fmt, "x").removesuffix("/x"), task_id)
