"""Described gateways: a provider served from a description in the simulator's own words.

A description names the gateway's paths, where its bodies keep each field (dotted paths,
`[]` for a list), its status words, its envelope and how it authenticates, e.g.
`{"name": "moviemint", "submit": {"path": "/api/v2/renders", "id_at": "result.render_id",
"callback_in": "notify_url", "nested_input": true}, "status": {"path":
"/api/v2/renders/{id}", "required_headers": {}}, "words": {"queued": "waiting", "running":
"rendering", "succeeded": "delivered", "failed": "broken"}, "envelope": {"flag": "ok_code",
"ok_value": 0, "error_at": "error_text"}, "body": {"id": "result.render_id", "phase":
"result.phase", "percent": "result.percent", "urls": "result.outputs[].href", "error":
"result.failure.detail"}, "auth_header": "x-mint-key", "callbacks": true}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from simulator.config import FORMATS, SimulatorError

WORD_KEYS = ("queued", "running", "succeeded", "failed")
BODY_KEYS = ("id", "phase", "percent", "urls", "error")
TOP_KEYS = {
    "name", "submit", "status", "words", "envelope", "body", "auth_header", "callbacks",
}  # fmt: skip
RESERVED_NAMES = (*FORMATS, "_sim")


@dataclass(frozen=True)
class Envelope:
    """Every answer carries `flag` (`ok_value` when it went well); errors say why at `error_at`."""

    flag: str
    ok_value: Any
    error_at: str = "error"


@dataclass(frozen=True)
class Description:
    """One described gateway, checked."""

    name: str
    submit_path: str
    id_at: str
    status_path: str
    words: Mapping[str, str]
    body: Mapping[str, str]
    callback_in: str | None = None
    nested_input: bool = False
    submit_code: int = 200
    required_headers: Mapping[str, str] = field(default_factory=dict)
    envelope: Envelope | None = None
    auth_header: str | None = None

    @property
    def callbacks(self) -> bool:
        return self.callback_in is not None


def load_description(path: str | Path) -> dict[str, Any]:
    """The description in a JSON file (checked when the simulator starts)."""
    data = orjson.loads(Path(path).read_bytes())
    if not isinstance(data, dict):
        raise SimulatorError(f"{path}: a description is a JSON object")
    return data


def parse_description(data: Mapping[str, Any]) -> Description:
    """Check a description; raise `SimulatorError` naming the first thing wrong with it."""
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise SimulatorError(f"unknown description keys {sorted(unknown)}")
    name = _text(data, "name")
    if name in RESERVED_NAMES or "/" in name:
        raise SimulatorError(f"a described gateway cannot be called {name!r}", field_name="name")
    submit, status = _table(data, "submit"), _table(data, "status")
    words, body = _table(data, "words"), _table(data, "body")
    _require_keys("words", words, WORD_KEYS)
    _require_keys("body", body, ("id", "phase"))
    if not set(body) <= set(BODY_KEYS):
        raise SimulatorError(f"body keys must be among {list(BODY_KEYS)}", field_name="body")
    callbacks = bool(data.get("callbacks", False))
    return Description(
        name=name,
        submit_path=_path(submit, "path"),
        id_at=_text(submit, "id_at"),
        status_path=_path(status, "path").replace("{id}", "{task_id}"),
        words={key: str(words[key]) for key in WORD_KEYS},
        body={key: str(value) for key, value in body.items()},
        callback_in=_text(submit, "callback_in") if callbacks else None,
        nested_input=bool(submit.get("nested_input", False)),
        submit_code=int(submit.get("answer_code", 200)),
        required_headers=dict(status.get("required_headers", {})),
        envelope=_envelope(data.get("envelope")),
        auth_header=data.get("auth_header"),
    )


def _envelope(data: Any) -> Envelope | None:
    if data is None:
        return None
    if not isinstance(data, dict) or "flag" not in data or "ok_value" not in data:
        raise SimulatorError("envelope needs flag and ok_value", field_name="envelope")
    return Envelope(str(data["flag"]), data["ok_value"], str(data.get("error_at", "error")))


def _table(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = data.get(name)
    if not isinstance(value, dict):
        raise SimulatorError(f"{name} must be an object", field_name=name)
    return value


def _text(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise SimulatorError(f"{name} must be a non-empty string", field_name=name)
    return value


def _path(data: Mapping[str, Any], name: str) -> str:
    path = _text(data, name)
    if not path.startswith("/"):
        raise SimulatorError(f"{name} must start with /", field_name=name)
    return path


def _require_keys(name: str, data: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    missing = [key for key in keys if key not in data]
    if missing:
        raise SimulatorError(f"{name} lacks {missing}", field_name=name)
