"""Each wire format's `WireSpec`, and the operations that read or write a body by its format.

Parsers are pure: a result URL's expiry is the body's own (`expires_at`) or, given a
lifetime (`result_ttl_seconds`), the body's completion time (else `now`) plus it.
"""

from __future__ import annotations

import functools
from datetime import datetime
from pathlib import Path
from urllib.parse import quote, urlencode

from schemas.definition import Definition, load_definition
from schemas.errors import WireFormatError
from schemas.states import State
from schemas.wire import defined, openai
from schemas.wire.formats import Kind, WireFormat, WireSpec
from schemas.wire.observation import UNKNOWN_LIFETIME, Lifetime, Observation

BUILTIN = Path(__file__).parent / "builtin"
# The built-in kinds a definition can say, read once: `builtin/<name>.toml`.
DEFINITIONS: dict[WireFormat, Definition] = {
    fmt: load_definition(BUILTIN / f"{fmt.value}.toml")
    for fmt in (WireFormat.APIDOT, WireFormat.EVOLINK, WireFormat.AIVIDEOAPI)
}
# Adding a built-in format: a `WireFormat` member and its `builtin/<name>.toml` (or, for
# what a definition cannot say, a module with its `SPEC`, and a line here: OpenAI's
# signed thin events, their separate envelope and content variants, see `openai.py`).
SPECS: dict[WireFormat, WireSpec] = {
    WireFormat.OPENAI: openai.SPEC,
    **{fmt: defined.spec_of(definition) for fmt, definition in DEFINITIONS.items()},
}


def normalize_result(
    fmt: Definition,
    task_id: str,
    http_status: int,
    body: object,
    *,
    result_ttl_seconds: float | None = None,
    now: datetime | None = None,
) -> Observation:
    """What the result fetch of a finished task says: succeeded with its URLs, or failed."""
    lifetime = Lifetime(result_ttl_seconds, now)
    return defined.read_result(fmt, task_id, http_status, body, lifetime)


def spec(fmt: Kind) -> WireSpec:
    """A kind's spec: registered above in code, or built from its definition file."""
    if isinstance(fmt, Definition):
        return _defined(fmt)
    return SPECS[fmt]


@functools.cache
def _defined(definition: Definition) -> WireSpec:
    return defined.spec_of(definition)


SUBMIT_PATHS: dict[WireFormat, str] = {fmt: s.submit_path for fmt, s in SPECS.items()}
STATUS_PATHS: dict[WireFormat, str] = {fmt: s.status_path for fmt, s in SPECS.items()}


def normalize_callback(
    fmt: Kind,
    body: object,
    *,
    result_ttl_seconds: float | None = None,
    now: datetime | None = None,
) -> Observation:
    """What a callback body, as the provider sends it, says about its task.

    `result_ttl_seconds` and `now` (when it was received) date its result URLs' expiry;
    see `normalize_status`.
    """
    found = spec(fmt)
    lifetime = Lifetime(result_ttl_seconds, now)
    if found.read_callback is not None:
        return found.read_callback(body, lifetime)
    return found.read_status(body, None, lifetime)


def normalize_status(
    fmt: Kind,
    body: object,
    *,
    result_ttl_seconds: float | None = None,
    now: datetime | None = None,
    task_id: str | None = None,
) -> Observation:
    """What the status endpoint's body says about its task (`task_id`: the one asked
    about, for a definition's answer that does not name it).

    When it lists results, `extra["expires_at"]` is the body's own expiry or, given the
    provider's URL lifetime `result_ttl_seconds`, the body's finished time (else `now`,
    when the body was read) plus it; without either, no expiry is recorded.
    """
    lifetime = Lifetime(result_ttl_seconds, now)
    if task_id is not None and isinstance(fmt, Definition):
        return defined.read_answer(fmt, body, None, lifetime, asked=task_id)
    return spec(fmt).read_status(body, None, lifetime)


