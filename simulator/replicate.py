"""The Replicate wire format: prediction ids and prediction objects, which status answers and
webhook bodies both are (see PROVIDERS.md, "Replicate")."""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, datetime
from typing import Any

from simulator.config import SimConfig
from simulator.lifecycle import SimTask
from simulator.media import MediaLinks

WEBHOOK_EVENTS: tuple[str, ...] = ("start", "output", "logs", "completed")
THROTTLE_SECONDS = 0.5  # at most one `output` or `logs` webhook per prediction this often
ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
ID_LENGTH = 26
ERRORS = {
    "failed": "The generation failed.",
    "aborted": "The prediction's deadline passed before it started.",
}


def new_prediction_id(rng: random.Random) -> str:
    return "".join(rng.choices(ID_ALPHABET, k=ID_LENGTH))


def prediction(task: SimTask, now: float, config: SimConfig, links: MediaLinks) -> dict[str, Any]:
    """The prediction object as `GET /v1/predictions/{id}` answers it at `now`."""
    schedule, phase = task.schedule, task.phase(now)
    ran = phase != "queued" and schedule.started_at < schedule.terminal_at
    done = phase == "terminal"
    status = task.state_word(now)
    link = f"{task.endpoint}/v1/predictions/{task.task_id}"
    return {
        "id": task.task_id,
        "model": task.model,
        "version": task.request["version"],
        "input": task.request["input"],
        "logs": logs(task, now) if ran else "",
        "output": output(task, config, links) if status == "succeeded" else None,
        "data_removed": False,
        "error": ERRORS.get(status) if done else None,
        "status": status,
        "source": "api",
        "created_at": iso_time(schedule.submitted_at),
        "started_at": iso_time(schedule.started_at) if ran else None,
        "completed_at": iso_time(schedule.terminal_at) if done else None,
        "urls": {"get": link, "cancel": f"{link}/cancel", "web": f"{link}/web"},
        "metrics": {"predict_time": schedule.terminal_at - schedule.started_at} if done else {},
    }


def output_event(task: SimTask, now: float, config: SimConfig, links: MediaLinks) -> dict[str, Any]:
    """The `output` webhook of a succeeding prediction: its output is there, it has not ended."""
    body = prediction(task, now, config, links)
    body.update(status="processing", completed_at=None, metrics={})
    body["output"] = output(task, config, links)
    return body


def output(task: SimTask, config: SimConfig, links: MediaLinks) -> list[str] | str:
    """The result URL, as a list or a bare string (per `replicate_output_shape`)."""
    url = links.url(task)
    shape = config.replicate_output_shape
    if shape == "either":
        shape = "list" if hashlib.sha256(task.task_id.encode()).digest()[0] % 2 else "string"
    return [url] if shape == "list" else url


def logs(task: SimTask, now: float) -> str:
    """One line when it starts, then one per tenth of its progress."""
    steps = task.schedule.progress(now) // 10
    return "Starting generation\n" + "".join(f"{10 * step}% done\n" for step in range(1, steps + 1))


def iso_time(unix_seconds: float) -> str:
    return datetime.fromtimestamp(unix_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
