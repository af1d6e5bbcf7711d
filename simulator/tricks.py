"""The real providers' tricks: callback bodies their documents do not promise, each at a rate.

Decided per callback event (`Faults.*_rate`, all 0 by default) before it is sent:

- `unknown_status_rate`: an extra callback goes first, saying a status word no document
  lists (APIDot `queued_for_gpu`, EvoLink `rendering`, Replicate `booting`, kie `pending`,
  OpenAI event `video.in_progress`; fal's webhooks say only OK or ERROR: not applied);
- `non_video_event_rate`: an extra, correctly signed OpenAI event of another product
  (`response.completed`, `batch.completed`) goes to the same webhook URL;
- `cancel_spelling_rate`: a cancelled EvoLink task says `cancelled` or `canceled` instead
  of `failed` + `request_cancelled`;
- `envelope_rate`: an EvoLink body comes wrapped as `{"data": {...}}`;
- `wrong_task_id_rate`: a callback sent to its own task's callback URL (gateways and
  platforms) names another task's id (half the time, when there is one) or a made-up one:
  a buggy provider. OpenAI and Replicate webhooks share one URL for every task, so no
  task's own URL can be contradicted there, and a signed body is the provider's own word:
  the fault is not applied to them;
- `gateway_retry_rate`: a fal webhook's `gateway_request_id` is not its `request_id`;
- `payload_error_rate`: a succeeded fal request's webhook has `payload: null` and a
  `payload_error` (the result is still there to fetch);
- `snake_task_id_rate`: a kie callback says `data.task_id` instead of `data.taskId`.
"""

from __future__ import annotations

import copy
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from simulator import fal, formats
from simulator.config import Faults
from simulator.lifecycle import SimTask

UNKNOWN_STATUS_WORDS = {
    "apidot": "queued_for_gpu",
    "evolink": "rendering",
    "replicate": "booting",
    "kie": "pending",
}
UNKNOWN_VIDEO_EVENT = "video.in_progress"
NON_VIDEO_EVENTS = ("response.completed", "batch.completed")
NON_VIDEO_ID_PREFIXES = {"response.completed": "resp", "batch.completed": "batch"}
CANCEL_SPELLINGS = ("cancelled", "canceled")
# Webhooks that come to one signed URL for every task: no task's own URL to contradict.
SHARED_URL_FORMATS = frozenset({"openai", "replicate"})
TRICK_COUNTERS = (
    "unknown_status",
    "non_video_event",
    "cancel_spelling",
    "enveloped",
    "wrong_task_id",
    "gateway_retry",
    "payload_error",
    "snake_task_id",
)


@dataclass(frozen=True)
class Message:
    """One callback body to send for a task event; `names` is the task id the body names.

    An extra OpenAI event carries its own Standard Webhooks message id (`webhook_id`).
    """

    body: dict[str, Any]
    names: str
    tricks: tuple[str, ...] = ()
    webhook_id: str | None = None


