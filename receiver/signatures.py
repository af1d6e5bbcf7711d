"""Standard Webhooks verification: several secrets per source, a configurable tolerance.

The signature is `base64(HMAC-SHA256(key, "{id}.{timestamp}." + body))`, computed here over
the bytes as they came (the `standardwebhooks` library signs text: a body that is not UTF-8
could not verify there, though its sender signed it); keys as `schemas.settings.webhook_key`
reads them. Every `webhook-signature` header counts, each holding space-separated entries.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

from starlette.datastructures import Headers

from schemas.settings import WEBHOOK_TOLERANCE_SECONDS, webhook_key

MAX_SIGNATURES = 16
# A Unix time in seconds has 10 digits until 2286: more is no time to compare.
_STAMP_MAX_DIGITS = 12


class SignatureVerifier:
    """`raw_unprefixed`: a secret without `whsec_` is the key's own bytes, as OpenAI's SDK
    takes it (the Standard Webhooks libraries decode every secret as base64)."""

    def __init__(
        self,
        secrets: Sequence[str],
        clock: Callable[[], datetime],
        tolerance_seconds: float = WEBHOOK_TOLERANCE_SECONDS,
        *,
        raw_unprefixed: bool = False,
    ) -> None:
        # Each key's HMAC with its pads hashed in already: a copy of it per message skips
        # that work and OpenSSL's look-up of the digest (1.1 against 1.8 µs a message).
        self._keys = [
            hmac.new(webhook_key(secret, raw_unprefixed), digestmod=hashlib.sha256)
            for secret in secrets
        ]
        self._clock = clock
        self._tolerance = tolerance_seconds

    def verify(self, body: bytes, headers: Mapping[str, str]) -> str | None:
        """The `webhook-id` of a delivery that verifies, else None. Never raises."""
        try:
            return self._verify(body, headers)
        except Exception:
            return None

    def _verify(self, body: bytes, headers: Mapping[str, str]) -> str | None:
        msg_id = headers.get("webhook-id", "")
        stamp = headers.get("webhook-timestamp", "")
        offered = _offered_signatures(_all(headers, "webhook-signature"))
        if not (msg_id and stamp.isascii() and stamp.isdigit() and offered):
            return None
        # Seconds on both sides (an out-of-range stamp raises: `verify` says None).
        if abs(self._clock().timestamp() - int(stamp)) > self._tolerance:
            return None
        # Header values arrive decoded as latin-1: encoded back, they are the bytes sent.
        raw_id = msg_id.encode("latin-1")
        signed = b"%s.%s.%s" % (raw_id, stamp.encode(), body)
        for keyed in self._keys:
            mac = keyed.copy()
            mac.update(signed)
            expected = binascii.b2a_base64(mac.digest(), newline=False)
            if any(hmac.compare_digest(expected, candidate) for candidate in offered):
                return _text(raw_id)
        return None

    def refusal(self, body: bytes, headers: Mapping[str, str]) -> str:
        """Why a delivery that did not verify was refused, for its 401 (off the hot path):
        a missing header, a timestamp off this server's clock, or the signature itself.
        It tells a sender what to mend, nothing a forger could not read in the spec."""
        missing = [
            name
            for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
            if not headers.get(name, "")
        ]
        if missing:
            return f"the webhook has no {', '.join(missing)} header"
        stamp = headers.get("webhook-timestamp", "")
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= _STAMP_MAX_DIGITS):
            return "the webhook-timestamp header is not a time in Unix seconds"
        off = self._clock().timestamp() - int(stamp)
        if abs(off) > self._tolerance:
            when = "old" if off > 0 else "ahead of this server's clock"
            return (
                f"the webhook-timestamp is {abs(off):.0f} s {when}, past the"
                f" {self._tolerance:g} s allowed (a replay, or a clock that is off)"
            )
        if not _offered_signatures(_all(headers, "webhook-signature")):
            return "the webhook-signature header holds no v1 signature"
        return "the webhook signature does not verify (another secret, or an altered body)"


def _offered_signatures(headers: list[str]) -> list[bytes]:
    """The base64 parts of the `v1,` entries of the `webhook-signature` headers."""
    offered = []
    for entry in " ".join(headers).split()[:MAX_SIGNATURES]:
        version, _, signature = entry.partition(",")
        if version == "v1" and signature:
            offered.append(signature.encode("latin-1"))
    return offered


def _all(headers: Mapping[str, str], name: str) -> list[str]:
    """Every value of a header a request repeats (a plain mapping holds one)."""
    if isinstance(headers, Headers):
        return headers.getlist(name)
    return [headers.get(name, "")]


def _text(raw: bytes) -> str:
    """A header's bytes as text: UTF-8 when they are, else as they came (latin-1)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")
