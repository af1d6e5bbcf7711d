"""Callback signing, one scheme per provider: Standard Webhooks (OpenAI, Replicate), fal.ai's
Ed25519 over a digest of the body, kie.ai's HMAC over the task id and a timestamp.

A forged signature is well formed but made with the wrong key, so only verification fails.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from standardwebhooks import Webhook

if TYPE_CHECKING:
    from simulator.callbacks import Delivery

FAL_KEY_ID = "simulator-fal-1"


class Signer(Protocol):
    def headers(self, delivery: Delivery, timestamp: int, *, forged: bool) -> dict[str, str]:
        """The signature headers of one attempt at `timestamp` (unix seconds)."""
        ...


class StandardWebhooksSigner:
    """`webhook-id`, `webhook-timestamp`, `webhook-signature` (`v1,<base64 HMAC-SHA256>`)."""

    def __init__(self, secret: str) -> None:
        self._webhook = Webhook(secret)

    def headers(self, delivery: Delivery, timestamp: int, *, forged: bool) -> dict[str, str]:
        if delivery.webhook_id is None:
            return {}
        instant = datetime.fromtimestamp(timestamp, UTC)
        signature = self._webhook.sign(delivery.webhook_id, instant, delivery.body.decode())
        return {
            "webhook-id": delivery.webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": corrupt_signature(signature) if forged else signature,
        }


class FalSigner:
    """fal.ai's `X-Fal-Webhook-*` headers: Ed25519 over request id, user id, time, body digest.

    The key pair is drawn from `rng`; forged webhooks are signed by a second pair that the
    JWKS does not list.
    """

    def __init__(self, user_id: str, rng: random.Random) -> None:
        self.user_id = user_id
        self._key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
        self._forger = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))

    def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set listing the public key (`x`: base64url, no padding)."""
        raw = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        key = {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": FAL_KEY_ID, "use": "sig"}
        return {"keys": [{**key, "alg": "EdDSA"}]}

    def headers(self, delivery: Delivery, timestamp: int, *, forged: bool) -> dict[str, str]:
        message = fal_message(delivery.names, self.user_id, timestamp, delivery.body)
        signature = (self._forger if forged else self._key).sign(message)
        return {
            "x-fal-webhook-request-id": delivery.names,
            "x-fal-webhook-user-id": self.user_id,
            "x-fal-webhook-timestamp": str(timestamp),
            "x-fal-webhook-signature": signature.hex(),
        }


def fal_message(request_id: str, user_id: str, timestamp: int, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return f"{request_id}\n{user_id}\n{timestamp}\n{digest}".encode()


class KieSigner:
    """kie.ai's `X-Webhook-Timestamp` and `X-Webhook-Signature` (the body is not signed)."""

    def __init__(self, key: str) -> None:
        self._key = key.encode()

    def headers(self, delivery: Delivery, timestamp: int, *, forged: bool) -> dict[str, str]:
        key = self._key + b"-forged" if forged else self._key
        return {
            "x-webhook-timestamp": str(timestamp),
            "x-webhook-signature": kie_signature(key, delivery.names, timestamp),
        }


def kie_signature(key: bytes, task_id: str, timestamp: int) -> str:
    mac = hmac.new(key, f"{task_id}.{timestamp}".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def corrupt_signature(signature: str) -> str:
    """A well-formed `v1,<base64>` signature whose bytes no longer match."""
    version, _, encoded = signature.partition(",")
    raw = bytearray(base64.b64decode(encoded))
    raw[0] ^= 0xFF
    return f"{version},{base64.b64encode(bytes(raw)).decode()}"