class Tricks:
    """Turns a task event's faithful callback body into the messages a tricky provider sends."""

    def __init__(
        self,
        rng: random.Random,
        faults: Callable[[], Faults],
        counts: Counter[str],
        task_ids: Callable[[str], Sequence[str]],
    ) -> None:
        self._rng = rng
        self._faults = faults
        self._counts = counts
        self._task_ids = task_ids

    def _chance(self, rate: float, name: str) -> bool:
        """True at `rate` (no random draw at all when it is 0), counted under `name`."""
        hit = rate > 0 and self._rng.random() < rate
        self._counts[name] += hit
        return hit

    def gateway(self, task: SimTask, body: dict[str, Any], now: float) -> list[Message]:
        """A callback to a task's own URL: maybe an unknown status first, then the callback."""
        faults, fmt = self._faults(), task.fmt
        body, tricks = self._spelled(task, body)
        names = task.task_id
        own_url = fmt not in SHARED_URL_FORMATS
        if own_url and self._chance(faults.wrong_task_id_rate, "wrong_task_id"):
            names = self._wrong_id(task, now)
            body = with_field(fmt, body, ID_KEYS[fmt], names)
            tricks += ("wrong_task_id",)
        body, tricks = self._platform(fmt, body, tricks)
        messages = [Message(body, names, tricks)]
        unknown_word = UNKNOWN_STATUS_WORDS.get(fmt)
        if unknown_word and self._chance(faults.unknown_status_rate, "unknown_status"):
            unknown = with_field(fmt, body, STATUS_KEYS.get(fmt, "status"), unknown_word)
            messages.insert(0, Message(unknown, names, (*tricks, "unknown_status")))
        if fmt == "evolink" and self._chance(faults.envelope_rate, "enveloped"):
            messages = [
                Message({"data": m.body}, m.names, (*m.tricks, "enveloped")) for m in messages
            ]
        return messages

    def _platform(
        self, fmt: str, body: dict[str, Any], tricks: tuple[str, ...]
    ) -> tuple[dict[str, Any], tuple[str, ...]]:
        """fal's and kie's own tricks (see the module docstring)."""
        faults = self._faults()
        if fmt == "fal" and self._chance(faults.gateway_retry_rate, "gateway_retry"):
            body = {**body, "gateway_request_id": formats.new_task_id(fmt, self._rng, 0.0)}
            tricks += ("gateway_retry",)
        succeeded = fmt == "fal" and body.get("status") == "OK"
        if succeeded and self._chance(faults.payload_error_rate, "payload_error"):
            body = {**body, "payload": None, "payload_error": fal.PAYLOAD_ERROR}
            tricks += ("payload_error",)
        if fmt == "kie" and self._chance(faults.snake_task_id_rate, "snake_task_id"):
            body = copy.deepcopy(body)
            body["data"]["task_id"] = body["data"].pop("taskId")
            tricks += ("snake_task_id",)
        return body, tricks

    def _spelled(
        self, task: SimTask, body: dict[str, Any]
    ) -> tuple[dict[str, Any], tuple[str, ...]]:
        """A cancelled EvoLink task's final body, maybe saying `cancelled` or `canceled`."""
        ended_cancelled = task.schedule.outcome == "cancelled" and body.get("status") == "failed"
        if task.fmt != "evolink" or not ended_cancelled:
            return body, ()
        if not self._chance(self._faults().cancel_spelling_rate, "cancel_spelling"):
            return body, ()
        return {**body, "status": self._rng.choice(CANCEL_SPELLINGS)}, ("cancel_spelling",)

    def openai(self, event: dict[str, Any], now: float) -> list[Message]:
        """An OpenAI video event: maybe an unknown video event first, maybe a non-video one."""
        faults = self._faults()
        names = str(event["data"]["id"])
        messages = [Message(event, names)]
        if self._chance(faults.unknown_status_rate, "unknown_status"):
            event_id, webhook_id = formats.new_event_ids(self._rng)
            unknown = {**event, "id": event_id, "type": UNKNOWN_VIDEO_EVENT}
            messages.insert(0, Message(unknown, names, ("unknown_status",), webhook_id))
        if self._chance(faults.non_video_event_rate, "non_video_event"):
            kind = self._rng.choice(NON_VIDEO_EVENTS)
            other = f"{NON_VIDEO_ID_PREFIXES[kind]}_{self._rng.getrandbits(96):024x}"
            event_id, webhook_id = formats.new_event_ids(self._rng)
            body = {"id": event_id, "object": "event", "created_at": int(now), "type": kind}
            body["data"] = {"id": other}
            messages.append(Message(body, other, ("non_video_event",), webhook_id))
        return messages

    def _wrong_id(self, task: SimTask, now: float) -> str:
        """Another task's id of the same format (half the time, if any), else a made-up one."""
        if self._rng.random() < 0.5:
            others = [i for i in self._task_ids(task.fmt)[-1000:] if i != task.task_id]
            if others:
                return self._rng.choice(others)
        return formats.new_task_id(task.fmt, self._rng, now)


ID_KEYS = {
    "apidot": "task_id",
    "evolink": "id",
    "replicate": "id",
    "fal": "request_id",
    "kie": "taskId",
}
STATUS_KEYS = {"kie": "state"}
ENVELOPED_FORMATS = ("apidot", "kie")


def task_object(fmt: str, body: dict[str, Any]) -> dict[str, Any]:
    """The object holding a callback body's task fields (APIDot's and kie's are under `data`)."""
    inner: dict[str, Any] = body["data"] if fmt in ENVELOPED_FORMATS else body
    return inner


def with_field(fmt: str, body: dict[str, Any], name: str, value: Any) -> dict[str, Any]:
    """A copy of a gateway body with one task field replaced."""
    changed = copy.deepcopy(body)
    task_object(fmt, changed)[name] = value
    return changed
