"""The callback routes: authenticate, parse, hand to the writer, answer after commit.

`POST /callbacks/{provider}/{token}` takes unsigned callbacks bound by our URL token;
`POST /webhooks/{source}` takes Standard Webhooks signed events.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from receiver.errors import (
    BodyTimeout,
    BodyTooLarge,
    Forbidden,
    MalformedBody,
    NotJson,
    Unauthenticated,
    UnknownRoute,
)
from receiver.metrics import ReceiverMetrics
from receiver.signatures import SignatureVerifier
from receiver.writer import GroupCommitWriter
from schemas.clock import Clock
from schemas.errors import WireFormatError
from schemas.ledger import Auth, Delivery, Stored
from schemas.settings import ProviderSettings, Settings
from schemas.states import Outcome
from schemas.tokens import CallbackTokens
from schemas.wire import WireFormat, normalize_callback

log = structlog.get_logger("taskledger.receiver")
# Senders post small JSON bodies; one that trickles in is a stalled or hostile client.
BODY_TIMEOUT_SECONDS = 10.0
KEPT_HEADERS = ("content-type", "user-agent", "webhook-id", "webhook-timestamp")
_KEPT = frozenset(KEPT_HEADERS)
# The ledger's columns: `delivery.delivery_key` and `provider_task_id` hold 200 characters.
KEY_MAX_CHARS = 200
TASK_ID_MAX_CHARS = 200


@dataclass(frozen=True, slots=True)
class Inbox:
    """What the callback routes need, built once at start-up."""

    settings: Settings
    tokens: CallbackTokens
    verifiers: dict[str, SignatureVerifier]
    writer: GroupCommitWriter
    metrics: ReceiverMetrics
    clock: Clock

    @classmethod
    def build(
        cls, settings: Settings, writer: GroupCommitWriter, metrics: ReceiverMetrics, clock: Clock
    ) -> Inbox:
        verifiers = {
            name: SignatureVerifier(p.webhook_secrets, clock, settings.webhook_tolerance_seconds)
            for name, p in settings.providers.items()
            if p.kind.signs_callbacks and p.webhook_secrets
        }
        return cls(
            settings, CallbackTokens(settings.callback_secrets), verifiers, writer, metrics, clock
        )


async def receive_callback(request: Request) -> Response:
    inbox: Inbox = request.app.state.inbox
    started = time.perf_counter()
    provider = _provider(inbox, request.path_params["provider"], signed=False)
    body = await read_body(
        request, inbox.settings.max_body_bytes, inbox.settings.body_timeout_seconds
    )
    binding = inbox.tokens.verify(request.path_params["token"])
    if binding is None or binding.provider != provider.name:
        raise Unauthenticated("the callback token is not valid for this provider")
    payload = parse_json(request, body)
    delivery = _delivery(
        inbox,
        request,
        provider,
        body,
        payload,
        Auth.TOKEN,
        key=hashlib.sha256(body).hexdigest(),
        task_ref=binding.task_ref,
    )
    return await _store(inbox, delivery, started)


async def receive_webhook(request: Request) -> Response:
    inbox: Inbox = request.app.state.inbox
    started = time.perf_counter()
    provider = _provider(inbox, request.path_params["source"], signed=True)
    body = await read_body(
        request, inbox.settings.max_body_bytes, inbox.settings.body_timeout_seconds
    )
    webhook_id = inbox.verifiers[provider.name].verify(body, request.headers)
    if webhook_id is None:
        raise Unauthenticated("the webhook signature does not verify")
    payload = parse_json(request, body)
    key = delivery_key(webhook_id)
    delivery = _delivery(inbox, request, provider, body, payload, Auth.SIGNATURE, key=key)
    return await _store(inbox, delivery, started)


def delivery_key(webhook_id: str) -> str:
    """The `webhook-id` itself, or its digest when it is longer than the ledger keeps."""
    if len(webhook_id) <= KEY_MAX_CHARS:
        return webhook_id
    return "sha256:" + hashlib.sha256(webhook_id.encode("utf-8", "surrogatepass")).hexdigest()


def _provider(inbox: Inbox, name: str, *, signed: bool) -> ProviderSettings:
    provider = inbox.settings.provider(name)
    if provider is None or provider.kind.signs_callbacks is not signed:
        raise UnknownRoute("no such provider on this route", provider=name)
    if signed and name not in inbox.verifiers:
        raise UnknownRoute("no webhook secret is configured for this source", provider=name)
    return provider


async def read_body(
    request: Request, limit: int, within_seconds: float = BODY_TIMEOUT_SECONDS
) -> bytes:
    """The raw body, refused once it exceeds `limit` bytes or takes over `within_seconds`."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the body exceeds {limit} bytes")
    try:
        async with asyncio.timeout(within_seconds):
            return await _read_limited(request, limit)
    except TimeoutError:
        raise BodyTimeout(f"the body did not arrive within {within_seconds:g} s") from None


