"""The console's client of a running service's `/v1` admin API, and the errors it raises."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NoReturn

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
    """The service's `/v1` admin API; the one place that catches httpx errors here.

    Every answer is checked for the shape the caller names (the fields of a JSON object,
    a media type, no content): a 2xx from another service at `--url` is refused in one
    line, never printed as if taskledger had answered it."""

    def __init__(self, http: httpx.Client, *, token_name: str) -> None:
        self.http = http
        self.token_name = token_name

    @property
    def url(self) -> str:
        return str(self.http.base_url).rstrip("/")

    def get(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        needs: Collection[str],
        read_timeout: float = TIMEOUT_SECONDS,
    ) -> dict[str, Any]:
        """The JSON object at `path`, with at least the fields `needs` names."""
        with self._stream(path, params, read_timeout=read_timeout) as response:
            response.read()
        return self._object(response, needs)

    def send(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        *,
        needs: Collection[str],
    ) -> dict[str, Any]:
        """A write (`POST`, `PATCH`, `DELETE`) with `body` as JSON: the JSON object it
        answers, with at least the fields `needs` names; any answer but a 2xx raises."""
        return self._object(self._request(method, path, body, params), needs)

    def send_no_content(self, method: str, path: str) -> None:
        """A write the service answers with no content (204), like deleting an endpoint."""
        response = self._request(method, path, None, None)
        if response.status_code != 204:
            self._not_taskledger(response, "not the 204 No Content it answers")

    @contextmanager
    def stream(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        media_type: str,
        read_timeout: float = TIMEOUT_SECONDS,
    ) -> Iterator[httpx.Response]:
        """A 2xx response of `media_type` whose body is read as it arrives; any other
        answer raises."""
        with self._stream(path, params, read_timeout=read_timeout) as response:
            declared = _media_type(response)
            if declared != media_type:
                self._not_taskledger(response, f"{declared or 'no content type'}, not {media_type}")
            yield response

    def _request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        params: Mapping[str, Any] | None,
    ) -> httpx.Response:
        try:
            response = self.http.request(
                method, path, json=body, params=query(params), timeout=TIMEOUT_SECONDS
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise ApiError(_failure(exc, self.url)) from exc
        self._check(response)
        return response

    @contextmanager
    def _stream(
        self, path: str, params: Mapping[str, Any] | None, *, read_timeout: float
    ) -> Iterator[httpx.Response]:
        timeout = httpx.Timeout(TIMEOUT_SECONDS, read=read_timeout)
        try:
            with self.http.stream("GET", path, params=query(params), timeout=timeout) as response:
                self._check(response)
                yield response
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise ApiError(_failure(exc, self.url)) from exc

    def _object(self, response: httpx.Response, needs: Collection[str]) -> dict[str, Any]:
        if not response.content:
            self._not_taskledger(response, "an empty body")
        try:
            body = response.json()
        except (ValueError, RecursionError):
            self._not_taskledger(response, f"{_media_type(response) or 'a body'} that is not JSON")
        if not isinstance(body, dict):
            self._not_taskledger(response, f"JSON {type(body).__name__}, not an object")
        missing = [field for field in needs if field not in body]
        if missing:
            self._not_taskledger(response, f"a JSON object without {', '.join(missing)}")
        return body

    def _not_taskledger(self, response: httpx.Response, what: str) -> NoReturn:
        raise ApiError(
            f"the service at {self.url} answered {response.status_code} with something that"
            f" is not taskledger's answer ({what})",
            status_code=response.status_code,
        )

    def _check(self, response: httpx.Response) -> None:
        if response.is_success:
            return
        kept = _start_of(response, ERROR_BODY_MAX_BYTES)
        status = response.status_code
        if status == 401:
            raise ApiError(
                f"the service refused {self.token_name} (401): pass --token or set"
                f" {PREFIX}ADMIN_TOKEN",
                status_code=status,
            )
        raise ApiError(
            f"the service answered {status}: {_reason(response, kept)}", status_code=status
        )


def query(params: Mapping[str, Any] | None) -> dict[str, str]:
    """Query parameters as the API reads them: no empty values, `true` for flags."""
    shown = {k: v for k, v in (params or {}).items() if v is not None and v is not False}
    return {k: "true" if v is True else str(v) for k, v in shown.items()}


def _media_type(response: httpx.Response) -> str:
    declared: str = response.headers.get("content-type", "")
    return declared.split(";", 1)[0].strip().lower()


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
def open_api(
    url: str, token: str, transport: httpx.BaseTransport | None, *, token_name: str
) -> Iterator[AdminApi]:
    """An `AdminApi` over a client sending `token`, which errors call `token_name` (the
    admin token, or an API key); `transport` lets tests answer."""
    headers = {"authorization": f"Bearer {token}", "user-agent": "taskledger-cli"}
    with httpx.Client(base_url=url, headers=headers, transport=transport) as http:
        yield AdminApi(http, token_name=token_name)
