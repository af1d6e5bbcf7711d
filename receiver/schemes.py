"""What a token callback must prove beyond its URL token, per provider: nothing
(`url-token`), fal's Ed25519 signature over the body (`ed25519-jwks`), or kie's HMAC over
the task id and a timestamp (`hmac-fields`).

A scheme answers how the delivery is authenticated (`Auth`), or None: not authenticated.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from receiver.jwks import KeySet
from schemas.clock import Clock
from schemas.definition import Definition
from schemas.ledger import NOT_JSON, Auth
from schemas.settings import ProviderSettings, Settings, check_key_set
from schemas.wire import Kind, task_id_hint

FAL_HEADERS = (
    "x-fal-webhook-request-id",
    "x-fal-webhook-user-id",
    "x-fal-webhook-timestamp",
    "x-fal-webhook-signature",
)
ED25519_SIGNATURE_BYTES = 64
# Unix seconds have 10 digits until 2286; more is not a timestamp.
TIMESTAMP_MAX_DIGITS = 12


class CallbackScheme(Protocol):
    async def verify(
        self, body: bytes, headers: Mapping[str, str], payload: Any
    ) -> Auth | None: ...


class UrlToken:
    """The token alone: the body is a hint until a poll agrees."""

    async def verify(self, body: bytes, headers: Mapping[str, str], payload: Any) -> Auth | None:
        return Auth.TOKEN


class Ed25519Jwks:
    """fal: an Ed25519 signature over request id, user id, timestamp and the body's SHA-256,
    by any key of the published set, from our own (pinned) user id. It covers the body, so
    a callback that verifies is as good as a signed webhook."""

    def __init__(self, keys: KeySet, user_id: str, clock: Clock, tolerance_seconds: float):
        self._keys = keys
        self._user_id = user_id
        self._clock = clock
        self._tolerance = tolerance_seconds

    async def verify(self, body: bytes, headers: Mapping[str, str], payload: Any) -> Auth | None:
        signed = self._signed_message(body, headers)
        if signed is None:
            return None
        message, signature = signed
        keys = await self._keys.current()
        if _any_verifies(keys, signature, message):
            return Auth.SIGNATURE
        # Perhaps a key we have not seen yet (fal sends no key id): look again, rarely.
        await self._keys.refresh()
        fresh = await self._keys.current()
        if fresh is not keys and _any_verifies(fresh, signature, message):
            return Auth.SIGNATURE
        return None

    def _signed_message(
        self, body: bytes, headers: Mapping[str, str]
    ) -> tuple[bytes, bytes] | None:
        """The message fal signs and the signature offered, when the headers are all there,
        from our user, and recent; else None (no key is fetched for such a request)."""
        request_id, user_id, stamp, signature_hex = (headers.get(h, "") for h in FAL_HEADERS)
        if not (request_id and user_id and signature_hex):
            return None
        if not hmac.compare_digest(user_id.encode(), self._user_id.encode()):
            return None
        if not recent(stamp, self._clock, self._tolerance):
            return None
        try:
            signature = bytes.fromhex(signature_hex)
        except ValueError:
            return None
        if len(signature) != ED25519_SIGNATURE_BYTES:
            return None
        digest = hashlib.sha256(body).hexdigest()
        return f"{request_id}\n{user_id}\n{stamp}\n{digest}".encode(), signature


class HmacFields:
    """kie: base64(HMAC-SHA256(key, taskId + "." + timestamp)) in `X-Webhook-Signature`.
    The body is not signed, so a callback that verifies is still a hint; the task id
    signed must be the one the body names. Without a key (signing is optional in kie's
    account settings) the token alone authenticates."""

    def __init__(self, kind: Kind, secrets: Sequence[str], clock: Clock, tolerance_seconds: float):
        self._kind = kind
        self._keys = tuple(secret.encode("utf-8") for secret in secrets)
        self._clock = clock
        self._tolerance = tolerance_seconds

    async def verify(self, body: bytes, headers: Mapping[str, str], payload: Any) -> Auth | None:
        if not self._keys:
            return Auth.TOKEN
        stamp = headers.get("x-webhook-timestamp", "")
        offered = headers.get("x-webhook-signature", "").strip().encode("utf-8", "replace")
        if not (offered and recent(stamp, self._clock, self._tolerance)):
            return None
        task_id = None if payload is NOT_JSON else task_id_hint(self._kind, payload)
        if not task_id:
            return None
        message = f"{task_id}.{stamp}".encode()
        for key in self._keys:
            expected = base64.b64encode(hmac.new(key, message, hashlib.sha256).digest())
            if hmac.compare_digest(expected, offered):
                return Auth.TOKEN
        return None


def recent(stamp: str, clock: Clock, tolerance_seconds: float) -> bool:
    """A unix-seconds timestamp within `tolerance_seconds` of our clock, either way."""
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= TIMESTAMP_MAX_DIGITS):
        return False
    return abs(clock().timestamp() - int(stamp)) <= tolerance_seconds


def _any_verifies(keys: Sequence[Ed25519PublicKey], signature: bytes, message: bytes) -> bool:
    for key in keys:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        return True
    return False


def callback_schemes(settings: Settings, clock: Clock) -> dict[str, CallbackScheme]:
    """The scheme of each provider whose callbacks come to the token route."""
    return {
        name: scheme_for(provider, clock, settings.webhook_tolerance_seconds)
        for name, provider in settings.providers.items()
        if not provider.kind.signs_callbacks
    }


def scheme_for(
    provider: ProviderSettings, clock: Clock, tolerance_seconds: float
) -> CallbackScheme:
    """A provider's scheme, from its definition's `[callbacks] verify`; a ConfigError names
    the setting a scheme needs and lacks."""
    verify = provider.kind.verify if isinstance(provider.kind, Definition) else "url-token"
    if verify == "hmac-fields":
        return HmacFields(provider.kind, provider.webhook_secrets, clock, tolerance_seconds)
    if verify != "ed25519-jwks":
        return UrlToken()
    check_key_set(provider)
    keys = KeySet(provider.jwks_url, clock)
    return Ed25519Jwks(keys, provider.webhook_user_id, clock, tolerance_seconds)
