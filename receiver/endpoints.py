"""The notification endpoints of the admin API: where events go, their filters and signing
secrets (each shown once), and sending again what failed (an endpoint's, or a message's).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from receiver import contract
from receiver.admin import ADMIN_BODY_LIMIT_BYTES, jsonable
from receiver.auth import authorize
from receiver.bodies import parse_json, read_body
from receiver.contract import FILTER_MAX_ITEMS, URL_MAX_CHARS, validated
from receiver.errors import NotFound, Unprocessable
from receiver.queries import parse_time
from schemas.addresses import AddressPolicy, BlockedURL
from schemas.endpoint_urls import EndpointUrlError, kind_of, parse_broker_url, redact
from schemas.events import EVENT_TYPES
from schemas.settings import Settings
from schemas.store import Endpoint, LedgerStore
from schemas.store.keys import KeyScope
from schemas.tables import LABEL_MAX_CHARS

log = structlog.get_logger("taskledger.receiver")

RESOLVE_TIMEOUT_SECONDS = 5.0
SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
SECRET_BYTES = 32  # Standard Webhooks: whsec_ + base64 of the key
SECRET_SHOWN_CHARS = 4
DISABLED_BY_OPERATOR = "disabled by an operator"


# -- routes ------------------------------------------------------------------------------


async def create_endpoint(request: Request) -> Response:
    await authorize(request, KeyScope.ADMIN)
    body = _fields_set(validated(contract.NewEndpoint, await read_object(request)))
    store: LedgerStore = request.app.state.store
    values = await checked_values(request.app.state.settings, body)
    if values.get("enabled") is False:
        values |= {"disabled_reason": DISABLED_BY_OPERATOR, "disabled_at": store.clock()}
    secret = new_secret()
    values |= {"id": new_endpoint_id(), "secrets": [{"secret": secret, "expires_at": None}]}
    endpoint = await store.create_endpoint(values)
    log.info("endpoint_created", endpoint_id=endpoint.id, kind=endpoint.kind)
    return JSONResponse(endpoint_json(endpoint) | {"secret": secret}, 201)


async def list_endpoints(request: Request) -> Response:
    await authorize(request, KeyScope.ADMIN)
    store: LedgerStore = request.app.state.store
    shown = [endpoint_json(e, await store.endpoint_health(e.id)) for e in await store.endpoints()]
    return JSONResponse({"endpoints": shown})


async def show_endpoint(request: Request) -> Response:
    await authorize(request, KeyScope.ADMIN)
    store: LedgerStore = request.app.state.store
    endpoint = await _existing(store, request)
    return JSONResponse(endpoint_json(endpoint, await store.endpoint_health(endpoint.id)))


async def update_endpoint(request: Request) -> Response:
    await authorize(request, KeyScope.ADMIN)
    body = _fields_set(validated(contract.EndpointChanges, await read_object(request)))
    store: LedgerStore = request.app.state.store
    endpoint = await _existing(store, request)
    changes = await checked_values(request.app.state.settings, body)
    if changes.get("enabled") == endpoint.enabled:
        del changes["enabled"]  # keeps why (and since when) it is disabled, if it is
    updated = await store.update_endpoint(endpoint.id, changes) if changes else endpoint
    if updated is None:
        raise NotFound("no endpoint has this id")
    log.info("endpoint_updated", endpoint_id=endpoint.id, fields=sorted(body))
    return JSONResponse(endpoint_json(updated))


async def delete_endpoint(request: Request) -> Response:
    await authorize(request, KeyScope.ADMIN)
    store: LedgerStore = request.app.state.store
    endpoint_id = _path_id(request, "id")
    if not await store.delete_endpoint(endpoint_id):
        raise NotFound("no endpoint has this id")
    log.info("endpoint_deleted", endpoint_id=endpoint_id)
    return Response(status_code=204)


async def rotate_secret(request: Request) -> Response:
    """A new signing secret, shown once; the current one keeps signing for the grace."""
    await authorize(request, KeyScope.ADMIN)
    rotation = validated(contract.Rotation, await read_object(request, optional=True))
    grace = int(rotation.grace_seconds)
    store: LedgerStore = request.app.state.store
    endpoint = await _existing(store, request)
    secret = new_secret()
    kept = rotated(endpoint.secrets, secret, store.clock(), grace)
    updated = await store.update_endpoint(endpoint.id, {"secrets": kept})
    if updated is None:
        raise NotFound("no endpoint has this id")
    log.info("endpoint_secret_rotated", endpoint_id=endpoint.id, grace_seconds=grace)
    return JSONResponse(endpoint_json(updated) | {"secret": secret})


async def recover_endpoint(request: Request) -> Response:
    """Send again, now, the endpoint's failed dispatches of messages made since `since`."""
    await authorize(request, KeyScope.ADMIN)
    since = parse_time(request.query_params.get("since"), "since")
    if since is None:
        raise Unprocessable("since is required: an ISO-8601 time")
    store: LedgerStore = request.app.state.store
    endpoint = await _existing(store, request)
    requeued = await store.recover_endpoint(endpoint.id, since)
    log.info("endpoint_recovered", endpoint_id=endpoint.id, requeued=requeued)
    return JSONResponse({"requeued": requeued})


