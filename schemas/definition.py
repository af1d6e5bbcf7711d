"""A provider kind as data: one TOML file says how to submit, poll, read and verify it.

`load_definition` reads and checks a file, naming the file and key of any mistake;
`Definition` is what the rest of the code asks (see README "Adding a provider").
"""

from __future__ import annotations

import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from schemas.errors import ConfigError
from schemas.fieldpath import Field, FieldPath, PathError
from schemas.states import State

AUTH_SCHEMES = ("bearer", "key", "header", "none")
SUBMIT_BODIES = ("flat", "input", "bare")
CALLBACK_PLACES = ("body", "query", "none")
CALLBACK_SHAPES = ("status", "thin", "envelope")
# url-token: our token alone; standard-webhooks: the signed route; ed25519-jwks (fal) and
# hmac-fields (kie): the token route, and a signature checked on it (receiver/schemes.py).
VERIFY_SCHEMES = ("url-token", "standard-webhooks", "ed25519-jwks", "hmac-fields")
# Named by the design, not yet built: a definition asking for one is refused, plainly.
PLANNED_SCHEMES: tuple[str, ...] = ()
# The keys of `[callbacks]` that only one scheme reads.
SCHEME_KEYS = {"jwks_url": "ed25519-jwks"}
FIELD_NAMES = (
    "task_id",
    "status",
    "progress",
    "result_urls",
    "error_code",
    "error_message",
    "cost_credits",
    "created_at",
    "finished_at",
    "expires_at",
    "provider_time",  # when the body says its news (default: finished_at, else created_at)
)
_STATES = {state.value: state for state in State if state is not State.SUBMITTED}
# What a poll or result path may name: the task's id, its model (`owner/app/sub`), and the
# model's app (its first two segments: fal's status and result URLs leave subpaths out).
PATH_PLACEHOLDERS = ("task_id", "model", "app")
# A state rule's state meaning "finished; fetch the result to know how" (`fetch_to_know`).
FETCH = "fetch"
RESULT_FIELD_NAMES = tuple(name for name in FIELD_NAMES if name not in ("task_id", "status"))


@dataclass(frozen=True, slots=True)
class Auth:
    scheme: str = "bearer"
    header: str = "authorization"

    def headers(self, api_key: str) -> dict[str, str]:
        """The request headers that carry `api_key` (none without one)."""
        if not api_key or self.scheme == "none":
            return {}
        if self.scheme == "bearer":
            return {"authorization": f"Bearer {api_key}"}
        if self.scheme == "key":
            return {"authorization": f"Key {api_key}"}
        return {self.header: api_key}


@dataclass(frozen=True, slots=True)
class Submit:
    method: str = "POST"
    path: str = ""
    # flat: {"model", **request}; input: {"model", "input": request}; bare: the request
    # alone (the model named by the path, fal's `/{model}`)
    body: str = "flat"
    callback: str = "body"  # where the callback URL goes: a body field or a query parameter
    callback_name: str = "callback_url"
    task_id: Field | None = None
    model_field: str = "model"  # the body field naming the model (Replicate: `version`)
    extra: Mapping[str, Any] = field(default_factory=dict)  # constant fields of every body


@dataclass(frozen=True, slots=True)
class Poll:
    method: str = "GET"
    path: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Result:
    """Where a finished task's outcome is fetched when its status word does not say it
    (fal's COMPLETED): a 2xx answer is success, one in `failed_status` a failure, and
    `fields` read either (the answer need not name the task). `error_type` is where any
    other non-2xx answer names the request's own failure (fal's request errors: a timeout
    or a runner crash, with 5xx): such an answer is a failure too, its value the error code."""

    path: str
    fields: Mapping[str, Field] = field(default_factory=dict)
    failed_status: tuple[int, ...] = ()
    error_type: Field | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    """An answer wrapped as `{"code": 200, "data": {...}}`: where the code is, which codes
    mean success, and where the message is when it does not."""

    code: Field | None = None
    ok: tuple[int, ...] = (200,)
    message: Field | None = None


