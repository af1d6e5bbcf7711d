"""API keys over the admin API (admin scope): made with their key shown once, listed by
prefix, revoked. The ledger keeps a key's id and its secret's SHA-256, never the secret.
"""

from __future__ import annotations

from typing import cast

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from receiver import contract
from receiver.admin import ADMIN_BODY_LIMIT_BYTES, jsonable
from receiver.auth import KeyCache, authorize, is_key_id, issue_key, listed_prefix
from receiver.bodies import read_json
from receiver.contract import validated
from receiver.errors import NotFound, Unprocessable
from schemas.store import LedgerStore
from schemas.store.keys import ApiKey, KeyScope

log = structlog.get_logger("taskledger.receiver")


async def create_key(request: Request) -> Response:
    """`POST /v1/keys`: a new key; the answer's `key` is the only time it is shown."""
    await authorize(request, KeyScope.ADMIN)
    body = validated(contract.NewKey, await read_json(request, ADMIN_BODY_LIMIT_BYTES))
    name = body.name.strip()
    if not name:
        raise Unprocessable("name is required: what the key is for")
    scope = KeyScope(body.scope)
    owner = body.owner  # trimmed, never blank (`contract.Owner`): None is every owner
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


def key_json(key: ApiKey) -> contract.ApiKey:
    """A key as answers show it: its prefix, never its secret nor the secret's hash."""
    return contract.ApiKey(
        id=key.id,
        prefix=listed_prefix(key.id),
        name=key.name,
        scope=cast(contract.Scope, key.scope),
        owner=key.owner,
        created_at=key.created_at.isoformat(),
        last_used_at=jsonable(key.last_used_at),
        revoked_at=jsonable(key.revoked_at),
    )
