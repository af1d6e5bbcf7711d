"""Submit request bodies of the three wire formats, checked and reduced to a `Submission`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from simulator.config import SimulatorError

OPENAI_SECONDS = ("4", "8", "12")
OPENAI_SIZES = ("720x1280", "1280x720", "1024x1792", "1792x1024")
APIDOT_DURATIONS = (4, 8, 12, 16, 20)
EVOLINK_DURATIONS = (4, 8, 12)


class SubmissionError(SimulatorError):
    """A submit body the provider would answer with 400."""


@dataclass(frozen=True)
class Submission:
    model: str
    request: dict[str, Any]
    callback_url: str | None
    prompt: str = ""


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


PARSERS: dict[str, Callable[[Any], Submission]] = {
    "openai": parse_openai,
    "apidot": parse_apidot,
    "evolink": parse_evolink,
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


def callback_url_of(fields: Mapping[str, Any]) -> str | None:
    """The optional per-task callback URL, which must be an absolute http(s) URL."""
    url = fields.get("callback_url")
    if url is None:
        return None
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise SubmissionError("callback_url must be an http(s) URL", field_name="callback_url")
    return str(url)
