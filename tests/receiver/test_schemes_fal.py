"""fal's Ed25519 callbacks on the token route: the token binds the task, the signature (by
a key of a JWKS served on loopback) proves fal sent the body; both, or 401 and nothing kept.

The signer here is written from fal's documented message layout, not from our verifier.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from schemas.settings import Settings
from tests.conftest import FakeClock
from tests.support.servers import serve
from tests.support.service import ADMIN_TOKEN, CALLBACK_SECRETS, Service, running_service
from tests.support.signers import FAL_USER_ID, fal_body, fal_headers

DEFINITION = """
name = "falsigned"

[auth]
scheme = "key"

[submit]
path = "/fal-ai/veo3"
callback = "query:fal_webhook"
task_id = ["request_id"]

[poll]
path = "/fal-ai/veo3/requests/{task_id}/status"

[fields]
task_id = ["request_id"]
status = ["status"]
result_urls = ["payload.video.url"]
error_message = ["error"]

[states]
IN_QUEUE = "queued"
IN_PROGRESS = "running"
OK = "succeeded"
ERROR = "failed"

[callbacks]
verify = "ed25519-jwks"
jwks_url = "https://rest.alpha.fal.ai/.well-known/jwks.json"
"""


@dataclass
class Jwks:
    """fal's key set endpoint: the keys it publishes now, and how often it was asked."""

    keys: dict[str, Ed25519PrivateKey] = field(default_factory=dict)
    fetches: int = 0

    async def endpoint(self, request: Request) -> JSONResponse:
        self.fetches += 1
        return JSONResponse({"keys": [_jwk(kid, key) for kid, key in self.keys.items()]})


def _jwk(kid: str, key: Ed25519PrivateKey) -> dict[str, str]:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return {"kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig", "alg": "EdDSA", "x": x}


def _settings(database_url: str, directory: Path, jwks_url: str) -> Settings:
    (directory / "falsigned.toml").write_text(DEFINITION, encoding="utf-8")
    return Settings.from_environ(
        {
            "TASKLEDGER_DATABASE_URL": database_url,
            "TASKLEDGER_ADMIN_TOKEN": ADMIN_TOKEN,
            "TASKLEDGER_CALLBACK_SECRETS": ",".join(CALLBACK_SECRETS),
            "TASKLEDGER_PROVIDERS_DIR": str(directory),
            "TASKLEDGER_PROVIDERS": "falsigned",
            "TASKLEDGER_PROVIDER_FALSIGNED_JWKS_URL": jwks_url,
            "TASKLEDGER_PROVIDER_FALSIGNED_WEBHOOK_USER_ID": FAL_USER_ID,
        }
    )


@pytest.fixture
def jwks() -> Jwks:
    return Jwks({"key-1": Ed25519PrivateKey.generate()})


@pytest.fixture
async def service(
    database_url: str, clock: FakeClock, tmp_path: Path, jwks: Jwks
) -> AsyncIterator[Service]:
    app = Starlette(routes=[Route("/.well-known/jwks.json", jwks.endpoint)])
    async with serve(app) as jwks_base:
        settings = _settings(database_url, tmp_path, f"{jwks_base}/.well-known/jwks.json")
        async with running_service(settings, clock) as service:
            yield service


async def test_signed_fal_callback_is_accepted_and_folded_in_as_signed(
    service: Service, clock: FakeClock, jwks: Jwks
) -> None:
    ref, path = await service.task_with_callback("falsigned", provider_task_id="req-1")
    body = fal_body("req-1")
    response = await service.http.post(
        path, content=body, headers=fal_headers(body, jwks.keys["key-1"], clock.unix())
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"outcome": "applied"}
    task = await service.task(ref)
    assert task["state"] == "succeeded"
    assert task["result"]["urls"] == ["https://v3.fal.media/files/req-1.mp4"]
    assert task["confirmed"] is True  # the signature covers the body: no poll needed


def _wrong_key(body: bytes, jwks: Jwks, now: int) -> tuple[bytes, dict[str, str]]:
    return body, fal_headers(body, Ed25519PrivateKey.generate(), now)


def _wrong_user(body: bytes, jwks: Jwks, now: int) -> tuple[bytes, dict[str, str]]:
    return body, fal_headers(body, jwks.keys["key-1"], now, user_id="user-other")


def _stale(body: bytes, jwks: Jwks, now: int) -> tuple[bytes, dict[str, str]]:
    return body, fal_headers(body, jwks.keys["key-1"], now - 301)


def _from_the_future(body: bytes, jwks: Jwks, now: int) -> tuple[bytes, dict[str, str]]:
    return body, fal_headers(body, jwks.keys["key-1"], now + 301)


def _tampered(body: bytes, jwks: Jwks, now: int) -> tuple[bytes, dict[str, str]]:
    headers = fal_headers(body, jwks.keys["key-1"], now)
    return body.replace(b"req-1.mp4", b"evil.mp4"), headers


def _bad_hex(body: bytes, jwks: Jwks, now: int) -> tuple[bytes, dict[str, str]]:
    headers = fal_headers(body, jwks.keys["key-1"], now)
    return body, {**headers, "x-fal-webhook-signature": "zz" * 64}


def _missing(header: str) -> Any:
    def build(body: bytes, jwks: Jwks, now: int) -> tuple[bytes, dict[str, str]]:
        headers = fal_headers(body, jwks.keys["key-1"], now)
        del headers[header]
        return body, headers

    return build


