"""The first three providers' response and callback bodies, rendered from a task and an instant,
and what every format shares: task ids, result URLs, error bodies.

`openai` (video objects, thin video events), `apidot` (APIDot, Vidgo) and `evolink`
(EvoLink, AI Video API); see PROVIDERS.md for the shapes copied here. The platforms'
own bodies are in `simulator.replicate`, `simulator.fal` and `simulator.kie`.
"""

from __future__ import annotations

import random
import string
from datetime import UTC, datetime
from typing import Any

from simulator import fal, kie, replicate
from simulator.lifecycle import SimTask
from simulator.media import MediaLinks

EVOLINK_ESTIMATED_SECONDS = 300
ERROR_MESSAGES = {
    "failed": "The generation failed.",
    "cancelled": "The task was cancelled.",
}


def new_task_id(fmt: str, rng: random.Random, now: float) -> str:
    """`video_<hex>` for openai, `task-unified-<unix>-<8 chars>` for the gateways, and each
    platform's own kind of id."""
    if fmt == "openai":
        return f"video_{rng.getrandbits(128):032x}"
    if fmt in PLATFORM_IDS:
        return PLATFORM_IDS[fmt](rng)
    suffix = "".join(rng.choices(string.ascii_lowercase + string.digits, k=8))
    return f"task-unified-{int(now)}-{suffix}"


PLATFORM_IDS = {
    "replicate": replicate.new_prediction_id,
    "fal": fal.new_request_id,
    "kie": kie.new_task_id,
}


def new_event_ids(rng: random.Random) -> tuple[str, str]:
    """An OpenAI event id and the Standard Webhooks message id that carries it."""
    return f"evt_{rng.getrandbits(96):024x}", f"wh_{rng.getrandbits(96):024x}"


def error_of(task: SimTask, now: float) -> dict[str, str] | None:
    """`{"code","message"}` once a task has ended without success, else None."""
    outcome = task.schedule.outcome
    if task.phase(now) != "terminal" or outcome == "succeeded":
        return None
    return {"code": task.error_code() or "failed", "message": ERROR_MESSAGES[outcome]}


def openai_video(task: SimTask, now: float, links: MediaLinks) -> dict[str, Any]:
    """An OpenAI video object as `GET /v1/videos/{id}` answers it; `expires_at` is when its
    content stops being served."""
    schedule = task.schedule
    done = int(schedule.terminal_at) if task.phase(now) == "terminal" else None
    succeeded = done is not None and schedule.outcome == "succeeded"
    expires = links.expires_at(task) if succeeded else None
    return {
        "id": task.task_id,
        "object": "video",
        "model": task.model,
        "status": task.state_word(now),
        "progress": schedule.progress(now),
        "created_at": int(schedule.submitted_at),
        "completed_at": done,
        "expires_at": expires,
        "size": task.request["size"],
        "seconds": task.request["seconds"],
        "remixed_from_video_id": None,
        "error": error_of(task, now),
    }


def openai_event(task: SimTask, event_id: str) -> dict[str, Any]:
    """The thin `video.completed` / `video.failed` webhook event of a finished video."""
    kind = "video.completed" if task.schedule.outcome == "succeeded" else "video.failed"
    return {
        "id": event_id,
        "object": "event",
        "created_at": int(task.schedule.terminal_at),
        "type": kind,
        "data": {"id": task.task_id},
    }


def apidot_status(task: SimTask, now: float, links: MediaLinks, *, nested: bool) -> dict[str, Any]:
    """`{"code":200,"data":{...}}` as the status endpoint answers and callbacks carry it."""
    succeeded = task.state_word(now) == "finished"
    files = [{"file_url": links.url(task), "file_type": "video"}] if succeeded else []
    error = error_of(task, now)
    data: dict[str, Any] = {
        "task_id": task.task_id,
        "status": task.state_word(now),
        "progress": task.schedule.progress(now),
        "files": files,
        "error_message": error["message"] if error else None,
        "created_time": iso_time(task.schedule.submitted_at),
    }
    if nested:
        data["output"] = {"files": data.pop("files")}
    return {"code": 200, "data": data}


def apidot_submitted(task: SimTask) -> dict[str, Any]:
    created = iso_time(task.schedule.submitted_at)
    return {
        "code": 200,
        "data": {"task_id": task.task_id, "status": "not_started", "created_time": created},
    }


def evolink_task(task: SimTask, now: float, links: MediaLinks) -> dict[str, Any]:
    """An EvoLink `video.generation.task` object; cancelled shows as failed/request_cancelled."""
    duration = task.request["duration"]
    body: dict[str, Any] = {
        "id": task.task_id,
        "object": "video.generation.task",
        "model": task.model,
        "type": "video",
        "status": task.state_word(now),
        "progress": task.schedule.progress(now),
        "created": int(task.schedule.submitted_at),
        "task_info": {
            "can_cancel": task.phase(now) != "terminal",
            "estimated_time": EVOLINK_ESTIMATED_SECONDS,
            "video_duration": duration,
        },
        "usage": evolink_usage(duration),
    }
    if body["status"] == "completed":
        body["results"] = [links.url(task)]
    error = error_of(task, now)
    if error:
        body["error"] = error
    return body


def evolink_usage(duration: int) -> dict[str, Any]:
    return {
        "billing_rule": "per_call",
        "credits_reserved": 7 * duration // 4,
        "user_group": "default",
    }


def error_body(fmt: str, status: int, code: str, message: str) -> dict[str, Any]:
    """The error body each format answers with (APIDot and kie wrap it in a `code` envelope)."""
    if fmt == "apidot":
        return {"code": status, "data": None, "error": {"type": code, "message": message}}
    if fmt == "kie":
        return {"code": status, "msg": message, "data": None}
    if fmt == "replicate":
        return {"title": code, "detail": message, "status": status}
    if fmt == "fal":
        return {"detail": message}
    return {"error": {"code": code, "message": message, "type": code, "param": None}}


def iso_time(unix_seconds: float) -> str:
    return datetime.fromtimestamp(unix_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
