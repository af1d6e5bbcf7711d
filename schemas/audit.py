"""The audit summary, computed from the store's tasks: pure functions, no SQL and no clock."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from schemas.states import REAL_TERMINAL, State

if TYPE_CHECKING:  # the store's queries import this module
    from schemas.store.rows import Task

HISTOGRAM_BOUNDS_SECONDS = (30, 60, 120, 300, 600, 1800, 3600, math.inf)
DURATION_KEYS = ("duration", "seconds")
RESOLUTION_KEYS = ("resolution", "size")


@dataclass
class ProviderAudit:
    provider: str
    tasks: int = 0
    by_state: Counter[str] = field(default_factory=Counter)
    recovered_by_poll: int = 0
    conflicts: int = 0
    duplicates: int = 0
    unmatched: int = 0
    # Authenticated deliveries kept raw: unreadable, or about no task we follow.
    unrecognized: int = 0
    ignored: int = 0
    needs_attention: int = 0
    durations: list[float] = field(default_factory=list)
    billable_seconds: dict[str, float] = field(default_factory=dict)

    def add(self, task: Task) -> None:
        self.tasks += 1
        self.by_state[task.state] += 1
        self.recovered_by_poll += task.recovered
        self.conflicts += task.conflict
        self.needs_attention += bool(task.attention)
        if task.state in REAL_TERMINAL and task.terminal_at:
            self.durations.append((task.terminal_at - task.created_at).total_seconds())
        if task.state == State.SUCCEEDED:
            seconds, resolution = billable(task.request)
            if seconds:
                self.billable_seconds[resolution] = (
                    self.billable_seconds.get(resolution, 0) + seconds
                )

    @property
    def terminal(self) -> int:
        return sum(self.by_state[s.value] for s in REAL_TERMINAL)

    def summary(self, price_per_second: float | None) -> dict[str, Any]:
        total_seconds = sum(self.billable_seconds.values())
        return {
            "provider": self.provider,
            "tasks": self.tasks,
            "by_state": dict(sorted(self.by_state.items())),
            "terminal": self.terminal,
            "recovered_by_poll": self.recovered_by_poll,
            "missed_callback_rate": (
                round(self.recovered_by_poll / self.terminal, 4) if self.terminal else None
            ),
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "lost": self.by_state[State.LOST.value],
            "unmatched": self.unmatched,
            "unrecognized": self.unrecognized,
            "ignored": self.ignored,
            "needs_attention": self.needs_attention,
            "time_to_terminal_seconds": quantiles(self.durations),
            "billable_seconds": dict(sorted(self.billable_seconds.items())),
            "cost": round(total_seconds * price_per_second, 4) if price_per_second else None,
        }


def billable(request: Any) -> tuple[float, str]:
    """The clip length and resolution a request asked for, where it says so."""
    if not isinstance(request, dict):
        return 0.0, "unknown"
    nested = request.get("input")
    source: dict[str, Any] = nested if isinstance(nested, dict) else request
    seconds = next((source[k] for k in DURATION_KEYS if k in source), None)
    try:
        value = float(seconds) if seconds is not None and not isinstance(seconds, bool) else 0.0
    except (TypeError, ValueError):
        value = 0.0
    resolution = next((str(source[k]) for k in RESOLUTION_KEYS if k in source), "unknown")
    return (value if math.isfinite(value) and value > 0 else 0.0), resolution[:32]


def quantiles(values: list[float]) -> dict[str, float] | None:
    """Median and p95 by the nearest-rank method (exact on small, hand-checked sets)."""
    if not values:
        return None
    ordered = sorted(values)
    return {"median": _rank(ordered, 0.5), "p95": _rank(ordered, 0.95)}


def _rank(ordered: list[float], share: float) -> float:
    index = max(0, math.ceil(share * len(ordered)) - 1)
    return round(ordered[index], 3)


def hour_buckets(tasks: Iterable[Task]) -> list[dict[str, Any]]:
    """Final outcomes per provider per hour of reaching them: the dashboard's time series."""
    buckets: dict[tuple[datetime, str], Counter[str]] = defaultdict(Counter)
    for task in tasks:
        if task.terminal_at and task.state in {*REAL_TERMINAL, State.LOST}:
            hour = task.terminal_at.replace(minute=0, second=0, microsecond=0)
            buckets[(hour, task.provider)][task.state] += 1
    outcomes = ("succeeded", "failed", "cancelled", "lost")
    return [
        {"start": start.isoformat(), "provider": provider, **{o: counts[o] for o in outcomes}}
        for (start, provider), counts in sorted(buckets.items())
    ]


def histogram(audits: Iterable[ProviderAudit]) -> list[dict[str, Any]]:
    """Time from submission to a final state, binned per provider."""
    bins = []
    for audit in audits:
        counts = Counter(_bin(seconds) for seconds in audit.durations)
        for bound in HISTOGRAM_BOUNDS_SECONDS:
            label = "inf" if math.isinf(bound) else bound
            bins.append({"provider": audit.provider, "le_seconds": label, "count": counts[bound]})
    return bins


def _bin(seconds: float) -> float:
    return next(b for b in HISTOGRAM_BOUNDS_SECONDS if seconds <= b)
