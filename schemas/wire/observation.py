"""What a provider body says about its task (`Observation`), and how long its URLs live."""

from __future__ import annotations

from dataclasses import field
from datetime import datetime, timedelta

from schemas.records import record
from schemas.states import State


@record
class Observation:
    """What one provider body says about one task, in our terms.

    `extra` holds the rest of the task's result, JSON-ready: `expires_at` (ISO 8601 UTC)
    of its result URLs, `content` (OpenAI: variant -> API path fetched with the API key),
    `cost_credits` (EvoLink: credits the provider reserved for the task).
    """

    provider_task_id: str
    state: State
    progress: int | None = None
    result_urls: tuple[str, ...] = ()
    error_code: str | None = None
    error_message: str | None = None
    provider_time: datetime | None = None
    # A thin event (OpenAI `video.completed`) names the outcome but not the result:
    # the reconciler must fetch the task to complete the record.
    needs_fetch: bool = False
    extra: dict[str, object] = field(default_factory=dict)


@record
class Lifetime:
    """How long result URLs live (`ttl_seconds`, None: unknown) and when the body was read."""

    ttl_seconds: float | None = None
    now: datetime | None = None

    def expiry(self, finished: datetime | None) -> datetime | None:
        """`finished` (else `now`) plus the lifetime; None when either is unknown."""
        start = finished or self.now
        if self.ttl_seconds is None or start is None:
            return None
        try:
            return start + timedelta(seconds=self.ttl_seconds)
        except OverflowError:
            return None


UNKNOWN_LIFETIME = Lifetime()