def parse_submit_response(fmt: Kind, body: object) -> Observation:
    """The submit endpoint's answer: the provider's task id and first state (queued if unsaid)."""
    found = spec(fmt)
    if found.read_submit is not None:
        return found.read_submit(body)
    return found.read_status(body, State.QUEUED, UNKNOWN_LIFETIME)


def task_id_of(fmt: Kind, body: object) -> str:
    """The provider's task id named by a callback, status or submit body."""
    return spec(fmt).read_task_id(body)


def task_id_hint(fmt: Kind, body: object) -> str | None:
    """The task id a body names, if it can be read at all: for keeping an unreadable body
    beside its task. None when no id can be found."""
    try:
        return spec(fmt).read_task_id(body)
    except WireFormatError:
        return None


def build_submit_body(
    fmt: Kind, model: str, request: dict[str, object], callback_url: str | None
) -> dict[str, object]:
    """The JSON to POST to the submit endpoint; `model` and `callback_url` override `request`.

    APIDot nests the request under `input`; EvoLink and AI Video API take it flat (an AI
    Video API request that wants `input` nesting says so itself: `{"input": {...}}`).
    """
    return spec(fmt).build_submit(model, request, callback_url)


def submit_path(fmt: Kind, callback_url: str | None = None, model: str = "") -> str:
    """The submit endpoint's path (a definition's may name the `{model}`); a kind that takes
    the callback URL as a query parameter (fal's `fal_webhook`) gets it there."""
    path = spec(fmt).submit_path
    if isinstance(fmt, Definition) and "{" in path:
        path = _with_model(fmt, path, model)
    if isinstance(fmt, Definition) and fmt.submit.callback == "query" and callback_url:
        separator = "&" if "?" in path else "?"
        return f"{path}{separator}{urlencode({fmt.submit.callback_name: callback_url})}"
    return path


def request_headers(fmt: Kind, api_key: str, *, poll: bool = False) -> dict[str, str]:
    """The headers that carry the API key (Bearer, unless a definition says otherwise), and
    for a poll the headers its definition requires (a version header, say)."""
    if not isinstance(fmt, Definition):
        return {"authorization": f"Bearer {api_key}"} if api_key else {}
    extra = dict(fmt.poll.headers) if poll else {}
    return {**fmt.auth.headers(api_key), **extra}


def status_path(fmt: Kind, task_id: str, model: str = "") -> str:
    """The status endpoint's path for one task, the id quoted as a single path segment; a
    definition's path may also name the task's `{model}` or its `{app}` (see `path_of`)."""
    return path_of(fmt, spec(fmt).status_path, task_id, model)


def result_path(fmt: Definition, task_id: str, model: str = "") -> str:
    """Where a finished task's outcome is fetched (its definition's `[result]` path)."""
    if fmt.result is None:
        raise WireFormatError(f"{fmt} has no result to fetch", reason="no_result")
    return path_of(fmt, fmt.result.path, task_id, model)


def path_of(fmt: Kind, template: str, task_id: str, model: str) -> str:
    """`template` for one task: `{task_id}` quoted as one segment, `{model}` as the model's
    segments, `{app}` as its first two (`owner/app`, fal's queue URLs)."""
    if task_id.strip() in ("", ".", ".."):
        raise WireFormatError(f"{fmt} task id {task_id[:50]!r} cannot name a status path")
    return _with_model(fmt, template, model).replace("{task_id}", quote(task_id, safe=""))


def _with_model(fmt: Kind, template: str, model: str) -> str:
    """`template` with `{model}` and `{app}` filled in (other placeholders kept)."""
    if "{model}" not in template and "{app}" not in template:
        return template
    segments = [s for s in model.strip().split("/") if s]
    if not segments or any(s in (".", "..") for s in segments):
        raise WireFormatError(f"{fmt} needs the task's model to name its path (got {model!r})")
    quoted = [quote(s, safe="") for s in segments]
    return template.replace("{model}", "/".join(quoted)).replace("{app}", "/".join(quoted[:2]))
