"""The root error of the shared kernel and the errors the ledger raises."""

from __future__ import annotations


class LedgerError(Exception):
    """Base class of every error raised by `schemas`."""

    def __init__(
        self, message: str, *, task_ref: str | None = None, provider: str | None = None
    ) -> None:
        super().__init__(message)
        self.task_ref = task_ref
        self.provider = provider


class ConfigError(LedgerError):
    """The environment does not describe a runnable service."""


class WireFormatError(LedgerError):
    """A provider body does not match its documented wire format.

    `reason` is a short, stable code for metrics and the ledger (`unknown_status`,
    `unknown_event`, `ignored_event`, `not_object`, `bad_field`, ...); the message says more.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str = "bad_field",
        task_ref: str | None = None,
        provider: str | None = None,
    ) -> None:
        super().__init__(message, task_ref=task_ref, provider=provider)
        self.reason = reason


class IgnoredEvent(WireFormatError):
    """A signed event about something other than a task (OpenAI sends every event type a
    project subscribes to): acknowledged and kept, never folded in."""


class StorageUnavailable(LedgerError):
    """The database could not be reached or refused the write; retry later."""


class ConstraintViolation(LedgerError):
    """A write broke a unique key on every try: the evidence itself is at fault, not the
    database; its neighbours in a batch are written without it."""


class TaskNotFound(LedgerError):
    """No task has this ref."""


class TaskConflict(LedgerError):
    """The change contradicts what the ledger already holds (e.g. another provider task id)."""
