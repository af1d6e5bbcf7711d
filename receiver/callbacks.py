"""The callback routes: authenticate, parse, hand to the writer, answer after commit.

`POST /callbacks/{provider}/{token}` takes callbacks bound by our URL token (and signed
too, for the providers whose scheme says so: `receiver.schemes`);
`POST /webhooks/{source}` takes Standard Webhooks signed events.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send
from structlog.typing import FilteringBoundLogger

from receiver.answers import Answer, answer_of, refusal
from receiver.bodies import read_body
from receiver.errors import Forbidden, Overloaded, Unauthenticated, UnknownRoute
from receiver.metrics import ReceiverMetrics
from receiver.schemes import CallbackScheme, callback_schemes
from receiver.signatures import SignatureVerifier
from receiver.spool import SPOOL_SECONDS, Spool
from receiver.writer import GroupCommitWriter, NotStored
from schemas.clock import Clock
from schemas.ledger import Auth, Delivery, parse_payload, read_payload
from schemas.logs import Throttle
from schemas.settings import ProviderSettings, Settings, unprefixed_is_raw
from schemas.states import Outcome
from schemas.tables import DELIVERY_KEY_MAX_CHARS
from schemas.tokens import CallbackTokens

# Kept with each delivery for the audit: who sent it and when it says it did (never a
# signature: a proof is checked, not stored).
KEPT_HEADERS = (
    "content-type",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "x-fal-webhook-request-id",
    "x-fal-webhook-timestamp",
    "x-webhook-timestamp",
)
_KEPT = frozenset(name.encode("latin-1") for name in KEPT_HEADERS)
HEADER_MAX_CHARS = 200


@dataclass(frozen=True, slots=True)
class Inbox:
    """What the callback routes need, built once at start-up."""

    settings: Settings
    tokens: CallbackTokens
    verifiers: dict[str, SignatureVerifier]
    writer: GroupCommitWriter
    metrics: ReceiverMetrics
    clock: Clock
    schemes: dict[str, CallbackScheme]
    # Bound once, when the app starts (logging is configured by then): a module's lazy
    # logger builds a new bound logger for every line, about 2 µs a request.
    log: FilteringBoundLogger
    # With a spool (PostgreSQL), the writer has less than the whole answer deadline: the
    # rest is for spooling a delivery it could not store.
    spool: Spool | None = None
    write_within: float = 0.0
    # A line for a refusal at most every 10 s per provider and reason: forged callbacks,
    # or every callback of an outage, are counted in the metrics, not logged each.
    refusals_logged: Throttle = field(default_factory=Throttle)
    # Whether a line is logged for each stored delivery (at debug): its arguments cost the
    # hot path about 1.5 µs a callback even when the line is left out.
    log_stored: bool = False

    @classmethod
    def build(
        cls,
        settings: Settings,
        writer: GroupCommitWriter,
        metrics: ReceiverMetrics,
        clock: Clock,
        spool: Spool | None = None,
        schemes: dict[str, CallbackScheme] | None = None,
    ) -> Inbox:
        """`schemes`: the providers' callback schemes, built beforehand (`callback_schemes`)
        where a setting they lack must stop start-up as a bad setting does."""
        verifiers = {
            name: SignatureVerifier(
                p.webhook_secrets,
                clock,
                settings.webhook_tolerance_seconds,
                raw_unprefixed=unprefixed_is_raw(p.kind),
            )
            for name, p in settings.providers.items()
            if p.kind.signs_callbacks and p.webhook_secrets
        }
        tokens = CallbackTokens(settings.callback_secrets)
        if schemes is None:
            schemes = callback_schemes(settings, clock)
        within = settings.answer_deadline_seconds
        if spool is not None:
            within -= min(SPOOL_SECONDS, within / 2)
        log = structlog.get_logger("taskledger.receiver").bind()
        debug = settings.log_level == "debug"
        return cls(
            settings,
            tokens,
            verifiers,
            writer,
            metrics,
            clock,
            schemes,
            log,
            spool,
            within,
            log_stored=debug,
        )

    def refused(self, name: str, reason: str) -> None:
        """Count and log a refused delivery; a name we do not serve is "unknown"."""
        label = name if name in self.settings.providers else "unknown"
        self.metrics.rejections.labels(label, reason).inc()
        left_out = self.refusals_logged.due((label, reason))
        if left_out is not None:
            self.log.info("delivery_refused", provider=label, reason=reason, left_out=left_out)


Handle = Callable[[Inbox, Scope, Receive], Awaitable[Answer]]


class CallbackEndpoint:
    """One callback route as a plain ASGI app: no Request object and no middleware on the
    hottest path; it maps its own refusals to answers (`receiver.answers`)."""

    def __init__(self, kind: str, param: str, handle: Handle) -> None:
        self.kind = kind
        self._param = param
        self._handle = handle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        inbox: Inbox | None = getattr(scope["app"].state, "inbox", None)
        if inbox is None:  # start-up has not finished: the sender retries a 503
            await answer_of(Overloaded("the receiver is starting")).send(send)
            return
        try:
            answer = await self._handle(inbox, scope, receive)
        except ClientDisconnect:
            return  # nobody to answer; nothing was stored
        except Exception as exc:
            error = refusal(exc, self.kind)
            inbox.refused(scope["path_params"].get(self._param, ""), error.reason)
            answer = answer_of(error)
        await answer.send(send)


async def receive_callback(inbox: Inbox, scope: Scope, receive: Receive) -> Answer:
    started = time.perf_counter()
    params = scope["path_params"]
    provider = _provider(inbox, params["provider"], signed=False)
    # The token first, before the body is even read: a caller without one costs no memory
    # and no wait, and only a caller holding one makes a scheme do any work (or fetch keys).
    binding = inbox.tokens.verify(params["token"])
    if binding is None or binding.provider != provider.name:
        raise Unauthenticated("the callback token is not valid for this provider")
    headers = Headers(scope=scope)
    body = await read_body(
        receive, headers, inbox.settings.max_body_bytes, inbox.settings.body_timeout_seconds
    )
    payload = parse_payload(body)
    auth = await inbox.schemes[provider.name].verify(body, headers, payload)
    if auth is None:
        raise Unauthenticated("the callback's signature does not verify")
    delivery = _delivery(
        inbox,
        scope,
        provider,
        body,
        auth,
        key=hashlib.sha256(body).hexdigest(),
        task_ref=binding.task_ref,
        payload=payload,
    )
    return await _store(inbox, delivery, started)


def unnamed_key(task_ref: str, body: bytes) -> str:
    """The key of a token callback whose body names no task id (unreadable, or silent on
    it): its body's hash, with the token's task in it. Such bodies are alike across tasks
    (an empty body, a bare status): by their hash alone, one task's would be taken for a
    resend of another's and not kept."""
    return hashlib.sha256(task_ref.encode() + b"\0" + body).hexdigest()


