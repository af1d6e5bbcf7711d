"""Reading request bodies, for every route: bounded in size and time, then JSON or a form."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qs

import orjson
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive

from receiver import deadlines
from receiver.errors import (
    BodyTimeout,
    BodyTooLarge,
    Compressed,
    MalformedBody,
    NotJson,
    Overloaded,
    Unprocessable,
)
from schemas.json_text import holds_nul_escape, storable_json
from schemas.settings import BODY_TIMEOUT_SECONDS

FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
FORM_MAX_FIELDS = 10
INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1
INT64_DIGITS_MAX = len(str(INT64_MIN))  # longer digits are out of range, never int() them
SHOWN_CHARS = 40  # of a key or a number a refusal names


async def read_body(
    receive: Receive,
    headers: Headers,
    limit: int,
    within_seconds: float = BODY_TIMEOUT_SECONDS,
) -> bytes:
    """The raw body, refused once it exceeds `limit` bytes or takes over `within_seconds`."""
    declared = headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the body exceeds {limit} bytes")
    try:
        return await _deadlines().within(within_seconds, _read_limited(receive, limit))
    except TimeoutError:
        raise BodyTimeout(f"the body did not arrive within {within_seconds:g} s") from None


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The request's body as a JSON object (`parse_json`), read within `limit` bytes."""
    body = await read_body(request.receive, request.headers, limit)
    return parse_json(request.headers, body)


async def read_form(request: Request, limit: int, name: str = "form") -> dict[str, list[str]]:
    """The request's URL-encoded form (`name` in errors), read within `limit` bytes; 422 if
    it is not one."""
    if _media_type(request.headers) != FORM_MEDIA_TYPE:
        raise Unprocessable(f"the {name} must be {FORM_MEDIA_TYPE}")
    body = await read_body(request.receive, request.headers, limit)
    try:
        return parse_qs(body.decode("utf-8"), max_num_fields=FORM_MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise Unprocessable(f"the {name} is not valid") from None


def parse_json(headers: Headers, body: bytes) -> dict[str, Any]:
    """A JSON object from the body of an API request; 415 when the sender says it is
    something else, or compressed (`_check_uncompressed`), 422 when orjson would read it as
    other than it says (`_check_exact`). Callbacks do not come here: a provider's body is
    kept as it came."""
    _check_uncompressed(headers)
    media_type = _media_type(headers)
    if media_type and media_type != "application/json" and not media_type.endswith("+json"):
        raise NotJson("the body must be application/json")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedBody("the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise MalformedBody("the body must be a JSON object")
    _check_exact(body)
    if holds_nul_escape(body) and storable_json(body) != payload:
        raise Unprocessable("a string in the body holds NUL (\\u0000), which is not stored")
    return payload


def _check_uncompressed(headers: Headers) -> None:
    """415 for a body with a Content-Encoding other than identity. The API does not inflate
    bodies (a small one may inflate past the size bound); read as JSON, the compressed bytes
    would be called malformed, as if the JSON inside were."""
    codings = ",".join(headers.getlist("content-encoding")).lower().split(",")
    sent = [coding for coding in map(str.strip, codings) if coding not in ("", "identity")]
    if sent:
        named = ", ".join(sent)[:SHOWN_CHARS]
        raise Compressed(
            f"the body must be sent uncompressed (no Content-Encoding, or identity), not {named}"
        )


class _Inexact(ValueError):
    """What orjson made of a body differs from what it says."""


def _check_exact(body: bytes) -> None:
    """Refuse what orjson reads silently otherwise: an integer beyond 64 bits (it becomes a
    float, rounded) and a key twice in an object (the last one wins). The stdlib reads the
    same bytes (orjson took them: valid UTF-8 JSON) with hooks that build nothing."""
    try:
        json.loads(body, object_pairs_hook=_unique_keys, parse_int=_int64)
    except _Inexact as exc:
        raise Unprocessable(str(exc)) from None
    except RecursionError:  # orjson nests 1024 levels deep, the stdlib's parser fewer
        raise Unprocessable("the body nests too deeply") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> None:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _Inexact(f"the key {key[:SHOWN_CHARS]!r} appears twice in an object")
        seen.add(key)


def _int64(digits: str) -> None:
    # The range orjson keeps exact: a signed 64-bit integer, or an unsigned one.
    if len(digits) > INT64_DIGITS_MAX or not INT64_MIN <= int(digits) <= UINT64_MAX:
        shown = digits if len(digits) <= SHOWN_CHARS else digits[:SHOWN_CHARS] + "…"
        raise _Inexact(f"the number {shown} does not fit in 64 bits: send it as a string")


# The deadline table last looked up, with its loop: one loop serves every request of a
# process, and `deadlines.of_running_loop` finds it in a weak mapping (a new weak reference
# for each lookup).
_LAST: list[tuple[asyncio.AbstractEventLoop, deadlines.Deadlines]] = []


def _deadlines() -> deadlines.Deadlines:
    loop = asyncio.get_running_loop()
    if not _LAST or _LAST[0][0] is not loop:
        _LAST[:] = [(loop, deadlines.of_running_loop())]
    return _LAST[0][1]


def _media_type(headers: Headers) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


class _Held:
    """The bytes of the bodies this process is reading now, against `BODIES_MAX_BYTES`."""

    size = 0


# All bodies read at once, in bytes, past which a request is answered 503 (retry): each is
# bounded, but 2,000 connections holding a body of 1 MiB each, unauthenticated until it is
# read, had taken a receiver to 2.4 GB, never given back. A callback is a few KB.
BODIES_MAX_BYTES = 128 * 1024 * 1024
_HELD = _Held()


async def _read_limited(receive: Receive, limit: int) -> bytes:
    # ASGI messages straight from `receive`: a small body is one message, no generator.
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise ClientDisconnect()
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            _HELD.size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"the body exceeds {limit} bytes")
            if _HELD.size > BODIES_MAX_BYTES:
                raise Overloaded("too many request bodies are being read at once")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
    finally:
        _HELD.size -= size