@dataclass(frozen=True, slots=True)
class StateRule:
    """A status word that means another state when an error code (or message) says so
    (EvoLink's `failed` with `request_cancelled` is a cancel), or when a field holds any
    value (fal's `OK` with a `payload_error`: finished, but its payload is to be fetched)."""

    status: str
    error_code: str | None
    state: State | None  # None: "fetch", finished but only the result says how
    present: Field | None = None  # the field whose having a value applies the rule
    error_message: str | None = None

    def applies(self, word: str, error: tuple[str | None, str | None], body: object) -> bool:
        """Whether it applies to a status word, given the body's error code and message."""
        if word != self.status:
            return False
        if self.present is not None:
            return self.present.read(body) is not None
        if self.error_message is not None:
            return error[1] == self.error_message
        return error[0] == self.error_code


@dataclass(frozen=True, slots=True)
class TaskAt:
    """Where the task object is in a body: at `path` (APIDot's `data`); with `unless_named`,
    the body itself when it names the task id (EvoLink's task, bare or wrapped)."""

    path: FieldPath
    unless_named: bool = False


@dataclass(frozen=True, slots=True)
class Strict:
    """A field present with the wrong type is a bad body, not an absent field: the task id
    must be a string, progress a number, result URLs strings or objects holding them, and
    each of `object_or_text` an object or a string."""

    object_or_text: tuple[FieldPath, ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class Definition:
    """Everything taskledger knows about one provider kind, read from its file (compared
    and hashed by identity: each file is read once, at start-up)."""

    name: str
    source: str
    description: str = ""
    auth: Auth = field(default_factory=Auth)
    submit: Submit = field(default_factory=Submit)
    poll: Poll = field(default_factory=Poll)
    envelope: Envelope | None = None
    task: TaskAt | None = None
    strict: Strict | None = None
    fields: Mapping[str, Field] = field(default_factory=dict)
    states: Mapping[str, State] = field(default_factory=dict)
    rules: tuple[StateRule, ...] = ()
    # Words that say "finished" but not how: the result must be fetched (fal's COMPLETED).
    fetch_to_know: frozenset[str] = frozenset()
    result: Result | None = None
    callback_shape: str = "status"
    verify: str = "url-token"
    jwks_url: str = ""  # ed25519-jwks: where the keys are published (a setting may override)
    result_ttl_seconds: float | None = None
    expected_seconds: float = 300.0
    max_age_seconds: float = 86_400.0
    rate_limit_per_second: float = 5.0
    sunset: date | None = None
    examples: tuple[Mapping[str, Any], ...] = ()

    def state_of(self, word: str) -> State | None:
        return self.states.get(word.strip().lower())

    def __str__(self) -> str:
        return self.name

    @property
    def signs_callbacks(self) -> bool:
        """Its callbacks come to the signed route (`/webhooks/{name}`), not the token one."""
        return self.verify == "standard-webhooks"


def load_definitions(directory: Path) -> dict[str, Definition]:
    """Every `*.toml` of a directory, by the name each declares (names must differ)."""
    if not directory.is_dir():
        raise ConfigError(f"{directory} is not a directory of provider definitions")
    found: dict[str, Definition] = {}
    for path in sorted(directory.glob("*.toml")):
        definition = load_definition(path)
        if definition.name in found:
            raise ConfigError(f"{path.name}: kind {definition.name!r} is defined twice")
        found[definition.name] = definition
    return found


def load_definition(path: Path) -> Definition:
    """Read and check one definition file; any mistake is a ConfigError naming the file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path.name}: cannot read it as TOML ({exc})") from None
    try:
        return _definition(data, path.name)
    except (KeyError, TypeError, ValueError, PathError) as exc:
        raise ConfigError(f"{path.name}: {exc}") from None


def _definition(data: Mapping[str, Any], source: str) -> Definition:
    _known(
        data,
        "",
        {
            "name",
            "description",
            "auth",
            "submit",
            "poll",
            "envelope",
            "task",
            "strict",
            "fields",
            "states",
            "state_rules",
            "fetch_to_know",
            "result",
            "callbacks",
            "defaults",
            "lifecycle",
            "examples",
            "docs",
        },
    )
    name = _text(data, "name")
    auth = _auth(_table(data, "auth"))
    submit = _submit(_table(data, "submit"))
    fields = _fields(data.get("fields", {}))
    if "task_id" not in fields or "status" not in fields:
        raise ValueError("[fields] must say where `task_id` and `status` are")
    callbacks = _table(data, "callbacks")
    defaults = _table(data, "defaults")
    lifecycle = _table(data, "lifecycle")
    return Definition(
        name=name,
        source=source,
        description=str(data.get("description", "")),
        auth=auth,
        submit=submit,
        poll=_poll(_table(data, "poll")),
        envelope=_envelope(data.get("envelope")),
        task=_task(data.get("task")),
        strict=_strict(data.get("strict")),
        fields=fields,
        states=_states(_table(data, "states")),
        rules=tuple(_rule(rule) for rule in data.get("state_rules", [])),
        fetch_to_know=frozenset(w.lower() for w in data.get("fetch_to_know", [])),
        result=_result(data.get("result")),
        callback_shape=_choice(callbacks, "shape", CALLBACK_SHAPES, "status"),
        verify=_verify(callbacks),
        jwks_url=_jwks_url(callbacks),
        result_ttl_seconds=_number(defaults, "result_ttl_seconds", None),
        expected_seconds=_number(defaults, "expected_seconds", 300.0) or 300.0,
        max_age_seconds=_number(defaults, "max_age_seconds", 86_400.0) or 86_400.0,
        rate_limit_per_second=_number(defaults, "rate_limit", 5.0) or 5.0,
        sunset=_date(lifecycle.get("sunset")),
        examples=tuple(data.get("examples", [])),
    )


def _known(table: Mapping[str, Any], where: str, allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ValueError(f"unknown key {where}{unknown[0]!r} (known: {', '.join(sorted(allowed))})")


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ValueError(f"[{key}] must be a table")
    return value


def _text(data: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"`{key}` must be a non-empty string")
    return value.strip()


def _choice(data: Mapping[str, Any], key: str, allowed: tuple[str, ...], default: str) -> str:
    value = data.get(key, default)
    if value not in allowed:
        raise ValueError(f"`{key}` must be one of {', '.join(allowed)} (got {value!r})")
    return str(value)


def _number(data: Mapping[str, Any], key: str, default: float | None) -> float | None:
    value = data.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"`{key}` must be a positive number (got {value!r})")
    return float(value)


def _date(value: Any) -> date | None:
    if value is None or isinstance(value, date):
        return value
    raise ValueError(f"`lifecycle.sunset` must be a TOML date like 2026-09-24 (got {value!r})")


def _verify(callbacks: Mapping[str, Any]) -> str:
    _known(callbacks, "callbacks.", {"shape", "verify", *SCHEME_KEYS})
    scheme = callbacks.get("verify", "url-token")
    if scheme in PLANNED_SCHEMES:
        raise ValueError(f"callback verification {scheme!r} is not available yet in taskledger")
    scheme = _choice(callbacks, "verify", VERIFY_SCHEMES, "url-token")
    for key, owner in SCHEME_KEYS.items():
        if key in callbacks and scheme != owner:
            raise ValueError(f"`callbacks.{key}` is read by verify = {owner!r} only")
    return scheme


def _jwks_url(callbacks: Mapping[str, Any]) -> str:
    if "jwks_url" not in callbacks:
        return ""
    url = _text(callbacks, "jwks_url")
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"`callbacks.jwks_url` must be an http(s) URL (got {url!r})")
    return url


def _auth(data: Mapping[str, Any]) -> Auth:
    _known(data, "auth.", {"scheme", "header"})
    scheme = _choice(data, "scheme", AUTH_SCHEMES, "bearer")
    header = str(data.get("header", "authorization")).lower()
    if scheme == "header" and header == "authorization":
        raise ValueError("auth scheme `header` needs `header`, the header's name")
    return Auth(scheme, header)


def _submit(data: Mapping[str, Any]) -> Submit:
    _known(data, "submit.", {"method", "path", "body", "callback", "task_id", "model", "extra"})
    callback = str(data.get("callback", "body:callback_url"))
    place, _, name = callback.partition(":")
    if place not in CALLBACK_PLACES or (place != "none" and not name):
        raise ValueError("`submit.callback` must be body:NAME, query:NAME or none")
    task_id = data.get("task_id")
    return Submit(
        method=str(data.get("method", "POST")).upper(),
        path=str(data.get("path", "")),
        body=_choice(data, "body", SUBMIT_BODIES, "flat"),
        callback=place,
        callback_name=name,
        task_id=Field.of(task_id) if task_id else None,
        model_field=_text(data, "model", "model"),
        extra=dict(_table(data, "extra")),
    )


def _poll(data: Mapping[str, Any]) -> Poll:
    _known(data, "poll.", {"method", "path", "headers"})
    path = _path(data, "poll")
    headers = data.get("headers", {})
    if not isinstance(headers, dict):
        raise ValueError("`poll.headers` must be a table of header names to values")
    return Poll(
        str(data.get("method", "GET")).upper(), path, {k: str(v) for k, v in headers.items()}
    )


def _path(data: Mapping[str, Any], where: str) -> str:
    path = _text(data, "path")
    named = {name for _, name, _, _ in string.Formatter().parse(path) if name is not None}
    if "task_id" not in named:
        raise ValueError(f"`{where}.path` must hold {{task_id}} (in the path or its query)")
    unknown = sorted(named - set(PATH_PLACEHOLDERS))
    if unknown:
        raise ValueError(
            f"`{where}.path` names {{{unknown[0]}}}; it may name {', '.join(PATH_PLACEHOLDERS)}"
        )
    return path


def _result(data: Any) -> Result | None:
    if data is None:
        return None
    _known(data, "result.", {"path", "fields", "failed_status", "error_type"})
    fields = data.get("fields", {})
    _known(fields, "result.fields.", set(RESULT_FIELD_NAMES))
    return Result(
        path=_path(data, "result"),
        fields={name: Field.of(spec) for name, spec in fields.items()},
        failed_status=tuple(int(code) for code in data.get("failed_status", [])),
        error_type=Field.of(data["error_type"]) if "error_type" in data else None,
    )


def _envelope(data: Any) -> Envelope | None:
    if data is None:
        return None
    _known(data, "envelope.", {"code", "ok", "message"})
    ok = data.get("ok", [200])
    return Envelope(
        code=Field.of(data["code"]) if "code" in data else None,
        ok=tuple(int(code) for code in ok),
        message=Field.of(data["message"]) if "message" in data else None,
    )


def _task(data: Any) -> TaskAt | None:
    if data is None:
        return None
    _known(data, "task.", {"path", "unless_named"})
    return TaskAt(FieldPath.parse(_text(data, "path")), bool(data.get("unless_named", False)))


def _strict(data: Any) -> Strict | None:
    if data is None:
        return None
    _known(data, "strict.", {"object_or_text"})
    return Strict(tuple(FieldPath.parse(str(p)) for p in data.get("object_or_text", [])))


def _fields(data: Mapping[str, Any]) -> dict[str, Field]:
    _known(data, "fields.", set(FIELD_NAMES))
    return {name: Field.of(spec) for name, spec in data.items()}


def _states(data: Mapping[str, Any]) -> dict[str, State]:
    states: dict[str, State] = {}
    for word, ours in data.items():
        if ours not in _STATES:
            raise ValueError(
                f"status word {word!r} maps to {ours!r}, not one of {', '.join(_STATES)}"
            )
        states[word.strip().lower()] = _STATES[ours]
    if not states:
        raise ValueError("[states] must map at least one status word to our state")
    return states


def _rule(data: Mapping[str, Any]) -> StateRule:
    _known(data, "state_rules.", {"status", "error_code", "error_message", "field", "state"})
    state = data["state"]
    if state not in _STATES and state != FETCH:
        raise ValueError(
            f"state rule's state {state!r} is not one of {', '.join(_STATES)}, {FETCH}"
        )
    if sum(key in data for key in ("error_code", "error_message", "field")) != 1:
        raise ValueError("a state rule needs one of `error_code`, `error_message` or `field`")
    code = str(data["error_code"]) if "error_code" in data else None
    message = str(data["error_message"]) if "error_message" in data else None
    found = Field.of(data["field"]) if "field" in data else None
    return StateRule(str(data["status"]).lower(), code, _STATES.get(state), found, message)
