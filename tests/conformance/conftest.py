"""One receiver per test module and backend, with a provider account per name the module
declares in `PROVIDERS` (so each case owns its provider task ids), and the helpers that post
a body through the real callback routes, signed as each provider documents (fal's key set is
served on loopback)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from schemas.definition import Definition
from schemas.settings import ProviderSettings
from schemas.wire import Kind
from tests.conftest import FakeClock
from tests.support.databases import BACKENDS, temporary_database
from tests.support.senders import WEBHOOK_SECRET, signed_headers
from tests.support.servers import serve
from tests.support.service import Service, running_service, settings_for
from tests.support.signers import FAL_USER_ID, KIE_KEY, fal_headers, kie_headers

JSON = {"content-type": "application/json"}
# fal's signing key for the corpus (its public half served as a JWKS on loopback).
FAL_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


@dataclass
class Ledger:
    """The running receiver and the clock it reads."""

    service: Service
    clock: FakeClock

    async def deliver(
        self, provider: str, kind: Kind, body: bytes, task_id: str | None
    ) -> tuple[httpx.Response, dict[str, Any] | None]:
        """Register a task for `task_id` (when the body names one), post `body` as the
        provider would, and answer with the response and that task as it is then."""
        task = None
        if task_id is not None or not kind.signs_callbacks:
            fields = {} if task_id is None else {"provider_task_id": task_id}
            task = await self.service.register(provider, **fields)
        if kind.signs_callbacks:
            headers = signed_headers(body, self.clock())
            response = await self.service.http.post(
                f"/webhooks/{provider}", content=body, headers=headers
            )
        else:
            assert task is not None
            path = urlsplit(task["callback_url"]).path
            headers = signed_as_documented(kind, body, task_id, int(self.clock().timestamp()))
            response = await self.service.http.post(path, content=body, headers=headers)
        shown = None if task is None else await self.service.task(task["ref"])
        return response, shown


def signed_as_documented(
    kind: Kind, body: bytes, task_id: str | None, timestamp: int
) -> dict[str, str]:
    """The headers of a token callback: fal's Ed25519 and kie's HMAC signatures, as their
    docs say (tests/support/signers.py), else the content type alone."""
    verify = kind.verify if isinstance(kind, Definition) else "url-token"
    if verify == "ed25519-jwks":
        return fal_headers(body, FAL_KEY, timestamp, request_id=task_id or "")
    if verify == "hmac-fields":
        return kie_headers(task_id or "", timestamp)
    return JSON


def provider_settings(providers: dict[str, Kind], jwks_url: str) -> dict[str, ProviderSettings]:
    return {name: _account(name, kind, jwks_url) for name, kind in providers.items()}


def _account(name: str, kind: Kind, jwks_url: str) -> ProviderSettings:
    verify = kind.verify if isinstance(kind, Definition) else "url-token"
    if kind.signs_callbacks:
        return ProviderSettings(name, kind, webhook_secrets=(WEBHOOK_SECRET,))
    if verify == "ed25519-jwks":
        return ProviderSettings(name, kind, jwks_url=jwks_url, webhook_user_id=FAL_USER_ID)
    if verify == "hmac-fields":
        return ProviderSettings(name, kind, webhook_secrets=(KIE_KEY,))
    return ProviderSettings(name, kind)


def jwks_app() -> Starlette:
    """fal's key set, publishing `FAL_KEY`'s public half (`x`: base64url, no padding)."""
    raw = FAL_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    keys = {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "conformance"}]}

    async def jwks(request: Request) -> JSONResponse:
        return JSONResponse(keys)

    return Starlette(routes=[Route("/.well-known/jwks.json", jwks)])


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=BACKENDS)
async def ledger(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Ledger]:
    clock = FakeClock()
    directory = tmp_path_factory.mktemp("conformance")
    async with (
        serve(jwks_app()) as keys_url,
        temporary_database(request.param, directory) as url,
    ):
        jwks_url = f"{keys_url}/.well-known/jwks.json"
        providers = provider_settings(request.module.PROVIDERS, jwks_url)
        settings = replace(settings_for(url), providers=providers)
        async with running_service(settings, clock) as service:
            yield Ledger(service, clock)
