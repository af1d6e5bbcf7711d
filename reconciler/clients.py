"""HTTP to the providers: status polls and submits, rate limited and retried by policy.

The only place that catches httpx and aiohttp errors; they leave as `ProviderError`
subclasses. Polls go out on aiohttp's own session (`reconciler.sessions`): httpcore's pool
walks every connection on every request (about 2.5 ms of CPU per poll at 32 in flight),
and httpx's models over aiohttp's pool still cost 3x aiohttp alone. Submits keep httpx
and httpcore: their errors tell a request that never left (safe to send again) from one
that may have reached the provider, and a second submit is a second billed video.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import aiohttp
import httpx
import orjson
import structlog

from reconciler.errors import (
    BadAnswer,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    Rejected,
    Unsendable,
)
from reconciler.limits import Clock, Deadline, RateLimiter, Sleep
from reconciler.retry import RetryPolicy, parse_http_date
from reconciler.sessions import (
    CONNECT_TIMEOUT_SECONDS,
    POOL_TIMEOUT_SECONDS,
    READ_TIMEOUT_SECONDS,
    AiohttpSession,
    Answer,
    AnswerTooLarge,
    CannotSend,
    HttpxSession,
    Session,
)
from schemas.clock import utc_now
from schemas.definition import Definition
from schemas.errors import WireFormatError
from schemas.json_text import storable_json, storable_text
from schemas.settings import ProviderSettings
from schemas.states import REAL_TERMINAL
from schemas.tables import BODY_KEEP_CHARS
from schemas.wire import (
    Observation,
    build_submit_body,
    normalize_result,
    normalize_status,
    parse_submit_response,
    request_headers,
    result_path,
    status_path,
    submit_path,
    task_id_hint,
)
from schemas.wire.defined import request_error

TIMEOUT = httpx.Timeout(
    READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS, pool=POOL_TIMEOUT_SECONDS
)
# A submit must not go out on a connection the server may be closing as idle: it would fail
# after sending (a read error) and leave the task's creation unknown. Servers close idle
# connections after as little as 2 s (gunicorn) or 5 s (uvicorn, Node.js, Apache), and a
# connection kept as long as that races the close; measured against uvicorn with httpx's
# default of 5 s, 7 of 600 submits sent after 4.9-5.15 s idle failed so. A submit opens a new
# connection after 1 s idle instead. (Polls are retried after such a failure.)
SUBMIT_KEEPALIVE_SECONDS = 1.0
KEEPALIVE_SECONDS = 5.0  # httpx's default
# The request never left this process: repeating it cannot create anything twice. (aiohttp's
# connect timeout covers the wait for a pooled connection too.)
_NOT_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
)
# A configuration fault (bad base URL, unusable API key): asking again will not help. (More
# such faults come as `CannotSend`: the libraries raise them as Python's own errors.)
_UNSENDABLE = (
    httpx.InvalidURL,
    httpx.UnsupportedProtocol,
    httpx.LocalProtocolError,
    aiohttp.InvalidURL,
    aiohttp.NonHttpUrlClientError,
)
# No answer after the request may have left: a read timeout, a closed or broken connection.
_TIMED_OUT = (httpx.TimeoutException, aiohttp.ServerTimeoutError)
_TRANSPORT_FAILED = (httpx.HTTPError, aiohttp.ClientError)
# A body in the provider's envelope whose code is not 200: the provider's own refusal, an
# error like a non-2xx answer, not a body we cannot read.
_REFUSED_IN_BODY = "provider_error"
API_VERSION_PREFIX = "/v1"

log = structlog.get_logger("taskledger.reconciler")

_E = TypeVar("_E", bound=ProviderError)
# A task's status or result path: its kind, its provider task id and its model.
_PathOf = Callable[[Any, str, str], str]
# Which answers other than 2xx a request takes as answers rather than as errors.
Accept = Callable[[Answer], bool]
# Awaited once the limiter has admitted a request, just before it goes out.
BeforeSend = Callable[[], Awaitable[None]]


def _NOTHING_ELSE(response: Answer) -> bool:
    return False


def _json_or_none(content: bytes) -> object:
    try:
        return storable_json(content)
    except orjson.JSONDecodeError:
        return None


@dataclass(frozen=True, slots=True)
class StatusAnswer:
    """One status poll: the normalized observation and, for the audit, what the provider said.

    A 2xx JSON answer that does not normalize (an unknown status word, a missing field) has
    no `observation`: `unrecognized` is the reason code (`WireFormatError.reason`, e.g.
    `unknown_status`) and `detail` says more; the caller records it and asks again later.
    """

    observation: Observation | None
    http_status: int
    body: str
    unrecognized: str | None = None
    detail: str | None = None


class ProviderClient:
    """One provider account's API: `fetch_status` and `submit`, within its `RateLimiter`."""

    def __init__(
        self,
        settings: ProviderSettings,
        http: httpx.AsyncClient,
        limiter: RateLimiter,
        policy: RetryPolicy,
        sleep: Sleep = asyncio.sleep,
        *,
        clock: Callable[[], datetime] = utc_now,
        submit_http: httpx.AsyncClient | None = None,
        polls: Session | None = None,
    ) -> None:
        """Polls go out on `polls` if given, else on `http`; submits on `submit_http`, else
        on `http`."""
        self.settings = settings
        self.limiter = limiter
        self.policy = policy
        self._polls = polls or HttpxSession(http)
        self._submits = HttpxSession(submit_http or http)
        self._sleep = sleep
        self._clock = clock
        kind, key = settings.kind, settings.api_key
        self._headers = {"accept": "application/json", **request_headers(kind, key)}
        self._poll_headers = {"accept": "application/json", **request_headers(kind, key, poll=True)}
        # The faults of our requests logged since the last answer: each is logged once, not
        # once a task (a bad setting fails every request alike).
        self._faults_logged: set[str] = set()

    @property
    def name(self) -> str:
        return self.settings.name

    async def fetch_status(
        self, provider_task_id: str, model: str = "", *, deadline: Deadline | None = None
    ) -> StatusAnswer:
        """Poll one task (`model`: the task's, for a path that names it). Transport errors,
        timeouts and 5xx are retried up to `policy.attempts` times with backoff; a 429
        pauses the limiter and raises `RateLimited`; any other refusal raises `Rejected`.
        No wait (for the limiter, before a retry) goes past `deadline`: a request that
        could start only later raises `DeadlineReached` unsent, and a retry that could
        start only later is not made (the last error is raised).

        A 2xx answer that is not JSON, names another task, or carries the provider's error
        code in its envelope raises `BadAnswer` (retryable); JSON that does not normalize
        is answered with `unrecognized` set and no observation. A status word that says
        only "finished" (a definition's `fetch_to_know`) is followed by the result fetch,
        whose answer is the one returned (`fetch_result`).
        """
        path = self._path(status_path, provider_task_id, model)
        response = await self._get(path, deadline=deadline)
        body = self._json(response, retryable=True)
        try:
            observation = normalize_status(
                self.settings.kind,
                body,
                result_ttl_seconds=self.settings.result_ttl_seconds,
                now=self._clock(),
                task_id=provider_task_id,
            )
        except WireFormatError as exc:
            return self._unrecognized(provider_task_id, response, body, exc)
        self._check_task(provider_task_id, observation.provider_task_id, response)
        if self._fetches_result(observation):
            return await self.fetch_result(provider_task_id, model, deadline=deadline)
        return StatusAnswer(observation, response.status_code, _trimmed(response))

    async def fetch_result(
        self, provider_task_id: str, model: str = "", *, deadline: Deadline | None = None
    ) -> StatusAnswer:
        """The outcome of a finished task from its definition's `[result]` endpoint, on the
        same limiter, retry policy and `deadline` as a poll: 2xx is success, an HTTP status
        the definition lists as failing (fal: 422 with `detail`) is failure."""
        kind = self.settings.kind
        if not isinstance(kind, Definition):
            raise Rejected(f"{self.name}: {kind} has no result endpoint", provider=self.name)
        path = self._path(result_path, provider_task_id, model)
        result = kind.result

        def failed(response: Answer) -> bool:
            """The request's failure, not the fetch's: a listed status, or a named error."""
            if result is None or response.status_code in result.failed_status:
                return result is not None
            return request_error(result, _json_or_none(response.content)) is not None

        response = await self._get(path, accept=failed, deadline=deadline)
        body = self._json(response, retryable=True)
        try:
            observation = normalize_result(
                kind,
                provider_task_id,
                response.status_code,
                body,
                result_ttl_seconds=self.settings.result_ttl_seconds,
                now=self._clock(),
            )
        except WireFormatError as exc:
            return self._unrecognized(provider_task_id, response, body, exc)
        return StatusAnswer(observation, response.status_code, _trimmed(response))

    def _fetches_result(self, observation: Observation) -> bool:
        """A definition's word for "finished, ask the result how" (fal's COMPLETED)."""
        kind = self.settings.kind
        return (
            isinstance(kind, Definition)
            and kind.result is not None
            and observation.needs_fetch
            and observation.state not in REAL_TERMINAL
        )

    async def _get(
        self, path: str, accept: Accept = _NOTHING_ELSE, *, deadline: Deadline | None
    ) -> Answer:
        within = deadline or Deadline()

        async def send() -> Answer:
            return await self._send(
                self._polls,
                "GET",
                path,
                idempotent=True,
                headers=self._poll_headers,
                accept=accept,
                deadline=within,
            )

        return await self._with_retries(send, (ProviderUnavailable,), within)

    async def submit(
        self,
        model: str,
        request: dict[str, object],
        callback_url: str | None,
        *,
        deadline: Deadline | None = None,
        before_send: BeforeSend | None = None,
    ) -> Observation:
        """Create a task; the observation carries the provider's task id.

        A duplicate submission costs money, so only failures that prove the provider made
        nothing are retried: connection errors (the request never left) and 429 (refused;
        retried once the limiter's pause ends, when that is within `policy.max_delay_seconds`).
        A 503 (the provider says it handled nothing) is retried like a connection error.
        A timeout, a broken connection or another 5xx after sending may have created a task: it
        raises `ProviderUnavailable` with `retryable=False`, and so does an unreadable 2xx
        (`BadAnswer`); the caller must find out from the provider before submitting again.
        `deadline` as for `fetch_status`: `DeadlineReached` means nothing was sent.
        `before_send`, if given, is awaited each time the limiter has admitted an attempt,
        just before it goes out (the reconciler records there that the request is leaving);
        what it raises leaves `submit` with that attempt unsent.
        """
        path = self._submit_path(callback_url, model)
        body = build_submit_body(self.settings.kind, model, request, callback_url)
        within = deadline or Deadline()

        async def send() -> Answer:
            return await self._send(
                self._submits,
                "POST",
                path,
                idempotent=False,
                json=body,
                deadline=within,
                before_send=before_send,
            )

        response = await self._with_retries(send, (ProviderUnavailable, RateLimited), within)
        answer = self._json(response, retryable=False)
        try:
            return parse_submit_response(self.settings.kind, answer)
        except WireFormatError as exc:
            raise self._error(BadAnswer, str(exc), response, retryable=False) from exc

    # -- sending ------------------------------------------------------------------------

    async def _with_retries(
        self,
        send: Callable[[], Awaitable[Answer]],
        retry_on: tuple[type[ProviderError], ...],
        deadline: Deadline,
    ) -> Answer:
        """`send()`, repeated after the errors in `retry_on` as the policy says, as long as
        the wait before the next attempt ends by the deadline; its stop ends that wait."""
        attempt = 1
        while True:
            try:
                return await send()
            except retry_on as exc:
                delay = self._retry_delay(exc, attempt)
                if delay is None or not deadline.allows(delay):
                    raise
                log.info(
                    "provider_call_retried",
                    provider=self.name,
                    attempt=attempt,
                    status_code=exc.status_code,
                    error=type(exc).__name__,
                    delay_seconds=round(delay, 3),
                )
            await deadline.wait(self._sleep(delay))
            attempt += 1

    def _retry_delay(self, exc: ProviderError, attempt: int) -> float | None:
        """Seconds to wait before the next attempt, or None to give up and raise."""
        if not exc.retryable or attempt >= self.policy.attempts:
            return None
        if isinstance(exc, RateLimited):
            # The limiter is paused for the whole Retry-After: the next slot waits for it.
            too_long = (exc.retry_after_seconds or 0.0) > self.policy.max_delay_seconds
            return None if too_long else 0.0
        backoff = self.policy.backoff(attempt)
        asked = exc.retry_after_seconds or 0.0
        return min(max(backoff, asked), self.policy.max_delay_seconds)

    async def _send(
        self,
        session: Session,
        method: str,
        path: str,
        *,
        idempotent: bool,
        json: object = None,
        headers: dict[str, str] | None = None,
        accept: Accept = _NOTHING_ELSE,
        deadline: Deadline,
        before_send: BeforeSend | None = None,
    ) -> Answer:
        """One request on `session`, within the limiter by `deadline` (`before_send` awaited
        once it is admitted); any answer but 2xx or one `accept` takes raises."""
        url = join_url(self.settings.base_url, path)
        sent = headers or self._headers
        async with self.limiter.slot(deadline):
            if before_send is not None:
                await before_send()
            response = await self._request(session, method, url, sent, json, idempotent)
        if self._faults_logged:
            self._faults_logged.clear()  # an answer: a fault that comes again is news
        if not (200 <= response.status_code < 300 or accept(response)):
            self._check(response, idempotent=idempotent)
        return response

    async def _request(
        self,
        session: Session,
        method: str,
        url: str,
        headers: dict[str, str],
        json: object,
        idempotent: bool,
    ) -> Answer:
        """`session.request`, whatever it raises translated to a `ProviderError`: no fault
        of one request (a setting no request can carry, a library's surprise) gets past the
        task it was for."""
        try:
            return await session.request(method, url, headers, json)
        except _UNSENDABLE as exc:
            raise self._unsendable(method, type(exc).__name__) from exc
        except CannotSend as exc:
            raise self._unsendable(method, str(exc)) from exc
        except AnswerTooLarge as exc:
            # Asked again at the task's next poll, not at once: it would be as large.
            raise self._failure(ProviderUnavailable, "answer too large", exc, False) from exc
        except _NOT_SENT as exc:
            raise self._failure(ProviderUnavailable, "cannot connect", exc, True) from exc
        except _TIMED_OUT as exc:
            raise self._failure(ProviderUnavailable, "timed out", exc, idempotent) from exc
        except _TRANSPORT_FAILED as exc:
            raise self._failure(ProviderUnavailable, "transport failed", exc, idempotent) from exc
        except Exception as exc:
            # Neither library's own error nor one of a request's making: the request may
            # have left (a submit then must not go again), and a poll may pass next time.
            error = self._failure(ProviderUnavailable, "request failed", exc, idempotent)
            self._log_fault("provider_request_failed", method, type(exc).__name__)
            raise error from exc

    def _unsendable(self, method: str, error: str) -> Unsendable:
        self._log_fault("provider_request_unsendable", method, error)
        return Unsendable(
            f"{self.name}: request cannot be sent ({error})", provider=self.name, retryable=False
        )

    def _log_fault(self, event: str, method: str, error: str) -> None:
        """Log a fault of our requests once until an answer comes (never the URL or a
        header: the error's name only)."""
        key = f"{event}:{method}:{error}"
        if key in self._faults_logged:
            return
        self._faults_logged.add(key)
        log.error(event, provider=self.name, method=method, error=error)

    def _check(self, response: Answer, *, idempotent: bool) -> None:
        code = response.status_code
        if 200 <= code < 300:
            return
        if code == httpx.codes.TOO_MANY_REQUESTS:
            raise self._rate_limited(response)
        if code >= httpx.codes.INTERNAL_SERVER_ERROR:
            asked = self._retry_after(response) if "retry-after" in response.headers else None
            raise self._error(
                ProviderUnavailable,
                "server error",
                response,
                # 503 says the request was not handled at all: safe to send again.
                retryable=idempotent or code == httpx.codes.SERVICE_UNAVAILABLE,
                retry_after_seconds=asked,
            )
        raise self._error(Rejected, "refused the request", response, retryable=False)

    def _rate_limited(self, response: Answer) -> RateLimited:
        seconds = self._retry_after(response)
        self.limiter.pause(seconds)
        log.warning("provider_rate_limited", provider=self.name, retry_after_seconds=seconds)
        return self._error(RateLimited, "rate limited", response, retry_after_seconds=seconds)

    def _retry_after(self, response: Answer) -> float:
        header = response.headers.get("retry-after")
        return self.policy.retry_after(header, _server_time(response) or self._clock())

    # -- reading ------------------------------------------------------------------------

    def _submit_path(self, callback_url: str | None, model: str) -> str:
        try:
            return submit_path(self.settings.kind, callback_url, model)
        except WireFormatError as exc:
            raise Rejected(f"{self.name}: {exc}", provider=self.name) from exc

    def _path(self, path_of: _PathOf, provider_task_id: str, model: str) -> str:
        try:
            return path_of(self.settings.kind, provider_task_id, model)
        except WireFormatError as exc:
            raise Rejected(
                f"{self.name}: {exc}", provider=self.name, provider_task_id=provider_task_id
            ) from exc

    def _json(self, response: Answer, *, retryable: bool) -> object:
        try:
            body: object = storable_json(response.content)
        except orjson.JSONDecodeError as exc:
            error = self._error(BadAnswer, "body is not JSON", response, retryable=retryable)
            raise error from exc
        return body

    def _unrecognized(
        self, task_id: str, response: Answer, body: object, exc: WireFormatError
    ) -> StatusAnswer:
        """A status body we cannot read: kept for the ledger, unless it is no status at all."""
        if exc.reason == _REFUSED_IN_BODY:
            raise self._error(BadAnswer, str(exc), response, retryable=True) from exc
        named = task_id_hint(self.settings.kind, body)
        if named is not None:
            self._check_task(task_id, named, response)
        log.warning("provider_answer_unrecognized", provider=self.name, reason=exc.reason)
        return StatusAnswer(
            None, response.status_code, _trimmed(response), unrecognized=exc.reason, detail=str(exc)
        )

    def _check_task(self, asked: str, answered: str, response: Answer) -> None:
        if answered != asked:
            raise self._error(BadAnswer, "answered about another task", response, retryable=True)

    def _error(
        self,
        kind: type[_E],
        what: str,
        response: Answer,
        *,
        retryable: bool = True,
        retry_after_seconds: float | None = None,
    ) -> _E:
        """An error about an answer, carrying its status and its trimmed body."""
        return kind(
            f"{self.name}: {what} (HTTP {response.status_code})",
            provider=self.name,
            status_code=response.status_code,
            retry_after_seconds=retry_after_seconds,
            retryable=retryable,
            body=_trimmed(response),
        )

    def _failure(self, kind: type[_E], what: str, exc: Exception, retryable: bool) -> _E:
        """An error about a request that got no answer (never quoting the URL)."""
        return kind(
            f"{self.name}: {what} ({type(exc).__name__})", provider=self.name, retryable=retryable
        )