async def _read_limited(request: Request, limit: int) -> bytes:
    # ASGI messages straight from `receive`: a small body is one message, no generator.
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the body exceeds {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def parse_json(request: Request, body: bytes) -> dict[str, Any]:
    """A JSON object from the body; 415 when the sender says it is something else."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type and media_type != "application/json" and not media_type.endswith("+json"):
        raise NotJson("the body must be application/json")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedBody("the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise MalformedBody("the body must be a JSON object")
    return payload


def _delivery(
    inbox: Inbox,
    request: Request,
    provider: ProviderSettings,
    body: bytes,
    payload: dict[str, Any],
    auth: Auth,
    *,
    key: str,
    task_ref: str | None = None,
) -> Delivery:
    try:
        observation = normalize_callback(WireFormat(provider.kind), payload)
    except WireFormatError as exc:
        raise MalformedBody(str(exc), provider=provider.name) from None
    task_id = observation.provider_task_id
    if len(task_id) > TASK_ID_MAX_CHARS or "\x00" in task_id:  # PostgreSQL text holds no NUL
        raise MalformedBody(
            f"the task id must be at most {TASK_ID_MAX_CHARS} characters, without NUL",
            provider=provider.name,
        )
    headers = kept_headers(request.scope["headers"])
    return Delivery(
        provider=provider.name,
        delivery_key=key,
        body=body,
        headers=headers,
        auth=auth,
        observation=observation,
        received_at=inbox.clock(),
        task_ref=task_ref,
    )


def kept_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The first value of each header worth keeping, capped; one pass over the ASGI list
    (whose names the server gives in lower case)."""
    kept: dict[str, str] = {}
    for raw_name, raw_value in raw:
        name = raw_name.decode("latin-1")
        if name in _KEPT and name not in kept:
            kept[name] = raw_value.decode("latin-1")[:200]
    return kept


async def _store(inbox: Inbox, delivery: Delivery, started: float) -> Response:
    stored = await inbox.writer.submit(delivery)
    if stored.refused:
        raise Forbidden(
            "the callback names a task that is not the token's",
            provider=delivery.provider,
            task_ref=stored.task_ref,
        )
    elapsed = time.perf_counter() - started
    inbox.metrics.delivered(delivery.provider, stored.outcome.value, elapsed)
    log.info(
        "delivery_stored",
        provider=delivery.provider,
        task_ref=stored.task_ref,
        delivery_key=delivery.delivery_key[:64],
        outcome=stored.outcome.value,
        ms=round(elapsed * 1000, 2),
    )
    return _answer(stored)


# The few answers a stored delivery can get, rendered once.
_ANSWERS = {outcome: orjson.dumps({"outcome": outcome.value}) for outcome in Outcome}


def _answer(stored: Stored) -> Response:
    status = 202 if stored.outcome is Outcome.UNMATCHED else 200
    return Response(_ANSWERS[stored.outcome], status, media_type="application/json")
