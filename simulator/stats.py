"""Counters the simulator keeps about what it did: callbacks (and each message's answers),
submits, polls, concurrency, poll rates, media downloads."""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

from simulator.config import FORMATS
from simulator.sent import SentLog
from simulator.tricks import TRICK_COUNTERS

CALLBACK_COUNTERS = (
    "scheduled",
    "sent",
    "delivered",
    "dropped",
    "duplicated",
    "duplicate_copies",
    "delayed",
    "reordered",
    "forged",
    "retried",
    "failed",
    "transport_errors",
    *TRICK_COUNTERS,
)
POLL_COUNTERS = (
    "total",
    "ok",
    "not_found",
    "unauthorized",
    "unavailable",
    "rate_limited",
    "injected_429",
    "injected_500",
    "slow",
    "timed_out",
)
# Media downloads by how they were answered (the fault ones: see `simulator.downloads`).
DOWNLOAD_COUNTERS = (
    "served",
    "bad_signature",
    "expired",
    "not_found",
    "redirected",
    "truncated",
    "injected_500",
    "slow",
)
RATE_WINDOW_SECONDS = 1.0


class Stats:
    """Mutable counters; `as_dict()` is the JSON served at `GET /_sim/stats`."""

    def __init__(self) -> None:
        self.callbacks: Counter[str] = Counter({name: 0 for name in CALLBACK_COUNTERS})
        self.polls: Counter[str] = Counter({name: 0 for name in POLL_COUNTERS})
        self.downloads: Counter[str] = Counter({name: 0 for name in DOWNLOAD_COUNTERS})
        self.poll_status_codes: Counter[str] = Counter()
        self.submits_by_format: Counter[str] = Counter({fmt: 0 for fmt in FORMATS})
        # Submits accepted per `{format}/{prompt}`: give each task a prompt of its own, and
        # a client that sends one task twice shows as a count of 2.
        self.submits_by_prompt: Counter[str] = Counter()
        self.sent = SentLog()
        self.polls_by_format: Counter[str] = Counter({fmt: 0 for fmt in FORMATS})
        self.polls_per_task: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()
        self.max_in_flight_per_task: Counter[str] = Counter()
        self.poll_times: dict[str, list[float]] = {fmt: [] for fmt in FORMATS}
        self.max_polls_in_1s: Counter[str] = Counter({fmt: 0 for fmt in FORMATS})
        self._recent: dict[str, deque[float]] = {fmt: deque() for fmt in FORMATS}

    def poll_started(self, fmt: str, task_id: str, now: float) -> str:
        """Count a poll arriving for `task_id`; returns the key to hand to `poll_finished`."""
        key = f"{fmt}/{task_id}"
        self.polls["total"] += 1
        self.polls_by_format[fmt] += 1
        self.polls_per_task[key] += 1
        self.in_flight[key] += 1
        self.max_in_flight_per_task[key] = max(
            self.max_in_flight_per_task[key], self.in_flight[key]
        )
        self._note_poll_time(fmt, now)
        return key

    def poll_finished(self, key: str, status_code: int) -> None:
        self.in_flight[key] -= 1
        if self.in_flight[key] <= 0:
            del self.in_flight[key]
        self.poll_status_codes[str(status_code)] += 1

    def _note_poll_time(self, fmt: str, now: float) -> None:
        self.poll_times.setdefault(fmt, []).append(now)
        recent = self._recent.setdefault(fmt, deque())
        recent.append(now)
        while recent and recent[0] <= now - RATE_WINDOW_SECONDS:
            recent.popleft()
        self.max_polls_in_1s[fmt] = max(self.max_polls_in_1s[fmt], len(recent))

    def as_dict(self, *, poll_times: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "callbacks": dict(self.callbacks),
            "polls": dict(self.polls),
            "downloads": dict(self.downloads),
            "poll_status_codes": dict(self.poll_status_codes),
            "callback_answers": self.sent.answers(),
            "submits_by_format": dict(self.submits_by_format),
            "submits_by_prompt": dict(self.submits_by_prompt),
            "polls_by_format": dict(self.polls_by_format),
            "max_polls_in_1s": dict(self.max_polls_in_1s),
            "polls_per_task": dict(self.polls_per_task),
            "max_in_flight_per_task": dict(self.max_in_flight_per_task),
            "max_in_flight": max(self.max_in_flight_per_task.values(), default=0),
            "in_flight": sum(self.in_flight.values()),
        }
        if poll_times:
            data["poll_times"] = {fmt: list(times) for fmt, times in self.poll_times.items()}
        return data
