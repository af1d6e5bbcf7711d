"""Bodies of described gateways: values placed at dotted paths, rendered from a task."""

from __future__ import annotations

from typing import Any

from simulator.described import Description
from simulator.formats import ERROR_MESSAGES
from simulator.lifecycle import SimTask
from simulator.media import MediaLinks


def place(body: dict[str, Any], path: str, value: Any) -> None:
    """Put `value` at `path` in `body`: `a.b` nests objects; `a[].b` (or `a[]`) makes a list
    of `value`'s items, each under `b` (or bare)."""
    head, brackets, rest = path.partition("[]")
    *parents, leaf = head.split(".")
    target = body
    for key in parents:
        target = target.setdefault(key, {})
    if not brackets:
        target[leaf] = value
        return
    items = []
    for item in value:
        if rest:
            inner: dict[str, Any] = {}
            place(inner, rest.lstrip("."), item)
            items.append(inner)
        else:
            items.append(item)
    target[leaf] = items


def status(
    task: SimTask, now: float, description: Description, links: MediaLinks
) -> dict[str, Any]:
    """The task's status answer (and callback body) at `now`."""
    fields = description.body
    body: dict[str, Any] = ok(description)
    place(body, fields["id"], task.task_id)
    place(body, fields["phase"], task.state_word(now))
    if "percent" in fields:
        place(body, fields["percent"], task.schedule.progress(now))
    ended = task.phase(now) == "terminal"
    succeeded = ended and task.schedule.outcome == "succeeded"
    if "urls" in fields and succeeded:
        place(body, fields["urls"], [links.url(task)])
    if "error" in fields and ended and not succeeded:
        place(body, fields["error"], ERROR_MESSAGES[task.schedule.outcome])
    return body


def created(task: SimTask, description: Description) -> dict[str, Any]:
    """The submit answer: the new task's id where the description says."""
    body = ok(description)
    place(body, description.id_at, task.task_id)
    return body


def ok(description: Description) -> dict[str, Any]:
    envelope = description.envelope
    return {envelope.flag: envelope.ok_value} if envelope else {}


def error(description: Description, status_code: int, message: str) -> dict[str, Any]:
    envelope = description.envelope
    if envelope is None:
        return {"error": message}
    body: dict[str, Any] = {envelope.flag: status_code}
    place(body, envelope.error_at, message)
    return body
