"""The retry policy in one place: backoff between attempts, the next poll's delay, the
pace after a failure or a refusal, Retry-After and the HTTP-dates it counts from."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

DEFAULT_RETRY_AFTER_SECONDS = 5.0
MAX_RETRY_AFTER_SECONDS = 3600.0
MAX_POLL_DELAY_SECONDS = 3600.0
# A refused request will not change soon: it is asked again rarely instead of in a storm,
# paced like a task expected to take this long, already this many polls along.
REFUSAL_EXPECTED_SECONDS = 60.0
REFUSAL_POLLS_AHEAD = 4
# Enough doublings to reach any sane cap; keeps 2**n from overflowing a float.
_MAX_DOUBLINGS = 64
_RETRY_AFTER_MAX_CHARS = 64


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to wait: inline retries of one call, and re-polls of a task.

    `jitter` is the share of each backoff drawn at random (1.0 = full jitter, 0.0 = none);
    `poll_jitter` the share taken off a poll delay at random, so polls spread but never
    come later than the un-jittered delay. A refused request is asked again as if its task
    were expected to take `refusal_expected_seconds` and `refusal_polls_ahead` polls along.
    """

    attempts: int = 3
    base_delay_seconds: float = 0.5
    max_delay_seconds: float = 30.0
    jitter: float = 1.0
    min_poll_delay_seconds: float = 5.0
    max_poll_delay_seconds: float = MAX_POLL_DELAY_SECONDS
    poll_jitter: float = 0.2
    refusal_expected_seconds: float = REFUSAL_EXPECTED_SECONDS
    refusal_polls_ahead: int = REFUSAL_POLLS_AHEAD
    default_retry_after_seconds: float = DEFAULT_RETRY_AFTER_SECONDS
    max_retry_after_seconds: float = MAX_RETRY_AFTER_SECONDS
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")
        for name in ("jitter", "poll_jitter"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")

    def backoff(self, attempt: int) -> float:
        """The wait after failed attempt number `attempt` (1-based): full-jitter exponential,
        within [0, max_delay_seconds]."""
        ceiling = _doubled(self.base_delay_seconds, attempt - 1, self.max_delay_seconds)
        return self._jittered(ceiling, self.jitter)

    def next_poll_delay(
        self, poll_attempts: int, expected_seconds: float, cap_seconds: float
    ) -> float:
        """When to poll a still-running task again, after `poll_attempts` polls so far:
        from max(min_poll_delay_seconds, expected/10), doubling per poll, up to `cap_seconds`."""
        start = max(self.min_poll_delay_seconds, expected_seconds / 10)
        ceiling = _doubled(start, poll_attempts, cap_seconds)
        return self._jittered(ceiling, self.poll_jitter)

    def after_failure(self, attempt: int) -> float:
        """When to ask again after failed attempt number `attempt` (1-based) that may succeed
        if repeated (a timeout, a 5xx): the backoff, plus the least delay between polls."""
        return self.backoff(attempt) + self.min_poll_delay_seconds

    def after_refusal(self, attempt: int) -> float:
        """When to ask again after refused attempt number `attempt` (1-based): rarely."""
        return self.next_poll_delay(
            attempt + self.refusal_polls_ahead,
            self.refusal_expected_seconds,
            self.max_poll_delay_seconds,
        )

    def retry_after(self, header: str | None, now: datetime) -> float:
        """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); the default
        when it is missing or unreadable; never negative, never over `max_retry_after_seconds`."""
        seconds = parse_retry_after(header, now)
        if seconds is None:
            return self.default_retry_after_seconds
        return min(max(0.0, seconds), self.max_retry_after_seconds)

    def _jittered(self, ceiling: float, share: float) -> float:
        return ceiling * (1.0 - share * self.rng.random())


def parse_retry_after(header: str | None, now: datetime) -> float | None:
    """Retry-After as seconds from `now` (may be negative for a past date); None if unreadable."""
    text = (header or "").strip()
    if not text or len(text) > _RETRY_AFTER_MAX_CHARS:
        return None
    if text.isascii() and text.replace(".", "", 1).isdigit():
        return float(text)
    moment = parse_http_date(text)
    return None if moment is None else (moment - now).total_seconds()


def parse_http_date(text: str) -> datetime | None:
    """An HTTP-date (a `Date` or `Retry-After` header) as an aware datetime, UTC when it
    names no zone; None if unreadable."""
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):  # a year or hour past any
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _doubled(start: float, doublings: int, cap: float) -> float:
    """`start * 2**doublings`, at most `cap`, never negative."""
    exponent = min(max(0, doublings), _MAX_DOUBLINGS)
    return max(0.0, min(cap, start * math.ldexp(1.0, exponent)))