class ProviderClients:
    """One `ProviderClient` per provider with a base URL; all share one aiohttp session for
    polls and one httpx client for submits (that client for both when a test gives its own
    `transport`)."""

    def __init__(self, clients: Mapping[str, ProviderClient]) -> None:
        self._clients = dict(clients)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        providers: Iterable[ProviderSettings],
        *,
        policy: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> AsyncIterator[ProviderClients]:
        """Clients for `providers` (those without a base URL are left out), each with its own
        shared `RateLimiter`; the HTTP sessions close when the block exits."""
        usable = [provider for provider in providers if provider.base_url]
        async with (
            new_http_client(usable, transport, SUBMIT_KEEPALIVE_SECONDS) as submits,
            contextlib.AsyncExitStack() as stack,
        ):
            polls: Session | None = None
            if transport is None:
                polls = AiohttpSession(pool_size(usable), KEEPALIVE_SECONDS)
                stack.push_async_callback(polls.aclose)
            clients = {
                provider.name: ProviderClient(
                    provider,
                    submits,
                    RateLimiter.for_provider(provider, clock=clock, sleep=sleep),
                    policy or RetryPolicy(),
                    sleep,
                    polls=polls,
                )
                for provider in usable
            }
            yield cls(clients)

    def get(self, name: str) -> ProviderClient | None:
        return self._clients.get(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._clients)


