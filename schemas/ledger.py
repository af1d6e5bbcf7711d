"""The evidence the ledger folds in (callbacks, polls, expiry) and how it becomes a `Report`.

Pure: these types carry what the store needs; the store decides and writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from schemas.states import REAL_TERMINAL, Outcome, Report, Snapshot, Source, State
from schemas.wire import Observation

# What makes a delivery unique in the ledger: provider, provider's task id, message key.
DeliveryId = tuple[str, str, str]


class Auth(StrEnum):
    """How a delivery proved it came from the provider."""

    TOKEN = "token"  # noqa: S105 - the name of a method, not a secret
    SIGNATURE = "signature"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One authenticated callback, ready to be stored and merged."""

    provider: str
    delivery_key: str
    body: bytes
    headers: dict[str, str]
    auth: Auth
    observation: Observation
    received_at: datetime
    task_ref: str | None = None

    @property
    def signed(self) -> bool:
        return self.auth is Auth.SIGNATURE

    @property
    def identity(self) -> DeliveryId:
        return self.provider, self.observation.provider_task_id, self.delivery_key


@dataclass(frozen=True, slots=True)
class Poll:
    """One answer (or failure) of the provider's status endpoint for one task."""

    task_ref: str
    observed_at: datetime
    next_poll_at: datetime | None
    observation: Observation | None = None
    http_status: int | None = None
    body: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Expiry:
    """The reconciler gives up on a task that outlived its provider's maximum age."""

    task_ref: str
    at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class Submission:
    """What came of submitting a task to its provider on the owner's behalf."""

    task_ref: str
    at: datetime
    status: SubmissionStatus
    next_poll_at: datetime | None
    observation: Observation | None = None
    error: str | None = None


class SubmissionStatus(StrEnum):
    PENDING = "pending"  # not sent yet, or refused in a way worth trying again
    SENT = "sent"
    REJECTED = "rejected"  # the provider refused it: the task failed
    UNKNOWN = "unknown"  # it may have reached the provider: never sent twice


Evidence = Delivery | Poll | Expiry | Submission


@dataclass(frozen=True, slots=True)
class Stored:
    """What became of one piece of evidence once committed."""

    outcome: Outcome
    task_ref: str | None = None
    state: State | None = None
    refusal: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def refused(self) -> bool:
        return self.refusal is not None


def report_of(observation: Observation, source: Source, *, signed: bool = True) -> Report:
    return Report(
        state=observation.state,
        source=source,
        signed=signed,
        progress=observation.progress or 0,
        result=result_of(observation),
    )


def result_of(observation: Observation) -> dict[str, Any] | None:
    """The parts of a provider answer worth keeping: media URLs, error, expiry."""
    result: dict[str, Any] = {}
    if observation.result_urls:
        result["urls"] = list(observation.result_urls)
    if observation.error_code or observation.error_message:
        result["error"] = {"code": observation.error_code, "message": observation.error_message}
    if observation.extra:
        result.update(observation.extra)
    return result or None


def settled(snapshot: Snapshot) -> bool:
    """Nothing left to ask the provider: a confirmed real terminal state."""
    return snapshot.state in REAL_TERMINAL and snapshot.confirmed
