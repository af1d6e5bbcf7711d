"""Build deliveries the way providers send them: signed events and gateway callbacks."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime

import orjson
from standardwebhooks import Webhook

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
OLD_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"o" * 32).decode()


def openai_event(
    video_id: str, kind: str = "video.completed", event_id: str | None = None
) -> bytes:
    return orjson.dumps(
        {
            "id": event_id or f"evt_{secrets.token_hex(8)}",
            "object": "event",
            "created_at": 1758941485,
            "type": kind,
            "data": {"id": video_id},
        }
    )


def signed_headers(
    body: bytes, at: datetime, *, webhook_id: str | None = None, secret: str = WEBHOOK_SECRET
) -> dict[str, str]:
    msg_id = webhook_id or f"msg_{secrets.token_hex(8)}"
    signature = Webhook(secret).sign(msg_id=msg_id, timestamp=at, data=body.decode())
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }


def apidot_body(task_id: str, status: str, progress: int = 0) -> bytes:
    data: dict[str, object] = {
        "task_id": task_id,
        "status": status,
        "progress": progress,
        "created_time": "2026-11-22T10:00:00Z",
    }
    if status == "finished":
        data["files"] = [{"file_url": f"https://cdn.example/{task_id}.mp4", "file_type": "video"}]
    if status == "failed":
        data["error_message"] = "content policy"
    return orjson.dumps({"code": 200, "data": data})


def evolink_body(task_id: str, status: str, progress: int = 0) -> bytes:
    body: dict[str, object] = {
        "id": task_id,
        "object": "video.generation.task",
        "status": status,
        "progress": progress,
        "created": 1757169743,
    }
    if status == "completed":
        body["results"] = [f"https://cdn.example/{task_id}.mp4"]
    return orjson.dumps(body)