async def receive_webhook(inbox: Inbox, scope: Scope, receive: Receive) -> Answer:
    started = time.perf_counter()
    provider = _provider(inbox, scope["path_params"]["source"], signed=True)
    headers = Headers(scope=scope)
    body = await read_body(
        receive, headers, inbox.settings.max_body_bytes, inbox.settings.body_timeout_seconds
    )
    verifier = inbox.verifiers[provider.name]
    webhook_id = verifier.verify(body, headers)
    if webhook_id is None:
        raise Unauthenticated(verifier.refusal(body, headers))
    key = delivery_key(webhook_id)
    delivery = _delivery(
        inbox, scope, provider, body, Auth.SIGNATURE, key=key, payload=parse_payload(body)
    )
    return await _store(inbox, delivery, started)


CALLBACK = CallbackEndpoint("callback", "provider", receive_callback)
WEBHOOK = CallbackEndpoint("webhook", "source", receive_webhook)


def match(scope: Scope) -> CallbackEndpoint | None:
    """The endpoint of a `POST /callbacks/{provider}/{token}` or `/webhooks/{source}`
    (path parameters set in the scope, as Starlette's router would), else None."""
    if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
        return None
    parts = scope["path"].split("/")
    if len(parts) == 4 and parts[1] == "callbacks" and parts[2] and parts[3]:
        scope["path_params"] = {"provider": parts[2], "token": parts[3]}
        return CALLBACK
    if len(parts) == 3 and parts[1] == "webhooks" and parts[2]:
        scope["path_params"] = {"source": parts[2]}
        return WEBHOOK
    return None


def delivery_key(webhook_id: str) -> str:
    """The `webhook-id` itself, or its digest when it is longer than the ledger keeps."""
    if len(webhook_id) <= DELIVERY_KEY_MAX_CHARS:
        return webhook_id
    return "sha256:" + hashlib.sha256(webhook_id.encode("utf-8", "surrogatepass")).hexdigest()


