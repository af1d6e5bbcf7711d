"""The console's client of a running service's `/v1` admin API, and the errors it raises."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx

from ops.console.render import text
from schemas.errors import LedgerError
from schemas.settings import PREFIX

TIMEOUT_SECONDS = 10.0
# How much of an error answer is read (its message is in the first few hundred bytes).
ERROR_BODY_MAX_BYTES = 64 << 10


class CommandError(LedgerError):
    """A command could not do its job; the message is the one line the operator sees."""


class ApiError(CommandError):
    """The admin API could not be reached, or refused the request."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class AdminApi:
    """The service's `/v1` admin API; the one place that catches httpx errors here."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def get(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        read_timeout: float = TIMEOUT_SECONDS,
    ) -> dict[str, Any]:
        """The JSON object at `path`."""
        with self.stream(path, params, read_timeout=read_timeout) as response:
            response.read()
        return _object(response, path)

    def send(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """A write (`POST`, `PATCH`, `DELETE`) with `body` as JSON: the JSON object it
        answers, None for an empty answer (204); any answer but a 2xx raises."""
        try:
            response = self.http.request(
                method, path, json=body, params=query(params), timeout=TIMEOUT_SECONDS
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise ApiError(_failure(exc, str(self.http.base_url).rstrip("/"))) from exc
        _check(response)
        if response.status_code == 204 or not response.content:
            return None
        return _object(response, path)

    def sent(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """`send`, for a write that answers a JSON object: an empty answer is an error."""
        answer = self.send(method, path, body, params)
        if answer is None:
            raise ApiError(f"{path} answered nothing")
        return answer

    @contextmanager
    def stream(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        read_timeout: float = TIMEOUT_SECONDS,
    ) -> Iterator[httpx.Response]:
        """A 2xx response whose body is read as it arrives; any other answer raises."""
        timeout = httpx.Timeout(TIMEOUT_SECONDS, read=read_timeout)
        try:
            with self.http.stream("GET", path, params=query(params), timeout=timeout) as response:
                _check(response)
                yield response
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise ApiError(_failure(exc, str(self.http.base_url).rstrip("/"))) from exc


def query(params: Mapping[str, Any] | None) -> dict[str, str]:
    """Query parameters as the API reads them: no empty values, `true` for flags."""
    shown = {k: v for k, v in (params or {}).items() if v is not None and v is not False}
    return {k: "true" if v is True else str(v) for k, v in shown.items()}


def _object(response: httpx.Response, path: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise ApiError(f"{path} did not answer JSON", status_code=response.status_code) from None
    if not isinstance(body, dict):
        raise ApiError(f"{path} did not answer a JSON object", status_code=response.status_code)
    return body


def _check(response: httpx.Response) -> None:
    if response.is_success:
        return
    kept = _start_of(response, ERROR_BODY_MAX_BYTES)
    status = response.status_code
    if status == 401:
        raise ApiError(
            f"the service refused the admin token (401): pass --token or set {PREFIX}ADMIN_TOKEN",
            status_code=status,
        )
    raise ApiError(f"the service answered {status}: {_reason(response, kept)}", status_code=status)


def _start_of(response: httpx.Response, limit: int) -> bytes:
    """The first `limit` bytes of an answer's body, the rest never read: an error answer
    that never ends must not grow this process without bound."""
    if response.is_stream_consumed:
        return response.content[:limit]
    kept = bytearray()
    for chunk in response.iter_bytes():
        kept += chunk
        if len(kept) >= limit:
            break
    return bytes(kept[:limit])


def _reason(response: httpx.Response, body: bytes) -> str:
    try:
        said = json.loads(body)
    except (ValueError, RecursionError):
        said = None
    if isinstance(said, dict) and said.get("message"):
        return text(said["message"])
    return response.reason_phrase or "no reason given"


def _failure(exc: httpx.HTTPError | httpx.InvalidURL, url: str) -> str:
    if isinstance(exc, httpx.ConnectError):
        return f"cannot reach the service at {url}: {text(exc) or 'connection failed'}"
    if isinstance(exc, httpx.TimeoutException):
        return f"the service at {url} did not answer in time ({type(exc).__name__})"
    if isinstance(exc, httpx.InvalidURL):
        return f"cannot send that request to {url}: {text(exc)}"
    return f"the request to {url} failed: {type(exc).__name__}: {text(exc)}"


@contextmanager
def open_api(url: str, token: str, transport: httpx.BaseTransport | None) -> Iterator[AdminApi]:
    """An `AdminApi` over a client sending the admin token; `transport` lets tests answer."""
    headers = {"authorization": f"Bearer {token}", "user-agent": "taskledger-cli"}
    with httpx.Client(base_url=url, headers=headers, transport=transport) as http:
        yield AdminApi(http)
