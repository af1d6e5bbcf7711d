"""The outbox rows a write batch adds: its events, each with the `seq` of its transition
and the `webhook-id` it keeps on every attempt."""

from __future__ import annotations

import secrets
from typing import Any

from schemas.fold import Message


def message_id() -> str:
    """A `webhook-id`: random, so that ids never repeat across restored backups."""
    return "msg_" + secrets.token_hex(12)


def message_rows(messages: list[Message]) -> list[dict[str, Any]]:
    """The batch's events as `message` rows; their transitions must be written first."""
    rows = []
    for message in messages:
        seq = message.transition.seq if message.transition else None
        if seq is not None:
            message.payload["data"]["seq"] = seq
        rows.append(
            {
                "msg_id": message_id(),
                "task_ref": message.task_ref,
                "seq": seq,
                "event_type": message.event_type,
                "payload": message.payload,
                "unconfirmed": message.unconfirmed,
                "fanned_out": False,
                "created_at": message.at,
            }
        )
    return rows