def new_http_client(
    providers: Iterable[ProviderSettings],
    transport: httpx.AsyncBaseTransport | None = None,
    keepalive_seconds: float = KEEPALIVE_SECONDS,
) -> httpx.AsyncClient:
    """An HTTP client with our timeouts and a pool as large as all providers' concurrency."""
    limits = pool_limits(providers, keepalive_seconds)
    return httpx.AsyncClient(timeout=TIMEOUT, limits=limits, transport=transport)


def pool_limits(
    providers: Iterable[ProviderSettings], keepalive_seconds: float = KEEPALIVE_SECONDS
) -> httpx.Limits:
    size = pool_size(providers)
    return httpx.Limits(
        max_connections=size, max_keepalive_connections=size, keepalive_expiry=keepalive_seconds
    )


def pool_size(providers: Iterable[ProviderSettings]) -> int:
    """Connections enough for every provider's concurrency at once."""
    return max(1, sum(provider.concurrency for provider in providers))


def join_url(base_url: str, path: str) -> str:
    """The provider's URL for `path`. A base URL given with the API version, as the OpenAI
    SDK takes it (`https://api.openai.com/v1`), does not repeat it before a `/v1/...` path."""
    base = base_url.rstrip("/")
    if path.startswith(API_VERSION_PREFIX + "/") and base.endswith(API_VERSION_PREFIX):
        base = base.removesuffix(API_VERSION_PREFIX)
    return base + path


def _trimmed(response: Answer) -> str:
    """The start of an answer's body as text, kept for the ledger: a NUL read as U+FFFD,
    as in JSON (`storable_json`), since PostgreSQL's text holds none."""
    return storable_text(response.text[:BODY_KEEP_CHARS])


def _server_time(response: Answer) -> datetime | None:
    """The answer's `Date` header: the instant an HTTP-date Retry-After counts from."""
    return parse_http_date(response.headers.get("date", ""))
