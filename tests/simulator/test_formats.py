"""Wire bodies rendered from tasks."""

from __future__ import annotations

import random
import re

from simulator import Schedule, SimTask
from simulator.formats import (
    apidot_status,
    error_body,
    evolink_task,
    new_event_ids,
    new_task_id,
    openai_event,
    openai_video,
)
from simulator.media import MediaLinks

MEDIA = "https://media.example.invalid"
LINKS = MediaLinks(b"key", ttl_s=3600, base_url=MEDIA)
OPENAI_FIELDS = {
    "id",
    "object",
    "model",
    "status",
    "progress",
    "created_at",
    "completed_at",
    "expires_at",
    "size",
    "seconds",
    "error",
}


def make_task(fmt: str, outcome: str = "succeeded") -> SimTask:
    request = {"seconds": "8", "size": "1280x720", "duration": 8, "aspect_ratio": "16:9"}
    return SimTask(fmt, "id-1", "sora-2", request, None, Schedule(100.0, 101.0, 111.0, outcome))


def test_openai_video_carries_every_documented_field() -> None:
    video = openai_video(make_task("openai"), 200.0, LINKS)
    assert set(video) >= OPENAI_FIELDS
    assert (video["status"], video["progress"], video["seconds"]) == ("completed", 100, "8")
    assert video["expires_at"] == video["completed_at"] + 3600


def test_failed_openai_video_has_an_error_and_no_expiry() -> None:
    video = openai_video(make_task("openai", "failed"), 200.0, LINKS)
    assert video["error"]["code"] == "video_generation_failed"
    assert video["expires_at"] is None


def test_running_openai_video_has_no_completion_time() -> None:
    video = openai_video(make_task("openai"), 105.0, LINKS)
    assert (video["status"], video["completed_at"], video["error"]) == ("in_progress", None, None)


def test_openai_event_names_only_the_video() -> None:
    event = openai_event(make_task("openai", "failed"), "evt_1")
    assert event == {
        "id": "evt_1",
        "object": "event",
        "created_at": 111,
        "type": "video.failed",
        "data": {"id": "id-1"},
    }


def test_apidot_status_lists_the_video_file_once_finished() -> None:
    body = apidot_status(make_task("apidot"), 200.0, LINKS, nested=False)
    (file,) = body["data"]["files"]
    assert body["code"] == 200
    assert file["file_type"] == "video"
    assert file["file_url"].startswith(f"{MEDIA}/apidot/id-1.mp4?expires=3711&sig=")
    assert body["data"]["error_message"] is None


def test_apidot_status_can_nest_files_under_output() -> None:
    body = apidot_status(make_task("apidot"), 200.0, LINKS, nested=True)
    assert body["data"]["output"]["files"][0]["file_type"] == "video"


def test_failed_apidot_status_has_an_error_message_and_no_files() -> None:
    data = apidot_status(make_task("apidot", "failed"), 200.0, LINKS, nested=False)["data"]
    assert (data["status"], data["files"]) == ("failed", [])
    assert data["error_message"]


def test_evolink_task_lists_results_once_completed() -> None:
    body = evolink_task(make_task("evolink"), 200.0, LINKS)
    assert body["results"] == [LINKS.url(make_task("evolink"))]
    assert body["results"][0].startswith(f"{MEDIA}/evolink/id-1.mp4?expires=3711&sig=")
    assert body["object"] == "video.generation.task"
    assert "error" not in body


def test_cancelled_evolink_task_is_failed_with_request_cancelled() -> None:
    body = evolink_task(make_task("evolink", "cancelled"), 200.0, LINKS)
    assert (body["status"], body["error"]["code"]) == ("failed", "request_cancelled")
    assert "results" not in body


def test_task_ids_have_each_providers_shape() -> None:
    rng = random.Random(0)
    assert re.fullmatch(r"video_[0-9a-f]{32}", new_task_id("openai", rng, 1.0))
    assert re.fullmatch(
        r"task-unified-1757169743-[a-z0-9]{8}", new_task_id("evolink", rng, 1757169743.5)
    )


def test_event_ids_are_an_evt_and_a_message_id() -> None:
    event_id, webhook_id = new_event_ids(random.Random(0))
    assert (event_id[:4], webhook_id[:3]) == ("evt_", "wh_")


def test_apidot_errors_keep_the_code_envelope() -> None:
    assert error_body("apidot", 404, "not_found", "gone")["code"] == 404
