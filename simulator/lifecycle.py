"""Task schedules (queued, running, then one outcome) and the ground truth they imply.

A task's state at any instant is computed from its schedule and the clock, never stored.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

from simulator.config import CANCELLING_FORMATS, Lifecycle

Phase = Literal["queued", "running", "terminal"]

# Each format's own word for a phase, and for each outcome once terminal.
PHASE_WORDS: dict[str, dict[str, str]] = {
    "openai": {"queued": "queued", "running": "in_progress"},
    "apidot": {"queued": "not_started", "running": "running"},
    "evolink": {"queued": "pending", "running": "processing"},
    "replicate": {"queued": "starting", "running": "processing"},
    "fal": {"queued": "IN_QUEUE", "running": "IN_PROGRESS"},
    "kie": {"queued": "queuing", "running": "generating"},
}
OUTCOME_WORDS: dict[str, dict[str, str]] = {
    "openai": {"succeeded": "completed", "failed": "failed"},
    "apidot": {"succeeded": "finished", "failed": "failed"},
    "evolink": {"succeeded": "completed", "failed": "failed", "cancelled": "failed"},
    "replicate": {"succeeded": "succeeded", "failed": "failed", "cancelled": "canceled"},
    "fal": {"succeeded": "COMPLETED", "failed": "COMPLETED"},
    "kie": {"succeeded": "success", "failed": "fail"},
}
# A Replicate prediction that fails before it ever ran is `aborted` (its deadline passed);
# a kie task is `waiting` through the first half of its time queued, then `queuing`.
ABORTED = "aborted"
KIE_WAITING = "waiting"
ERROR_CODES: dict[str, dict[str, str]] = {
    "openai": {"failed": "video_generation_failed"},
    "apidot": {"failed": "generation_failed"},
    "evolink": {"failed": "generation_failed", "cancelled": "request_cancelled"},
    "replicate": {},
    "fal": {},
    "kie": {"failed": "500"},
}


@dataclass(frozen=True)
class Schedule:
    """When a task starts running and ends, and how it ends (`succeeded|failed|cancelled`)."""

    submitted_at: float
    started_at: float
    terminal_at: float
    outcome: str

    def phase(self, now: float) -> Phase:
        """Queued at the instant of submission whatever the schedule, then as scheduled."""
        if now <= self.submitted_at or now < self.started_at:
            return "queued"
        return "terminal" if now >= self.terminal_at else "running"

    def progress(self, now: float) -> int:
        """0 while queued, rising linearly while running, 100 only when succeeded."""
        if now < self.started_at:
            return 0
        if now >= self.terminal_at and self.outcome == "succeeded":
            return 100
        span = self.terminal_at - self.started_at
        if span <= 0:
            return 0
        return max(0, min(99, int(99 * (now - self.started_at) / span)))


@dataclass
class SimTask:
    """One submitted task: its request as the provider saw it, its schedule and delivery flags."""

    fmt: str
    task_id: str
    model: str
    request: dict[str, Any]
    callback_url: str | None
    schedule: Schedule
    progress_sent: bool = False
    terminal_sent: bool = False
    prompt: str = ""
    endpoint: str = ""  # the provider base URL it was submitted to, for self links
    server: str = ""  # the simulator's own base URL as its submitter reached it
    words: dict[str, str] | None = None  # a described gateway's words, phase or outcome

    @property
    def key(self) -> str:
        return f"{self.fmt}/{self.task_id}"

    def phase(self, now: float) -> Phase:
        return self.schedule.phase(now)

    def state_word(self, now: float) -> str:
        """The provider's own status word at `now`."""
        phase = self.phase(now)
        if phase == "terminal":
            return self.final_word()
        if self.words is not None:
            return self.words[phase]
        schedule = self.schedule
        if self.fmt == "kie" and phase == "queued":
            halfway = (schedule.submitted_at + schedule.started_at) / 2
            return KIE_WAITING if now < halfway else PHASE_WORDS["kie"]["queued"]
        return PHASE_WORDS[self.fmt][phase]

    def final_word(self) -> str:
        """The provider's own word for the task's final state."""
        if self.words is not None:
            return self.words[self.schedule.outcome]
        schedule = self.schedule
        never_ran = schedule.started_at >= schedule.terminal_at
        if self.fmt == "replicate" and schedule.outcome == "failed" and never_ran:
            return ABORTED
        return OUTCOME_WORDS[self.fmt][schedule.outcome]

    def error_code(self) -> str | None:
        return ERROR_CODES.get(self.fmt, {}).get(self.schedule.outcome)


def draw_outcome(rng: random.Random, lifecycle: Lifecycle, fmt: str) -> str:
    """Pick an outcome by weight; where a format cannot cancel, cancelled means failed."""
    weights = (lifecycle.succeeded_weight, lifecycle.failed_weight, lifecycle.cancelled_weight)
    outcome = rng.choices(("succeeded", "failed", "cancelled"), weights=weights)[0]
    return normalize_outcome(fmt, outcome)


def normalize_outcome(fmt: str, outcome: str) -> str:
    return "failed" if outcome == "cancelled" and fmt not in CANCELLING_FORMATS else outcome


def draw_schedule(rng: random.Random, lifecycle: Lifecycle, fmt: str, now: float) -> Schedule:
    """A random schedule starting at `now`, lasting within the lifecycle's duration bounds."""
    total = rng.uniform(lifecycle.min_duration_s, lifecycle.max_duration_s)
    queued = total * rng.uniform(0.0, lifecycle.max_queued_share)
    outcome = draw_outcome(rng, lifecycle, fmt)
    return Schedule(now, now + queued, now + total, outcome)


def finish_now(schedule: Schedule, now: float, outcome: str | None) -> Schedule:
    """The schedule of a task forced to end at `now` (optionally with another outcome)."""
    return Schedule(
        submitted_at=schedule.submitted_at,
        started_at=min(schedule.started_at, now),
        terminal_at=now,
        outcome=outcome or schedule.outcome,
    )


def ground_truth(task: SimTask, now: float) -> dict[str, Any]:
    """What really happens to `task`, in the provider's words and normalized."""
    schedule = task.schedule
    return {
        "format": task.fmt,
        "task_id": task.task_id,
        "final_state": task.final_word(),
        "normalized": schedule.outcome,
        "error_code": task.error_code(),
        "submitted_at": schedule.submitted_at,
        "started_at": schedule.started_at,
        "terminal_at": schedule.terminal_at,
        "terminal": schedule.phase(now) == "terminal",
        "current_state": task.state_word(now),
        "prompt": task.prompt,
    }