async def retry_message(request: Request) -> Response:
    """Send a message again, now, to every endpoint it was dispatched to."""
    await authorize(request, KeyScope.ADMIN)
    msg_id = _path_id(request, "msg_id")
    store: LedgerStore = request.app.state.store
    requeued = await store.retry_message(msg_id)
    if requeued is None:
        raise NotFound("no message has this id")
    log.info("message_retried", msg_id=msg_id, requeued=requeued)
    return JSONResponse({"requeued": requeued})


async def _existing(store: LedgerStore, request: Request) -> Endpoint:
    endpoint = await store.endpoint(_path_id(request, "id"))
    if endpoint is None:
        raise NotFound("no endpoint has this id")
    return endpoint


def _path_id(request: Request, name: str) -> str:
    """An id of the path; one PostgreSQL cannot even compare (NUL) names nothing."""
    value: str = request.path_params[name]
    if "\x00" in value:
        raise NotFound(f"no such {name}")
    return value


# -- bodies ------------------------------------------------------------------------------


async def read_object(request: Request, *, optional: bool = False) -> dict[str, Any]:
    """The JSON object of the body; with `optional`, no body at all reads as `{}`."""
    body = await read_body(request.receive, request.headers, ADMIN_BODY_LIMIT_BYTES)
    if optional and not body.strip():
        return {}
    return parse_json(request.headers, body)


def _fields_set(body: contract.NewEndpoint | contract.EndpointChanges) -> dict[str, Any]:
    """The fields the body named (null included: a filter's null lets everything through)."""
    return body.model_dump(exclude_unset=True)


async def checked_values(settings: Settings, body: dict[str, Any]) -> dict[str, Any]:
    """The endpoint columns `body` sets, each checked; the URL's kind comes with it."""
    values: dict[str, Any] = {}
    if "url" in body:
        values["kind"], values["url"] = await checked_url(body["url"], settings.notify.policy)
    if "description" in body:
        values["description"] = _description(body["description"])
    if "providers" in body:
        values["providers"] = _names(body["providers"], "providers", settings.providers)
    if "owners" in body:
        values["owners"] = _names(body["owners"], "owners")
    if "event_types" in body:
        values["event_types"] = _names(body["event_types"], "event_types", EVENT_TYPES)
    for flag in ("include_unconfirmed", "enabled"):
        if flag in body:
            if not isinstance(body[flag], bool):
                raise Unprocessable(f"{flag} must be true or false")
            values[flag] = body[flag]
    return values


async def checked_url(url: object, policy: AddressPolicy) -> tuple[str, str]:
    """The kind of sink `url` names, and the URL. A webhook's or a broker's host must
    resolve to addresses the policy allows; a broker URL must name a subject or an exchange."""
    if not isinstance(url, str) or not url or len(url) > URL_MAX_CHARS:
        raise Unprocessable(f"url must be a string of 1 to {URL_MAX_CHARS} characters")
    try:
        kind = kind_of(url)
        host, port = _webhook_address(url, policy) if kind == "http" else _broker_address(url)
        await _check_reachable(host, port, policy)
    except (EndpointUrlError, BlockedURL) as exc:
        raise Unprocessable(f"url refused: {exc}") from None
    return kind, url


def _webhook_address(url: str, policy: AddressPolicy) -> tuple[str, int]:
    """The host and port of a webhook URL whose scheme (and literal address) `policy` takes."""
    parts = policy.check_url(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def _broker_address(url: str) -> tuple[str, int]:
    """The host and port of a broker URL that names a subject or an exchange."""
    target = parse_broker_url(url)
    return target.host, target.port


async def _check_reachable(host: str, port: int, policy: AddressPolicy) -> None:
    """Raise `BlockedURL` unless every address `host` resolves to is one `policy` allows (a
    literal address is checked as it is)."""
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):
            await policy.resolve(host, port)
    except TimeoutError:
        message = f"{host} did not resolve within {RESOLVE_TIMEOUT_SECONDS:g} s"
        raise BlockedURL(message, reason="unresolvable", host=host) from None