def _provider(inbox: Inbox, name: str, *, signed: bool) -> ProviderSettings:
    provider = inbox.settings.provider(name)
    if provider is None or provider.kind.signs_callbacks is not signed:
        raise UnknownRoute("no such provider on this route", provider=name)
    if signed and name not in inbox.verifiers:
        raise UnknownRoute("no webhook secret is configured for this source", provider=name)
    return provider


def _delivery(
    inbox: Inbox,
    scope: Scope,
    provider: ProviderSettings,
    body: bytes,
    auth: Auth,
    *,
    key: str,
    payload: Any,
    task_ref: str | None = None,
) -> Delivery:
    """An authenticated delivery, read as far as it can be: one that cannot be read is kept
    all the same, raw, with the reason (whatever its content type says, it is tried as JSON).
    A token callback (`task_ref`) whose body names no task id is keyed by `unnamed_key`."""
    received_at = inbox.clock()
    reading = read_payload(provider.reader, payload, received_at)
    if task_ref is not None and not reading.task_id:  # the id read, or the body's hint
        key = unnamed_key(task_ref, body)
    return Delivery(
        provider=provider.name,
        delivery_key=key,
        body=body,
        headers=kept_headers(scope["headers"]),
        auth=auth,
        observation=reading.observation,
        received_at=received_at,
        task_ref=task_ref,
        task_id=reading.task_id,
        unread=reading.unread,
    )


def kept_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The first value of each header worth keeping, capped; one pass over the ASGI list
    (whose names the server gives in lower case), decoding only the names kept."""
    kept: dict[str, str] = {}
    for raw_name, raw_value in raw:
        if raw_name in _KEPT:
            name = raw_name.decode("latin-1")
            if name not in kept:
                kept[name] = raw_value.decode("latin-1")[:HEADER_MAX_CHARS]
    return kept


async def _store(inbox: Inbox, delivery: Delivery, started: float) -> Answer:
    spool = inbox.spool
    if spool is not None and spool.engaged:
        return await _spool(inbox, spool, delivery, started)
    try:
        stored = await inbox.writer.submit(delivery, arrived=started, within=inbox.write_within)
    except NotStored as exc:
        if spool is None:
            raise
        spool.note_down(exc.message)
        return await _spool(inbox, spool, delivery, started)
    if stored.refused:
        raise Forbidden(
            "the callback names a task that is not the token's",
            provider=delivery.provider,
            task_ref=stored.task_ref,
        )
    elapsed = time.perf_counter() - started
    inbox.metrics.delivered(delivery.provider, stored.outcome._value_, elapsed)
    if delivery.unread is not None and stored.outcome is not Outcome.DUPLICATE:
        inbox.metrics.unrecognized.labels(delivery.provider, delivery.unread.reason).inc()
        inbox.log.info(
            "delivery_kept_unread",
            provider=delivery.provider,
            task_ref=stored.task_ref,
            outcome=stored.outcome.value,
            reason=delivery.unread.reason,
        )
    # Every stored delivery is in the ledger and in the metrics; a line for each at info
    # would cost the hot path more than its merge does, so it is a debug line.
    if inbox.log_stored:
        inbox.log.debug(
            "delivery_stored",
            provider=delivery.provider,
            task_ref=stored.task_ref,
            delivery_key=delivery.delivery_key[:64],
            outcome=stored.outcome.value,
            ms=round(elapsed * 1000, 2),
        )
    return _ANSWERS[stored.outcome]


async def _spool(inbox: Inbox, spool: Spool, delivery: Delivery, started: float) -> Answer:
    """Keep `delivery` in the local spool while the database cannot take it: 202 once it
    is there durably (it is replayed into the ledger later, in order), 503 if it is full."""
    elapsed = time.perf_counter() - started
    deadline = asyncio.get_running_loop().time() + inbox.settings.answer_deadline_seconds - elapsed
    await spool.keep(delivery, deadline)
    inbox.log.debug(
        "delivery_spooled",
        provider=delivery.provider,
        delivery_key=delivery.delivery_key[:64],
        ms=round((time.perf_counter() - started) * 1000, 2),
    )
    return _SPOOLED


# Kept, and folded in once its task (or the task's provider id) is known: 202 Accepted.
_NOT_YET_FOLDED = frozenset({Outcome.UNMATCHED, Outcome.HELD})
# The few answers a stored delivery can get, rendered once.
_ANSWERS = {
    outcome: Answer(
        202 if outcome in _NOT_YET_FOLDED else 200, orjson.dumps({"outcome": outcome.value})
    )
    for outcome in Outcome
}
# Kept in the local spool, stored once the database takes writes again.
_SPOOLED = Answer(202, orjson.dumps({"outcome": "spooled"}))
