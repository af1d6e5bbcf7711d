"""Submit request bodies of every wire format, checked and reduced to a `Submission`.

The platforms take part of a submit from elsewhere than the body (the model from the path,
fal's webhook from the query), so their parsers take those as arguments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from simulator.config import SimulatorError

OPENAI_SECONDS = ("4", "8", "12")
OPENAI_SIZES = ("720x1280", "1280x720", "1024x1792", "1792x1024")
APIDOT_DURATIONS = (4, 8, 12, 16, 20)
EVOLINK_DURATIONS = (4, 8, 12)
REPLICATE_EVENTS = ("start", "output", "logs", "completed")


class SubmissionError(SimulatorError):
    """A submit body the provider would answer with 400."""


@dataclass(frozen=True)
class Submission:
    """A checked submit; `endpoint` is the provider base URL it reached (for self links),
    `server` the simulator's own base URL (for media URLs)."""

    model: str
    request: dict[str, Any]
    callback_url: str | None
    prompt: str = ""
    endpoint: str = ""
    server: str = ""


def parse_openai(body: Any) -> Submission:
    """`{"model","prompt","seconds":"4|8|12","size"}`; webhooks go to the configured URL."""
    fields = require_object(body)
    seconds = str(fields.get("seconds", "4"))
    size = fields.get("size", "720x1280")
    check_choice("seconds", seconds, OPENAI_SECONDS)
    check_choice("size", size, OPENAI_SIZES)
    prompt = require_text(fields, "prompt")
    request = {"seconds": seconds, "size": size}
    return Submission(require_text(fields, "model"), request, None, prompt)


def parse_apidot(body: Any) -> Submission:
    """`{"model","callback_url","input":{"prompt","duration","aspect_ratio",...}}`."""
    fields = require_object(body)
    inputs = require_object(fields.get("input"), name="input")
    prompt = require_text(inputs, "prompt")
    duration = inputs.get("duration", 4)
    check_choice("input.duration", duration, APIDOT_DURATIONS)
    request = {
        "duration": duration,
        "aspect_ratio": inputs.get("aspect_ratio", "16:9"),
        "resolution": inputs.get("resolution", "720p"),
    }
    return Submission(require_text(fields, "model"), request, callback_url_of(fields), prompt)


def parse_evolink(body: Any) -> Submission:
    """`{"model","prompt","aspect_ratio","duration","callback_url",...}`."""
    fields = require_object(body)
    prompt = require_text(fields, "prompt")
    duration = fields.get("duration", 4)
    check_choice("duration", duration, EVOLINK_DURATIONS)
    request = {"duration": duration, "aspect_ratio": fields.get("aspect_ratio", "1280x720")}
    return Submission(require_text(fields, "model"), request, callback_url_of(fields), prompt)


def parse_replicate(body: Any, model: str | None = None) -> Submission:
    """`{"version"?, "input":{"prompt",...}, "webhook"?, "webhook_events_filter"?}`.

    `model` is `owner/name` from a model's predictions path; without it `version` is required
    (`owner/name:id` or a bare version id).
    """
    fields = require_object(body)
    inputs = require_object(fields.get("input"), name="input")
    prompt = require_text(inputs, "prompt")
    if model is None:
        model, _, version = require_text(fields, "version").rpartition(":")
    else:
        version = replicate_version(model)
    events = fields.get("webhook_events_filter", list(REPLICATE_EVENTS))
    if not isinstance(events, list) or not set(events) <= set(REPLICATE_EVENTS) or not events:
        raise SubmissionError(
            f"webhook_events_filter must list some of {list(REPLICATE_EVENTS)}",
            field_name="webhook_events_filter",
        )
    request = {"version": version, "input": dict(inputs), "webhook_events_filter": events}
    return Submission(model, request, callback_url_of(fields, "webhook"), prompt)


def replicate_version(model: str) -> str:
    """The (made-up, stable) id of a model's latest version."""
    return hashlib.sha256(model.encode()).hexdigest()


def parse_fal(body: Any, model: str, webhook: str | None) -> Submission:
    """The model's input object (`{"prompt",...}`); the webhook URL comes from `fal_webhook`."""
    fields = require_object(body)
    prompt = require_text(fields, "prompt")
    return Submission(
        model, dict(fields), callback_url_of({"fal_webhook": webhook}, "fal_webhook"), prompt
    )


def parse_kie(body: Any) -> Submission:
    """`{"model","callBackUrl","input":{"prompt",...}}`; the whole body is kept (`param`)."""
    fields = require_object(body)
    inputs = require_object(fields.get("input"), name="input")
    prompt = require_text(inputs, "prompt")
    callback = callback_url_of(fields, "callBackUrl")
    return Submission(require_text(fields, "model"), dict(fields), callback, prompt)


PARSERS: dict[str, Callable[[Any], Submission]] = {
    "openai": parse_openai,
    "apidot": parse_apidot,
    "evolink": parse_evolink,
    "replicate": parse_replicate,
    "kie": parse_kie,
}


def require_object(value: Any, name: str = "body") -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise SubmissionError(f"{name} must be a JSON object", field_name=name)
    return value


def require_text(fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value:
        raise SubmissionError(f"{name} is required", field_name=name)
    return value


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if isinstance(value, bool) or value not in choices:
        raise SubmissionError(f"{name} must be one of {list(choices)}", field_name=name)


def callback_url_of(fields: Mapping[str, Any], name: str = "callback_url") -> str | None:
    """The optional per-task callback URL, which must be an absolute http(s) URL."""
    url = fields.get(name)
    if url is None:
        return None
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise SubmissionError(f"{name} must be an http(s) URL", field_name=name)
    return str(url)
