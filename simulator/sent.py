"""What the callback sender sent: each distinct message, whether it was authentic, and the
answer to every attempt, so a test can hold a receiver to what it acknowledged.

A message is known as the receiver knows it: by its `webhook-id` when signed, else by the
SHA-256 of its body. Copies and retries of one message are attempts of that message.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

TRANSPORT_ERROR = "error"  # an attempt that got no HTTP answer at all


@dataclass
class SentMessage:
    """One distinct callback message and the answers its attempts got (None: no answer)."""

    fmt: str
    key: str
    task_id: str
    names: str
    authentic: bool
    tricks: tuple[str, ...] = ()
    answers: list[int | None] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        """Some attempt got a 2xx answer: the receiver said it has the message."""
        return any(code is not None and 200 <= code < 300 for code in self.answers)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.fmt,
            "key": self.key,
            "task_id": self.task_id,
            "names": self.names,
            "authentic": self.authentic,
            "tricks": list(self.tricks),
            "answers": list(self.answers),
        }


class SentLog:
    """Every message sent so far, by (format, key, authentic)."""

    def __init__(self) -> None:
        self._messages: dict[tuple[str, str, bool], SentMessage] = {}
        self._answers: dict[str, Counter[str]] = {"authentic": Counter(), "forged": Counter()}

    def message(
        self,
        fmt: str,
        key: str,
        *,
        task_id: str,
        names: str,
        authentic: bool,
        tricks: tuple[str, ...] = (),
    ) -> SentMessage:
        """The message sent under `key` (created the first time it is sent)."""
        found = self._messages.get((fmt, key, authentic))
        if found is None:
            found = SentMessage(fmt, key, task_id, names, authentic, tricks)
            self._messages[(fmt, key, authentic)] = found
        return found

    def answered(self, message: SentMessage, status_code: int | None) -> None:
        """Record one attempt's answer (None when it got none: a transport error)."""
        message.answers.append(status_code)
        kind = "authentic" if message.authentic else "forged"
        self._answers[kind][TRANSPORT_ERROR if status_code is None else str(status_code)] += 1

    def messages(self) -> list[SentMessage]:
        return list(self._messages.values())

    def answers(self) -> dict[str, dict[str, int]]:
        """Attempts by authenticity, then by answer: `{"authentic": {"200": n, ...}, ...}`."""
        return {kind: dict(counts) for kind, counts in self._answers.items()}
