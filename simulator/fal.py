"""The fal.ai queue API's wire format: request ids, queue answers, results and webhook bodies
(see PROVIDERS.md, "fal.ai"). A finished request says only COMPLETED: the result tells how."""

from __future__ import annotations

import random
import uuid
from typing import Any

from simulator.lifecycle import SimTask
from simulator.media import MediaLinks

ERROR_STATUS = 422
FAILURE_DETAIL = [
    {"loc": ["body", "prompt"], "msg": "The generation failed.", "type": "generation_error"}
]
PAYLOAD_ERROR = "Failed to serialize the response payload: it is too large to be sent."


def new_request_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def app_of(model: str) -> str:
    """The app a model path belongs to (`owner/app`): subpaths are not part of it."""
    return "/".join(model.split("/")[:2])


def request_url(task: SimTask) -> str:
    return f"{task.endpoint}/{app_of(task.model)}/requests/{task.task_id}"


def submitted(task: SimTask) -> dict[str, Any]:
    """The submit answer: where to poll, fetch and cancel."""
    url = request_url(task)
    return {
        "request_id": task.task_id,
        "response_url": url,
        "status_url": f"{url}/status",
        "cancel_url": f"{url}/cancel",
        "queue_position": 0,
    }


def status(task: SimTask, now: float, queue_position: int) -> dict[str, Any]:
    """`IN_QUEUE` (with its place), `IN_PROGRESS` or `COMPLETED`, success or not."""
    word = task.state_word(now)
    body: dict[str, Any] = {"status": word, "request_id": task.task_id}
    body["response_url"] = request_url(task)
    if word == "IN_QUEUE":
        body["queue_position"] = queue_position
    else:
        body["logs"] = None
    if word == "COMPLETED":
        schedule = task.schedule
        body["metrics"] = {"inference_time": schedule.terminal_at - schedule.started_at}
    return body


def result(task: SimTask, links: MediaLinks) -> tuple[int, dict[str, Any]]:
    """The HTTP status and body of `GET …/requests/{id}` once the request has completed."""
    if task.schedule.outcome != "succeeded":
        return ERROR_STATUS, {"detail": FAILURE_DETAIL}
    video = {
        "url": links.url(task),
        "content_type": "video/mp4",
        "file_name": f"{task.task_id}.mp4",
        "file_size": links.video_bytes,
    }
    return 200, {"video": video}


def webhook(task: SimTask, links: MediaLinks) -> dict[str, Any]:
    """The terminal webhook: `OK` with the result, or `ERROR` with the result's error."""
    code, payload = result(task, links)
    body: dict[str, Any] = {"request_id": task.task_id, "gateway_request_id": task.task_id}
    if code == 200:
        return {**body, "status": "OK", "payload": payload}
    return {**body, "status": "ERROR", "error": f"Invalid status code: {code}", "payload": payload}
