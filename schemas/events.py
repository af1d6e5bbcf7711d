"""The events taskledger sends the product: one shape for every provider, versioned.

Pure: a task row (as the ledger holds it) in, the event's JSON out. The JSON Schema of
this shape ships as `schemas/task-event.schema.json`; the README documents it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from schemas.clock import iso
from schemas.states import State

# Bumped only for a change that could break a consumer; new fields keep the version.
SCHEMA_VERSION = "1"
STATE_EVENTS: dict[State, str] = {
    State.QUEUED: "task.queued",
    State.RUNNING: "task.running",
    State.SUCCEEDED: "task.succeeded",
    State.FAILED: "task.failed",
    State.CANCELLED: "task.cancelled",
    State.LOST: "task.lost",
}
CONFLICT = "task.conflict"
ARCHIVED = "task.archived"
EVENT_TYPES = (*STATE_EVENTS.values(), CONFLICT, ARCHIVED)
TASK_FIELDS = (
    "ref",
    "provider",
    "provider_task_id",
    "owner",
    "model",
    "state",
    "progress",
    "result",
    "confirmed",
    "conflict",
    "version",
    "created_at",
    "updated_at",
    "terminal_at",
)


def event_of(state: State) -> str | None:
    """The event a move into `state` sends (none for `submitted`)."""
    return STATE_EVENTS.get(state)


def task_data(row: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """The task as events carry it: its fields, JSON-ready, and its cost when known."""
    values = {name: row.get(name) for name in TASK_FIELDS} | overrides
    result = values.get("result") or {}
    values["cost"] = result.get("cost_credits") if isinstance(result, dict) else None
    return {name: jsonable(value) for name, value in values.items()}


def envelope(event_type: str, data: dict[str, Any], at: datetime) -> dict[str, Any]:
    """The body of one event: its type, when the change happened, the schema version, and
    the task (with `seq`, the transition's place in the change feed, once known)."""
    return {
        "type": event_type,
        "timestamp": iso(at),
        "schema_version": SCHEMA_VERSION,
        "data": data,
    }


def jsonable(value: Any) -> Any:
    """Times as ISO 8601; everything else as it is (already JSON)."""
    return iso(value) if isinstance(value, datetime) else value
