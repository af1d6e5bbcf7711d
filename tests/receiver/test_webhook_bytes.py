"""Standard Webhooks signatures over the bytes as sent (the spec signs
`{id}.{timestamp}.{body}`, whatever the body holds), through real HTTP on SQLite and
PostgreSQL: a body that is not UTF-8, an id that is, and repeated signature headers."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import FakeClock
from tests.support.senders import WEBHOOK_SECRET, openai_event
from tests.support.service import Service, running_service, settings_for

KEY = base64.b64decode(WEBHOOK_SECRET.removeprefix("whsec_"))


@pytest.fixture
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    async with running_service(settings_for(database_url), clock) as service:
        yield service


def signature(msg_id: bytes, stamp: int, body: bytes, key: bytes = KEY) -> bytes:
    signed = msg_id + b"." + str(stamp).encode() + b"." + body
    return b"v1," + base64.b64encode(hmac.digest(key, signed, hashlib.sha256))


async def post(service: Service, body: bytes, headers: list[tuple[bytes, bytes]]) -> httpx.Response:
    return await service.http.post("/webhooks/openai", content=body, headers=headers)


async def test_a_signed_body_that_is_not_utf8_is_kept(service: Service, clock: FakeClock) -> None:
    stamp, body = int(clock().timestamp()), b'{"type": "video.completed", "x": "\xff\xfe"}'
    sent = [
        (b"webhook-id", b"msg_latin"),
        (b"webhook-timestamp", str(stamp).encode()),
        (b"webhook-signature", signature(b"msg_latin", stamp, body)),
    ]
    response = await post(service, body, sent)
    assert response.status_code in (200, 202), response.text
    again = await post(service, body, sent)
    assert again.json() == {"outcome": "duplicate"}


async def test_a_utf8_webhook_id_verifies_and_is_kept_as_text(
    service: Service, clock: FakeClock
) -> None:
    await service.register("openai", provider_task_id="video_u")
    stamp, body, msg_id = int(clock().timestamp()), openai_event("video_u"), "msg_ünï".encode()
    sent = [
        (b"webhook-id", msg_id),
        (b"webhook-timestamp", str(stamp).encode()),
        (b"webhook-signature", signature(msg_id, stamp, body)),
    ]
    response = await post(service, body, sent)
    assert response.json() == {"outcome": "applied"}


@pytest.mark.parametrize("good_first", [True, False], ids=["good-first", "bad-first"])
async def test_every_signature_header_counts(
    service: Service, clock: FakeClock, good_first: bool
) -> None:
    await service.register("openai", provider_task_id="video_h")
    stamp, body = int(clock().timestamp()), openai_event("video_h")
    good = signature(b"msg_h", stamp, body)
    bad = signature(b"msg_h", stamp, body, key=b"another key")
    headers = [
        (b"webhook-signature", value) for value in ((good, bad) if good_first else (bad, good))
    ]
    sent = [(b"webhook-id", b"msg_h"), (b"webhook-timestamp", str(stamp).encode()), *headers]
    response = await post(service, body, sent)
    assert response.json() == {"outcome": "applied"}
