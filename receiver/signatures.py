"""Standard Webhooks verification: several secrets per source, a configurable tolerance.

The HMAC itself is the `standardwebhooks` library's; the timestamp is checked here
against our clock and tolerance (the library hard-codes both).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from standardwebhooks import Webhook

from schemas.settings import WEBHOOK_TOLERANCE_SECONDS, webhook_key

MAX_SIGNATURES = 16


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
        self._hooks = [Webhook(webhook_key(secret, raw_unprefixed)) for secret in secrets]
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
        offered = _offered_signatures(headers.get("webhook-signature", ""))
        if not (msg_id and stamp.isascii() and stamp.isdigit() and offered):
            return None
        sent_at = datetime.fromtimestamp(int(stamp), tz=UTC)
        if abs((self._clock() - sent_at).total_seconds()) > self._tolerance:
            return None
        text = body.decode("utf-8")
        for hook in self._hooks:
            expected = hook.sign(msg_id=msg_id, timestamp=sent_at, data=text).split(",", 1)[1]
            if any(hmac.compare_digest(expected, candidate) for candidate in offered):
                return msg_id
        return None


def _offered_signatures(header: str) -> list[str]:
    """The base64 parts of the `v1,` entries of a `webhook-signature` header."""
    offered = []
    for entry in header.split()[:MAX_SIGNATURES]:
        version, _, signature = entry.partition(",")
        if version == "v1" and signature:
            offered.append(signature)
    return offered
