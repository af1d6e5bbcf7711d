"""Callback URL tokens: an itsdangerous signature binding our task ref to its provider."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from itsdangerous import BadData, URLSafeSerializer

SALT = "taskledger.callback.v1"


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

    def make(self, task_ref: str, provider: str) -> str:
        return str(self._serializer.dumps([task_ref, provider]))

    def verify(self, token: str) -> Binding | None:
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
