"""API keys over the admin API (admin scope): made with their key shown once, listed by
prefix, revoked. The ledger keeps a key's id and its secret's SHA-256, never the secret.
"""

from __future__ import annotations

from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from receiver.admin import ADMIN_BODY_LIMIT_BYTES, jsonable, known_fields
from receiver.auth import KeyCache, authorize, is_key_id, issue_key, listed_prefix
from receiver.bodies import read_json
from receiver.errors import NotFound, Unprocessable
from schemas.store import LedgerStore
from schemas.store.keys import ApiKey, KeyScope
from schemas.tables import LABEL_MAX_CHARS

log = structlog.get_logger("taskledger.receiver")

KEY_FIELDS = ("name", "scope", "owner")
SCOPES = tuple(scope.value for scope in KeyScope)


async def create_key(request: Request) -> Response:
    """`POST /v1/keys`: a new key; the answer's `key` is the only time it is shown."""
    await authorize(request, KeyScope.ADMIN)
    body = known_fields(await read_json(request, ADMIN_BODY_LIMIT_BYTES), KEY_FIELDS)
    name = _label(body.get("name"), "name")
    if not name:
        raise Unprocessable("name is required: what the key is for")
    scope = _scope(body.get("scope"))
    owner = _label(body.get("owner"), "owner") or None
    if owner is not None and scope is KeyScope.ADMIN:
        raise Unprocessable("an admin key sees every owner: limit a read or write key instead")
    issued = issue_key()
    store: LedgerStore = request.app.state.store
    key = await store.create_key(issued.key_id, name, issued.secret_sha256, scope, owner)
    log.info("api_key_created", key_id=key.id, scope=key.scope, owner=key.owner)
    return JSONResponse(key_json(key) | {"key": issued.token}, 201)


async def list_keys(request: Request) -> Response:
    """`GET /v1/keys`: every key by its prefix, revoked ones too; never a secret."""
    await authorize(request, KeyScope.ADMIN)
    store: LedgerStore = request.app.state.store
    return JSONResponse({"keys": [key_json(key) for key in await store.api_keys()]})


async def revoke_key(request: Request) -> Response:
    """`DELETE /v1/keys/{id}`: the key stops working at once in this process, within
    `receiver.auth.KEY_CACHE_SECONDS` in every other; revoking it again changes nothing."""
    await authorize(request, KeyScope.ADMIN)
    key_id: str = request.path_params["id"]
    store: LedgerStore = request.app.state.store
    key = await store.revoke_key(key_id) if is_key_id(key_id) else None
    if key is None:
        raise NotFound("no key has this id")
    cache: KeyCache = request.app.state.keys
    cache.forget(key_id)
    log.info("api_key_revoked", key_id=key_id)
    return JSONResponse(key_json(key))


def key_json(key: ApiKey) -> dict[str, Any]:
    """A key as answers show it: its prefix, never its secret nor the secret's hash."""
    return {
        "id": key.id,
        "prefix": listed_prefix(key.id),
        "name": key.name,
        "scope": key.scope,
        "owner": key.owner,
        "created_at": jsonable(key.created_at),
        "last_used_at": jsonable(key.last_used_at),
        "revoked_at": jsonable(key.revoked_at),
    }


def _scope(value: object) -> KeyScope:
    if not isinstance(value, str) or value not in SCOPES:
        raise Unprocessable(f"scope must be one of: {', '.join(SCOPES)}")
    return KeyScope(value)


def _label(value: object, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > LABEL_MAX_CHARS or "\x00" in value:
        raise Unprocessable(f"{name} must be a string of at most {LABEL_MAX_CHARS} characters")
    return value.strip()
