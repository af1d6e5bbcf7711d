"""Ed25519 public keys published as a JSON Web Key Set: fetched, cached at most a day,
fetched again when asked, but never more often than once a minute.

The only HTTP the receiver makes, and the only place it catches httpx errors.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import httpx
import orjson
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from receiver.errors import Overloaded
from schemas.clock import Clock

log = structlog.get_logger("taskledger.receiver")
KEYS_MAX_AGE_SECONDS = 86_400.0
# A forger who fails verification may make us look again, at most this often.
REFRESH_MIN_INTERVAL_SECONDS = 60.0
# Short, and few: a fetch happens while a sender waits for its answer (5 s deadline).
FETCH_TIMEOUT_SECONDS = 1.5
FETCH_ATTEMPTS = 2
RETRY_PAUSE_SECONDS = 0.25
MAX_JWKS_BYTES = 65_536
MAX_KEYS = 32


class KeysUnavailable(Overloaded):
    """No key set could be fetched: nothing can be verified now; the sender retries a 503."""

    reason = "keys_unavailable"


class KeySet:
    """The keys one JWKS URL publishes, as our clock sees their age."""

    def __init__(self, url: str, clock: Clock) -> None:
        self.url = url
        self._clock = clock
        self._keys: tuple[Ed25519PublicKey, ...] = ()
        self._fetched_at: datetime | None = None
        self._tried_at: datetime | None = None
        self._lock = asyncio.Lock()

    async def current(self) -> tuple[Ed25519PublicKey, ...]:
        """The cached keys, fetched first when there are none or they are a day old."""
        if not self._fresh():
            await self.refresh()
        if not self._fresh():
            raise KeysUnavailable(f"no key set could be fetched from {self.url}")
        return self._keys

    async def refresh(self) -> None:
        """Fetch the set again, unless a fetch was tried within the last minute (whoever
        waited for that one sees its keys); a failed fetch keeps the keys there were."""
        async with self._lock:
            now = self._clock()
            if self._tried_at is not None and (
                abs((now - self._tried_at).total_seconds()) < REFRESH_MIN_INTERVAL_SECONDS
            ):
                return
            self._tried_at = now
            keys = await self._fetch()
            if keys is not None:
                self._keys, self._fetched_at = keys, now

    def _fresh(self) -> bool:
        if self._fetched_at is None:
            return False
        age = (self._clock() - self._fetched_at).total_seconds()
        return 0 <= age <= KEYS_MAX_AGE_SECONDS

    async def _fetch(self) -> tuple[Ed25519PublicKey, ...] | None:
        """The published keys, or None when every attempt failed (each failure logged)."""
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_SECONDS) as http:
            for attempt in range(1, FETCH_ATTEMPTS + 1):
                try:
                    keys = await _fetch_once(http, self.url)
                except (httpx.HTTPError, ValueError) as exc:
                    log.warning(
                        "jwks_fetch_failed", url=self.url, attempt=attempt, error=str(exc)[:200]
                    )
                else:
                    log.info("jwks_fetched", url=self.url, keys=len(keys))
                    return keys
                if attempt < FETCH_ATTEMPTS:
                    await asyncio.sleep(RETRY_PAUSE_SECONDS)
        return None


async def _fetch_once(http: httpx.AsyncClient, url: str) -> tuple[Ed25519PublicKey, ...]:
    response = await http.get(url, headers={"accept": "application/json"})
    response.raise_for_status()
    if len(response.content) > MAX_JWKS_BYTES:
        raise ValueError(f"the key set is over {MAX_JWKS_BYTES} bytes")
    document = orjson.loads(response.content)
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("the document has no `keys` list")
    keys = ed25519_keys(entries[:MAX_KEYS])
    if not keys:
        raise ValueError("the key set holds no Ed25519 key")
    return keys


def ed25519_keys(entries: Sequence[Any]) -> tuple[Ed25519PublicKey, ...]:
    """The Ed25519 keys of a JWKS `keys` list (OKP, `x` in base64url); others skipped."""
    keys = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("x"), str):
            continue
        if entry.get("kty", "OKP") != "OKP" or entry.get("crv", "Ed25519") != "Ed25519":
            continue
        try:
            raw = base64.urlsafe_b64decode(entry["x"] + "=" * (-len(entry["x"]) % 4))
            keys.append(Ed25519PublicKey.from_public_bytes(raw))
        except (ValueError, binascii.Error):
            continue
    return tuple(keys)
