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
    """A provider body does not match its documented wire format."""


class StorageUnavailable(LedgerError):
    """The database could not be reached or refused the write; retry later."""


class TaskNotFound(LedgerError):
    """No task has this ref."""


class TaskConflict(LedgerError):
    """The change contradicts what the ledger already holds (e.g. another provider task id)."""