REFUSED = {
    "wrong-key": _wrong_key,
    "wrong-user-id": _wrong_user,
    "stale-timestamp": _stale,
    "future-timestamp": _from_the_future,
    "tampered-body": _tampered,
    "signature-not-hex": _bad_hex,
    "no-request-id": _missing("x-fal-webhook-request-id"),
    "no-user-id": _missing("x-fal-webhook-user-id"),
    "no-timestamp": _missing("x-fal-webhook-timestamp"),
    "no-signature": _missing("x-fal-webhook-signature"),
}


async def test_fal_callback_that_does_not_verify_is_refused_and_nothing_stored(
    service: Service, clock: FakeClock, jwks: Jwks, subtests: pytest.Subtests
) -> None:
    """Every forgery at one task, the first on a cold key cache: each refused, none kept."""
    ref, path = await service.task_with_callback("falsigned", provider_task_id="req-1")
    for name, forge in REFUSED.items():
        with subtests.test(forgery=name):
            before = await service.task(ref)
            body, headers = forge(fal_body("req-1"), jwks, clock.unix())
            response = await service.http.post(path, content=body, headers=headers)
            assert response.status_code == 401, response.text
            task = await service.task(ref)
            assert task["state"] == before["state"]
            assert task["timeline"]["deliveries"] == before["timeline"]["deliveries"]
    task = await service.task(ref)
    assert task["state"] == "submitted"
    assert task["timeline"]["deliveries"] == []


async def test_fal_signature_without_a_valid_token_is_refused(
    service: Service, clock: FakeClock, jwks: Jwks
) -> None:
    ref, path = await service.task_with_callback("falsigned", provider_task_id="req-1")
    body = fal_body("req-1")
    headers = fal_headers(body, jwks.keys["key-1"], clock.unix())
    response = await service.http.post(path[:-3] + "xyz", content=body, headers=headers)
    assert response.status_code == 401, response.text
    assert (await service.task(ref))["timeline"]["deliveries"] == []
    assert jwks.fetches == 0  # without a token, no key is ever fetched


async def test_jwks_is_fetched_once_for_many_callbacks(
    service: Service, clock: FakeClock, jwks: Jwks
) -> None:
    for n in range(5):
        _, path = await service.task_with_callback("falsigned", provider_task_id=f"req-{n}")
        body = fal_body(f"req-{n}")
        headers = fal_headers(body, jwks.keys["key-1"], clock.unix(), request_id=f"req-{n}")
        assert (await service.http.post(path, content=body, headers=headers)).status_code == 200
        clock.advance(30)
    assert jwks.fetches == 1


async def test_concurrent_callbacks_on_a_cold_cache_make_one_fetch(
    service: Service, clock: FakeClock, jwks: Jwks
) -> None:
    posts = []
    for n in range(10):
        _, path = await service.task_with_callback("falsigned", provider_task_id=f"req-{n}")
        body = fal_body(f"req-{n}")
        headers = fal_headers(body, jwks.keys["key-1"], clock.unix(), request_id=f"req-{n}")
        posts.append(service.http.post(path, content=body, headers=headers))
    answers = await asyncio.gather(*posts)
    assert [answer.status_code for answer in answers] == [200] * 10
    assert jwks.fetches == 1


async def test_rotated_key_is_picked_up_by_one_refresh(
    service: Service, clock: FakeClock, jwks: Jwks
) -> None:
    _, first = await service.task_with_callback("falsigned", provider_task_id="req-1")
    body = fal_body("req-1")
    assert (
        await service.http.post(
            first, content=body, headers=fal_headers(body, jwks.keys["key-1"], clock.unix())
        )
    ).status_code == 200
    jwks.keys = {"key-2": Ed25519PrivateKey.generate()}  # fal rotates: a new kid
    clock.advance(3600)
    for n in (2, 3, 4):
        ref, path = await service.task_with_callback("falsigned", provider_task_id=f"req-{n}")
        body = fal_body(f"req-{n}")
        headers = fal_headers(body, jwks.keys["key-2"], clock.unix(), request_id=f"req-{n}")
        assert (await service.http.post(path, content=body, headers=headers)).status_code == 200
        assert (await service.task(ref))["state"] == "succeeded"
    assert jwks.fetches == 2


async def test_failed_verifications_do_not_make_a_fetch_each(
    service: Service, clock: FakeClock, jwks: Jwks
) -> None:
    _, path = await service.task_with_callback("falsigned", provider_task_id="req-1")
    body = fal_body("req-1")
    assert (
        await service.http.post(
            path, content=body, headers=fal_headers(body, jwks.keys["key-1"], clock.unix())
        )
    ).status_code == 200
    clock.advance(3600)
    forger = Ed25519PrivateKey.generate()
    for _ in range(10):
        response = await service.http.post(
            path, content=body, headers=fal_headers(body, forger, clock.unix())
        )
        assert response.status_code == 401
    assert jwks.fetches == 2  # one refresh for the first failure, none for the rest


async def test_keys_older_than_a_day_are_fetched_again(
    service: Service, clock: FakeClock, jwks: Jwks
) -> None:
    _, path = await service.task_with_callback("falsigned", provider_task_id="req-1")
    body = fal_body("req-1")
    for _ in range(2):
        headers = fal_headers(body, jwks.keys["key-1"], clock.unix())
        assert (await service.http.post(path, content=body, headers=headers)).status_code == 200
        clock.advance(86_401)
    assert jwks.fetches == 2
