"""The reconciler's errors: what went wrong talking to a provider, and whether to try again."""

from __future__ import annotations

from typing import ClassVar


class ProviderError(Exception):
    """Base class of every error the provider clients raise.

    `retryable` says whether the same call may be repeated later without harm and may then
    succeed; `body` is the provider's answer trimmed for the audit (never log it).
    """

    default_retryable: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status_code: int | None = None,
        retry_after_seconds: float | None = None,
        retryable: bool | None = None,
        provider_task_id: str | None = None,
        body: str | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status_code = status_code
        self.retry_after_seconds = retry_after_seconds
        self.retryable = self.default_retryable if retryable is None else retryable
        self.provider_task_id = provider_task_id
        self.body = body


class RateLimited(ProviderError):
    """The provider answered 429; nobody calls it again before `retry_after_seconds`."""


class ProviderUnavailable(ProviderError):
    """A 5xx answer, a transport error or a timeout; `retryable` is False when a submit may
    have reached the provider (a retry could create a second, billed task)."""


class Rejected(ProviderError):
    """The provider refused the request (400, 401, 402, 403, 404, ...): asking again won't help."""

    default_retryable = False


class Unsendable(Rejected):
    """A request that could not be made: the provider's base URL or API key is one no HTTP
    request can carry (a host IDNA cannot encode, a control character in the key, an
    unknown scheme). Nothing reached the provider; the same request fails the same way
    until the setting is changed."""


class BadAnswer(ProviderError):
    """A 2xx answer whose body does not match the provider's wire format."""
