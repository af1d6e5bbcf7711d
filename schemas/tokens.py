"""Callback URL tokens: an itsdangerous signature binding our task ref to its provider."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from itsdangerous import BadData, URLSafeSerializer

SALT = "taskledger.callback.v1"
# A task's token comes back with each of its callbacks: remember recent verdicts.
VERIFIED_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Binding:
    task_ref: str
    provider: str


class CallbackTokens:
    """Makes and checks callback tokens; secrets rotate as a list, newest first."""

    def __init__(self, secrets: Sequence[str]) -> None:
        if not secrets:
            raise ValueError("at least one callback secret is needed")
        # itsdangerous signs with the last key and accepts any of them.
        self._serializer = URLSafeSerializer(list(reversed(secrets)), salt=SALT)
        # A verdict depends only on the token and these secrets, so it may be cached.
        self.verify = lru_cache(maxsize=VERIFIED_CACHE_SIZE)(self._verify)  # type: ignore[method-assign]

    def make(self, task_ref: str, provider: str) -> str:
        return str(self._serializer.dumps([task_ref, provider]))

    def verify(self, token: str) -> Binding | None:
        return self._verify(token)

    def _verify(self, token: str) -> Binding | None:
        """The binding a token carries, or None when it was not made with one of our secrets."""
        try:
            payload = self._serializer.loads(token)
        except (BadData, ValueError, UnicodeError):
            return None
        if not (
            isinstance(payload, list)
            and len(payload) == 2
            and all(isinstance(part, str) and part for part in payload)
        ):
            return None
        return Binding(task_ref=payload[0], provider=payload[1])
