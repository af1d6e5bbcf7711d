"""fal's and kie's callbacks as their docs say they are signed, written from the docs
alone (not from receiver/schemes.py), so a mistake in either shows as a failure."""

from __future__ import annotations

import base64
import hashlib
import hmac

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

FAL_USER_ID = "user-7f3a"
KIE_KEY = "kie-hmac-key-new"


def fal_headers(
    body: bytes,
    key: Ed25519PrivateKey,
    timestamp: int,
    *,
    request_id: str = "req-1",
    user_id: str = FAL_USER_ID,
) -> dict[str, str]:
    """The headers fal sends: its docs' message, signed with `key`, the signature in hex."""
    message = "\n".join(
        [request_id, user_id, str(timestamp), hashlib.sha256(body).hexdigest()]
    ).encode("utf-8")
    return {
        "content-type": "application/json",
        "x-fal-webhook-request-id": request_id,
        "x-fal-webhook-user-id": user_id,
        "x-fal-webhook-timestamp": str(timestamp),
        "x-fal-webhook-signature": key.sign(message).hex(),
    }


def fal_body(request_id: str) -> bytes:
    return orjson.dumps(
        {
            "request_id": request_id,
            "gateway_request_id": request_id,
            "status": "OK",
            "payload": {"video": {"url": f"https://v3.fal.media/files/{request_id}.mp4"}},
        }
    )


def kie_body(task_id: str) -> bytes:
    result = orjson.dumps({"resultUrls": [f"https://tempfile.kie.ai/{task_id}.mp4"]}).decode()
    data = {"taskId": task_id, "state": "success", "resultJson": result}
    return orjson.dumps({"code": 200, "msg": "Video generated successfully.", "data": data})


def kie_headers(task_id: str, timestamp: int, key: str = KIE_KEY) -> dict[str, str]:
    """kie's docs: base64(HMAC-SHA256(key, taskId + "." + timestamp))."""
    message = f"{task_id}.{timestamp}".encode()
    digest = hmac.new(key.encode(), message, hashlib.sha256).digest()
    return {
        "content-type": "application/json",
        "x-webhook-timestamp": str(timestamp),
        "x-webhook-signature": base64.b64encode(digest).decode(),
    }
