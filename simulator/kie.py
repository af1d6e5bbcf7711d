"""The kie.ai Market API's wire format: task ids, record answers and callback bodies (see
PROVIDERS.md, "kie.ai"). Times are unix milliseconds; `param` and `resultJson` are JSON text."""

from __future__ import annotations

import random
from typing import Any

import orjson

from simulator.lifecycle import SimTask
from simulator.media import MediaLinks

FAIL_MESSAGE = "The generation failed."
DOWNLOAD_LIFETIME_SECONDS = 20 * 60


def new_task_id(rng: random.Random) -> str:
    return f"task_{rng.getrandbits(128):032x}"


def created(task: SimTask) -> dict[str, Any]:
    return {"code": 200, "msg": "success", "data": {"taskId": task.task_id}}


def record_info(task: SimTask, now: float, links: MediaLinks) -> dict[str, Any]:
    """The `GET /api/v1/jobs/recordInfo` answer, which callbacks carry too."""
    return {"code": 200, "msg": "success", "data": record(task, now, links)}


def record(task: SimTask, now: float, links: MediaLinks) -> dict[str, Any]:
    schedule, state = task.schedule, task.state_word(now)
    done = task.phase(now) == "terminal"
    changed = max(t for t in (schedule.submitted_at, schedule.started_at) if t <= now)
    return {
        "taskId": task.task_id,
        "model": task.model,
        "state": state,
        "param": orjson.dumps(task.request).decode(),
        "resultJson": result_json(task, links) if state == "success" else "",
        "failCode": task.error_code() if state == "fail" else "",
        "failMsg": FAIL_MESSAGE if state == "fail" else "",
        "costTime": millis(schedule.terminal_at - schedule.started_at) if done else None,
        "completeTime": millis(schedule.terminal_at) if done else None,
        "createTime": millis(schedule.submitted_at),
        "updateTime": millis(schedule.terminal_at if done else changed),
    }


def result_json(task: SimTask, links: MediaLinks) -> str:
    return orjson.dumps({"resultUrls": [links.url(task)]}).decode()


def download_link(task: SimTask, extension: str, now: float, links: MediaLinks) -> str:
    """A link to a task's file valid for 20 minutes, or until the file expires if sooner."""
    expires = min(int(now) + DOWNLOAD_LIFETIME_SECONDS, links.expires_at(task))
    return links.url(task, extension, expires)


def millis(seconds: float) -> int:
    return int(seconds * 1000)
