"""Which body each format answers a status poll with, and which it sends as a callback."""

from __future__ import annotations

from typing import Any

from simulator import fal, formats, kie, replicate
from simulator.config import SimConfig
from simulator.lifecycle import SimTask
from simulator.media import MediaLinks

OUTPUT_EVENT = "output"


def status_body(
    task: SimTask, now: float, config: SimConfig, links: MediaLinks, queue_position: int = 0
) -> dict[str, Any]:
    """The status answer of `task` at `now` (fal's says its place in the queue)."""
    match task.fmt:
        case "openai":
            return formats.openai_video(task, now, links)
        case "apidot":
            nested = config.apidot_files_under_output
            return formats.apidot_status(task, now, links, nested=nested)
        case "evolink":
            return formats.evolink_task(task, now, links)
        case "replicate":
            return replicate.prediction(task, now, config, links)
        case "fal":
            return fal.status(task, now, queue_position)
        case _:
            return kie.record_info(task, now, links)


def callback_body(
    task: SimTask, now: float, config: SimConfig, links: MediaLinks, event: str = ""
) -> dict[str, Any]:
    """A callback of a per-task-URL format: its status answer, except fal's own webhook body
    and Replicate's `output` event (output there, not yet ended)."""
    if task.fmt == "fal":
        return fal.webhook(task, links)
    if task.fmt == "replicate" and event == OUTPUT_EVENT:
        return replicate.output_event(task, now, config, links)
    return status_body(task, now, config, links)