def _description(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > LABEL_MAX_CHARS or "\x00" in value:
        raise Unprocessable(
            f"description must be a string of at most {LABEL_MAX_CHARS} characters, no NUL"
        )
    return value


def _names(value: object, name: str, known: Iterable[str] | None = None) -> list[str] | None:
    """A filter: None lets everything through; else 1 to `FILTER_MAX_ITEMS` names, each
    one of `known` when given."""
    if value is None:
        return None
    if not (
        isinstance(value, list)
        and 0 < len(value) <= FILTER_MAX_ITEMS
        and all(_label(item) for item in value)
    ):
        raise Unprocessable(
            f"{name} must be null (everything) or a list of 1 to {FILTER_MAX_ITEMS} non-empty"
            f" strings of at most {LABEL_MAX_CHARS} characters"
        )
    allowed = None if known is None else list(known)
    unknown = [item for item in value if allowed is not None and item not in allowed]
    if allowed is not None and unknown:
        raise Unprocessable(
            f"{name}: unknown {', '.join(map(repr, unknown[:5]))}; known: {', '.join(allowed)}"
        )
    return list(dict.fromkeys(value))


def _label(item: object) -> bool:
    return isinstance(item, str) and 0 < len(item) <= LABEL_MAX_CHARS and "\x00" not in item


# -- secrets -----------------------------------------------------------------------------


def new_secret() -> str:
    """A Standard Webhooks signing secret: `whsec_` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def new_endpoint_id() -> str:
    return "ep_" + secrets.token_hex(12)


def rotated(
    current: list[dict[str, Any]], secret: str, now: datetime, grace: int
) -> list[dict[str, Any]]:
    """The secrets after a rotation, newest first: `secret`, then every older one that
    signs until `now + grace` at the latest; those past their expiry are dropped."""
    until = now + timedelta(seconds=grace)
    kept = [{"secret": secret, "expires_at": None}]
    for entry in current:
        expires = _expiry(entry)
        ends = until if expires is None else min(expires, until)
        if ends > now:
            kept.append({"secret": entry["secret"], "expires_at": ends.isoformat()})
    return kept


def _expiry(entry: dict[str, Any]) -> datetime | None:
    raw = entry.get("expires_at")
    if not isinstance(raw, str):
        return None
    expires = datetime.fromisoformat(raw)
    return expires if expires.tzinfo else expires.replace(tzinfo=UTC)


def secret_json(entry: dict[str, Any]) -> contract.Secret:
    """A secret as answers show it after its creation: a prefix to tell it apart."""
    key = str(entry.get("secret", "")).removeprefix(SECRET_PREFIX)
    return contract.Secret(
        prefix=f"{SECRET_PREFIX}{key[:SECRET_SHOWN_CHARS]}…", expires_at=entry.get("expires_at")
    )


# -- answers -----------------------------------------------------------------------------


def endpoint_json(endpoint: Endpoint, health: dict[str, Any] | None = None) -> contract.Endpoint:
    """An endpoint as answers show it: its URL without credentials, its secrets by prefix,
    and, when given, its dispatches by state and its recent failures."""
    e = endpoint
    shown = contract.Endpoint(
        id=e.id,
        kind=e.kind,
        url=redact(e.url),
        description=e.description,
        providers=e.providers,
        owners=e.owners,
        event_types=e.event_types,
        include_unconfirmed=e.include_unconfirmed,
        secrets=[secret_json(entry) for entry in e.secrets],
        enabled=e.enabled,
        disabled_reason=e.disabled_reason,
        disabled_at=jsonable(e.disabled_at),
        failing_since=jsonable(e.failing_since),
        last_success_at=jsonable(e.last_success_at),
        created_at=jsonable(e.created_at),
        updated_at=jsonable(e.updated_at),
    )
    if health is not None:
        shown["health"] = health_json(health)
    return shown


def health_json(health: dict[str, Any]) -> contract.Health:
    return contract.Health(
        dispatches=health["dispatches"],
        recent_failures=[
            contract.Failure(
                at=jsonable(failure["at"]),
                status_code=failure["status_code"],
                latency_ms=failure["latency_ms"],
                error=failure["error"],
                answer=failure["answer"],
                msg_id=failure["msg_id"],
                task_ref=failure["task_ref"],
            )
            for failure in health["recent_failures"]
        ],
    )
