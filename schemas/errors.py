"""The root error of the shared kernel, the errors the ledger raises, and the exit code each
refusal to start ends a process with."""

from __future__ import annotations

# How a process that refuses to start exits (README, "Settings and exit codes").
EXIT_FAILED = 1
EXIT_BAD_SETTING = 2
EXIT_DATABASE_UNREACHABLE = 3
EXIT_IN_USE = 4


class LedgerError(Exception):
    """Base class of every error raised by `schemas`."""

    def __init__(
        self, message: str, *, task_ref: str | None = None, provider: str | None = None
    ) -> None:
        super().__init__(message)
        self.task_ref = task_ref
        self.provider = provider


class ConfigError(LedgerError):
    """The environment does not describe a runnable service. Its message is one line that
    names the variable at fault; `exit_code` is how the process refusing to start exits."""

    exit_code = EXIT_BAD_SETTING


class DatabaseUnreachable(ConfigError):
    """At start-up, `TASKLEDGER_DATABASE_URL` names a database that does not answer, or one
    that is not at the newest migration."""

    exit_code = EXIT_DATABASE_UNREACHABLE


class DatabaseNotMigrated(DatabaseUnreachable):
    """At start-up, the database answers but is not at the newest migration."""


class InUse(ConfigError):
    """At start-up, a port to listen on, or the SQLite file, is held by another process."""

    exit_code = EXIT_IN_USE


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


class ValueRefused(LedgerError):
    """PostgreSQL refused a value a write carried (a data exception, SQLSTATE class 22: a
    character or a number it cannot store). The write's fault, not the database's: like
    any error but an outage, it splits the batch holding it, so that it fails alone."""


class ConstraintViolation(LedgerError):
    """A write broke a unique key on every try: the evidence itself is at fault, not the
    database; its neighbours in a batch are written without it."""


class TaskNotFound(LedgerError):
    """No task has this ref."""


class TaskConflict(LedgerError):
    """The change contradicts what the ledger already holds (e.g. another provider task id)."""
