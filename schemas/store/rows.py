"""What the store's reads hand out: a task, a claim, a task's timeline, each built once
from its row (`Task(**row)`). The write path's working rows stay dicts (`schemas.fold`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Task:
    """A task as the ledger holds it, its fields in the table's column order."""

    ref: str
    provider: str
    provider_task_id: str | None
    owner: str
    model: str
    request: dict[str, Any] | None
    state: str
    progress: int
    result: dict[str, Any] | None
    state_source: str
    authority: int
    confirmed: bool
    conflict: bool
    recovered: bool
    version: int
    created_at: datetime
    updated_at: datetime
    last_event_at: datetime | None
    terminal_at: datetime | None
    next_poll_at: datetime | None
    poll_attempts: int
    lease_owner: str | None
    lease_until: datetime | None
    submission: str | None
    attention: str | None


@dataclass(frozen=True, slots=True)
class Claim:
    """A task leased to a reconciler for one pass: what it needs to poll or submit it."""

    ref: str
    provider: str
    provider_task_id: str | None
    state: str
    confirmed: bool
    model: str
    request: dict[str, Any] | None
    created_at: datetime
    poll_attempts: int
    submission: str | None
    result: dict[str, Any] | None
    attention: str | None


@dataclass(frozen=True, slots=True)
class DeliveryEntry:
    """A delivery kept for a task, without its body."""

    id: int
    provider: str
    delivery_key: str
    task_ref: str | None
    provider_task_id: str
    headers: dict[str, Any] | None
    auth: str
    state: str | None
    outcome: str
    reason: str | None
    duplicate_count: int
    received_at: datetime
    last_seen_at: datetime


@dataclass(frozen=True, slots=True)
class PollEntry:
    """One answer (or failure) of the provider's status endpoint, as kept."""

    id: int
    task_ref: str
    observed_at: datetime
    http_status: int | None
    state: str | None
    progress: int | None
    body: str | None
    error: str | None
    outcome: str


@dataclass(frozen=True, slots=True)
class TransitionEntry:
    """One change of a task's state, `seq` in commit order."""

    seq: int
    task_ref: str
    from_state: str | None
    to_state: str
    source: str
    source_id: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class Artifact:
    """One output of a succeeded task in the archive, or waiting for it."""

    id: int
    task_ref: str
    provider: str
    name: str
    source: str
    state: str
    expires_at: datetime
    next_attempt_at: datetime
    attempts: int
    lease_owner: str | None
    lease_until: datetime | None
    storage_key: str | None
    size: int | None
    sha256: str | None
    content_type: str | None
    source_host: str | None
    archived_at: datetime | None
    last_error: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ArchiveJob:
    """An artifact leased to an archiver, with what it needs to find its source."""

    artifact: Artifact
    provider_task_id: str | None
    result: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Timeline:
    """A task's deliveries, polls, transitions and archived outputs, each in order: the
    newest `TIMELINE_MAX` of each kind, and how many older ones were left out (`omitted`,
    by kind, zero when none)."""

    deliveries: list[DeliveryEntry]
    polls: list[PollEntry]
    transitions: list[TransitionEntry]
    artifacts: list[Artifact] = field(default_factory=list)
    omitted: dict[str, int] = field(default_factory=dict)
