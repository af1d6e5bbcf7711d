"""The kie.ai Market API's wire format: task ids, record answers and callback bodies (see
PROVIDERS.md, "kie.ai"). Times are unix milliseconds; `param` and `resultJson` are JSON text."""

from __future__ import annotations

import random
from typing import Any
from urllib.parse import urlencode

import orjson

from simulator.lifecycle import SimTask, media_url

FAIL_MESSAGE = "The generation failed."
DOWNLOAD_LIFETIME_SECONDS = 20 * 60


def new_task_id(rng: random.Random) -> str:
    return f"task_{rng.getrandbits(128):032x}"


def created(task: SimTask) -> dict[str, Any]:
    return {"code": 200, "msg": "success", "data": {"taskId": task.task_id}}


def record_info(task: SimTask, now: float, media_base_url: str) -> dict[str, Any]:
    """The `GET /api/v1/jobs/recordInfo` answer, which callbacks carry too."""
    return {"code": 200, "msg": "success", "data": record(task, now, media_base_url)}


def record(task: SimTask, now: float, media_base_url: str) -> dict[str, Any]:
    schedule, state = task.schedule, task.state_word(now)
    done = task.phase(now) == "terminal"
    changed = max(t for t in (schedule.submitted_at, schedule.started_at) if t <= now)
    return {
        "taskId": task.task_id,
        "model": task.model,
        "state": state,
        "param": orjson.dumps(task.request).decode(),
        "resultJson": result_json(task, media_base_url) if state == "success" else "",
        "failCode": task.error_code() if state == "fail" else "",
        "failMsg": FAIL_MESSAGE if state == "fail" else "",
        "costTime": millis(schedule.terminal_at - schedule.started_at) if done else None,
        "completeTime": millis(schedule.terminal_at) if done else None,
        "createTime": millis(schedule.submitted_at),
        "updateTime": millis(schedule.terminal_at if done else changed),
    }


def result_json(task: SimTask, media_base_url: str) -> str:
    url = media_url(task, media_base_url)
    return orjson.dumps({"resultUrls": [url]}).decode()


def download_link(url: str, now: float) -> str:
    """A link to `url` valid for 20 minutes."""
    expires = int(now) + DOWNLOAD_LIFETIME_SECONDS
    return f"{url}?{urlencode({'download': 1, 'expires': expires})}"


def millis(seconds: float) -> int:
    return int(seconds * 1000)
