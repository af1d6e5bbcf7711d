"""A wire format read from a provider definition file (`schemas.definition`): no code.

`spec_of(definition)` gives the same `WireSpec` a coded format registers, its readers
driven by the definition's field paths, status words and envelope.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from typing import Any

from schemas.definition import Definition, Result
from schemas.errors import IgnoredEvent, WireFormatError
from schemas.fieldpath import Field, FieldPath
from schemas.json_text import NUL_READ_AS
from schemas.states import State
from schemas.wire.fields import (
    CODE_MAX_CHARS,
    ID_MAX_CHARS,
    MESSAGE_MAX_CHARS,
    URL_MAX_CHARS,
    amount,
    iso,
    kind,
    message_text,
    moment,
    number,
    short_text,
    text_problem,
    url_expiry,
    without,
)
from schemas.wire.formats import WireSpec
from schemas.wire.observation import UNKNOWN_LIFETIME, Lifetime, Observation

# How far into a result field's lists and objects its URLs are looked for: enough for
# `{"images": [{"file": {"url": ...}}]}` under the field's path.
URL_NESTING = 4
# A task in these states has no results: URLs its body holds are something else (the
# documentation link of an error, an input echoed back).
_NO_RESULTS = frozenset({State.FAILED, State.CANCELLED})
_WEB_SCHEMES = ("https://", "http://")
_NO_FIELD = Field(())  # a field the definition does not name: reads as absent
# The reason of a body refused by its envelope's code (the provider's own error answer).
_REFUSED_IN_BODY = "provider_error"
# Each field or path read on the hot path, by its id, with the reader made for it (and the
# object itself, which keeps its id from being reused while it is here).
_READERS: dict[int, tuple[object, Callable[[object], Any]]] = {}


def spec_of(definition: Definition) -> WireSpec:
    return WireSpec(
        submit_path=definition.submit.path,
        status_path=definition.poll.path,
        read_status=partial(read_answer, definition),
        read_task_id=partial(read_task_id, definition),
        build_submit=partial(build_submit, definition),
        read_callback=partial(read_callback, definition),
        # Without `submit.task_id` the submit answer reads as a status body, its envelope's
        # code always checked: a code other than success there refuses our request.
        read_submit=partial(
            read_submit if definition.submit.task_id else _read_submit_status, definition
        ),
    )


def read_status(
    definition: Definition,
    body: object,
    missing: State | None,
    lifetime: Lifetime,
    *,
    envelope: bool = True,
    asked: str | None = None,
) -> Observation:
    """A status (or submit, or callback) body, read by the definition's field paths
    (`envelope`: a code other than the envelope's success refuses the body; `asked`: the
    task polled, whose answer need not name it)."""
    task, at = _task_of(definition, body, envelope=envelope)
    read = _readers(definition.fields)
    task_id = _task_id(definition, read, task, at, asked)
    _check_shapes(definition, task, at)
    urls = _urls(definition, read, task, at)
    error_code = short_text(read.error_code(task), CODE_MAX_CHARS)
    error_message = message_text(read.error_message(task), MESSAGE_MAX_CHARS)
    state, fetch = _state(definition, read, task, missing, at, (error_code, error_message))
    if state in _NO_RESULTS:
        urls = ()
    finished = read.finished_at(task)
    extra = _expiry(read, task, urls, finished, lifetime) | _cost(read, task)
    return Observation(
        provider_task_id=task_id,
        state=state,
        progress=_progress(definition, read, task, at),
        result_urls=urls,
        error_code=error_code,
        error_message=error_message,
        provider_time=_provider_time(read, task, finished),
        needs_fetch=fetch or definition.callback_shape == "thin",
        extra=extra,
    )


def read_answer(
    definition: Definition,
    body: object,
    missing: State | None,
    lifetime: Lifetime,
    *,
    asked: str | None = None,
) -> Observation:
    """A status answer or a callback. Its envelope's code may report on the task, not on
    our request: a failed task comes with an error code in both (kie: 501 and `state:
    "fail"`, its task-detail page and its callbacks alike), so a code other than success
    refuses only a body whose task names no status (a rate limit, an unknown task)."""
    try:
        return read_status(definition, body, missing, lifetime, asked=asked)
    except WireFormatError as exc:
        if exc.reason != _REFUSED_IN_BODY or not _names_status(definition, body):
            raise
        return read_status(definition, body, missing, lifetime, envelope=False, asked=asked)


def _read_submit_status(definition: Definition, body: object) -> Observation:
    return read_status(definition, body, State.QUEUED, UNKNOWN_LIFETIME)


def read_callback(definition: Definition, body: object, lifetime: Lifetime) -> Observation:
    """A callback body (`read_answer`); a thin one must name an outcome."""
    observation = read_answer(definition, body, None, lifetime)
    if definition.callback_shape == "thin" and not observation.needs_fetch:
        raise IgnoredEvent("a thin callback that names no outcome", reason="ignored")
    return observation


def read_task_id(definition: Definition, body: object) -> str:
    """The task id a body names, whatever its envelope's code says (a signature over the
    task id, or a body kept unread beside its task, needs the id of a failed task too)."""
    task, at = _task_of(definition, body, envelope=False)
    return _task_id(definition, _readers(definition.fields), task, at)


def _names_status(definition: Definition, body: object) -> bool:
    """Whether the task object of `body` (its envelope not checked) has a status word."""
    try:
        task, _ = _task_of(definition, body, envelope=False)
    except WireFormatError:
        return False
    return _readers(definition.fields).status(task) is not None


def _task_id(
    definition: Definition, read: _Readers, task: dict[str, Any], at: str, asked: str | None = None
) -> str:
    value = read.task_id(task)
    if value is None and asked is not None:
        return asked  # fal's status answer names no request id (its docs' example)
    if isinstance(value, int) and not isinstance(value, bool) and definition.strict is None:
        value = str(value)
    if isinstance(value, str):  # the common case first, without a call (`text_problem`)
        text = value.strip()
        if text and len(text) <= ID_MAX_CHARS and NUL_READ_AS not in text:
            return text
    problem = text_problem(value, ID_MAX_CHARS) or "is not text"
    raise _fail(definition, _where(definition, "task_id", task, at), problem)


def build_submit(
    definition: Definition, model: str, request: dict[str, object], callback_url: str | None
) -> dict[str, object]:
    """The submit body: the request flat beside the model (in `submit.model`'s field), or
    nested under `input`; the callback URL in its body field (a query parameter is the
    client's to add); then the definition's constant fields (`submit.extra`)."""
    submit = definition.submit
    body: dict[str, object] = {submit.model_field: model}
    name = submit.callback_name
    if submit.body == "bare":
        body = without(request, name)
    elif submit.body == "input":
        body["input"] = without(request, submit.model_field, name)
    else:
        body.update(without(request, submit.model_field, name))
    if callback_url is not None and submit.callback == "body":
        body[name] = callback_url
    return body | dict(submit.extra)


def read_submit(definition: Definition, body: object) -> Observation:
    """The submit answer: its task id (where the definition says) and first state."""
    checked = _checked(definition, body)
    path = definition.submit.task_id or _field(definition, "task_id")
    if _field(definition, "status").read(checked) is None:
        task_id = path.read(checked)
        if not isinstance(task_id, str | int) or isinstance(task_id, bool) or not str(task_id):
            raise _fail(definition, "submit.task_id", f"must be a string, not {kind(task_id)}")
        return Observation(provider_task_id=str(task_id), state=State.QUEUED)
    return read_status(definition, checked, State.QUEUED, UNKNOWN_LIFETIME)


def read_result(
    definition: Definition, task_id: str, http_status: int, body: object, lifetime: Lifetime
) -> Observation:
    """The answer of the result fetch (`[result]`) of a task whose status word said only
    that it finished: success when 2xx, failure when its HTTP status is a failing one."""
    result = definition.result
    if result is None:
        raise WireFormatError(f"{definition.name} has no [result] to read", reason="no_result")
    if not isinstance(body, dict):
        raise WireFormatError(
            f"{definition.name} result must be a JSON object, not {kind(body)}",
            reason="not_object",
        )
    found = replace(definition, fields=result.fields)
    read = _readers(result.fields)
    if 200 <= http_status < 300:
        urls = _urls(found, read, body, "")
        finished = read.finished_at(body)
        extra = _expiry(read, body, urls, finished, lifetime) | _cost(read, body)
        return Observation(task_id, State.SUCCEEDED, 100, urls, extra=extra, provider_time=finished)
    named = request_error(result, body)
    if http_status not in result.failed_status and named is None:
        raise WireFormatError(
            f"{definition.name} result answered HTTP {http_status}", reason="bad_result"
        )
    code = named or short_text(read.error_code(body), CODE_MAX_CHARS)
    return Observation(
        task_id,
        State.FAILED,
        error_code=code or str(http_status),
        error_message=message_text(read.error_message(body), MESSAGE_MAX_CHARS),
    )


def request_error(result: Result, body: object) -> str | None:
    """The request's own failure a result answer names (`[result] error_type`), if any."""
    if result.error_type is None or not isinstance(body, dict):
        return None
    return short_text(_read(result.error_type, body), CODE_MAX_CHARS)


# -- reading fields ---------------------------------------------------------------------


def _checked(definition: Definition, body: object, *, envelope: bool = True) -> dict[str, Any]:
    """`body` as an object, its envelope's code checked (unless `envelope` is false)."""
    if not isinstance(body, dict):
        raise WireFormatError(
            f"{definition.name} body must be a JSON object, not {kind(body)}", reason="not_object"
        )
    wrapper = definition.envelope if envelope else None
    if wrapper is not None and wrapper.code is not None:
        raw = _read(wrapper.code, body)
        code = number(raw)
        if raw is not None and code not in wrapper.ok:
            said = short_text(wrapper.message.read(body), 200) if wrapper.message else None
            shown = kind(raw) if code is None else f"{code:g}"
            raise WireFormatError(
                f"{definition.name} answered code {shown}: {said or 'no message'}",
                reason=_REFUSED_IN_BODY,
            )
    return body


def _task_of(
    definition: Definition, body: object, *, envelope: bool = True
) -> tuple[dict[str, Any], str]:
    """The task object of a checked body (`[task]`), and its path as a prefix for errors."""
    checked = _checked(definition, body, envelope=envelope)
    at = definition.task
    if at is None or (at.unless_named and _field(definition, "task_id").present(checked)):
        return checked, ""
    inner = _read(at.path, checked)
    if isinstance(inner, dict):
        return inner, f"{at.path.text}."
    if at.unless_named:
        return checked, ""
    raise _fail(definition, at.path.text, f"must be an object, not {kind(inner)}")


def _check_shapes(definition: Definition, task: dict[str, Any], at: str) -> None:
    """Strict kinds: each `strict.object_or_text` present is an object or a string."""
    for path in definition.strict.object_or_text if definition.strict else ():
        value = _read(path, task)
        if value is not None and not isinstance(value, dict | str):
            problem = f"must be an object or a string, not {kind(value)}"
            raise _fail(definition, at + path.text, problem)


class _Readers:
    """A `fields` mapping's readers, made once (`_reader_of`): one for each field the
    readers below take (a field the mapping does not name reads as None), one for each
    time (the first of its paths that reads as one), and the strict URL paths split at
    their `[]` with a reader for the part before it."""

    def __init__(self, fields: Mapping[str, Field]) -> None:
        def value(name: str) -> Callable[[object], Any]:
            found = fields.get(name)
            return _absent if found is None else _reader_of(found)

        def time(name: str) -> Callable[[object], Any]:
            found = fields.get(name)
            return _time_reader(tuple(_reader_of(path) for path in found.paths) if found else ())

        self.task_id = value("task_id")
        self.status = value("status")
        self.progress = value("progress")
        self.result_urls = value("result_urls")
        self.error_code = value("error_code")
        self.error_message = value("error_message")
        self.cost_credits = value("cost_credits")
        self.finished_at = time("finished_at")
        self.created_at = time("created_at")
        self.expires_at = time("expires_at")
        self.provider_time = time("provider_time") if "provider_time" in fields else None
        urls = fields.get("result_urls")
        self.strict_urls = tuple(
            (_reader_of(head), head, rest)
            for head, rest in (path.split_each() for path in (urls.paths if urls else ()))
        )


def _absent(body: object) -> None:
    return None


def _time_reader(paths: tuple[Callable[[object], Any], ...]) -> Callable[[object], Any]:
    """The first value of `paths` that reads as a time (informational: None if none)."""
    if not paths:
        return _absent

    def read(body: object) -> Any:
        for path in paths:
            value = path(body)
            if value is not None:
                found = moment(value)
                if found is not None:
                    return found
        return None

    return read


# The readers of each `fields` mapping read (a definition's, or its `[result]`'s), by its
# id (with the mapping, which keeps the id from being reused while it is here).
_FIELDS: dict[int, tuple[Mapping[str, Field], _Readers]] = {}


def _readers(fields: Mapping[str, Field]) -> _Readers:
    kept = _FIELDS.get(id(fields))
    if kept is None:
        kept = _FIELDS[id(fields)] = (fields, _Readers(fields))
    return kept[1]


def _field(definition: Definition, name: str) -> Field:
    return definition.fields.get(name, _NO_FIELD)


def _read(found: Field | FieldPath, body: object) -> Any:
    """`found.read(body)`, by a reader made for it once (`_reader_of`)."""
    kept = _READERS.get(id(found))
    if kept is None:
        kept = _READERS[id(found)] = (found, _reader_of(found))
    return kept[1](body)


def _reader_of(found: Field | FieldPath) -> Callable[[object], Any]:
    """What `found.read` does, as one plain loop over keys when its paths are only keys
    (nearly every field: `data.task_id`), else `found.read` itself."""
    paths = found.paths if isinstance(found, Field) else (found,)
    if any(step.key is None for path in paths for step in path.steps):
        return found.read
    keys = [tuple(str(step.key) for step in path.steps) for path in paths]
    if isinstance(found, FieldPath):
        return _keys_reader(keys[0])
    if found.union:
        return found.read
    return _first_reader(keys)


def _keys_reader(keys: tuple[str, ...]) -> Callable[[object], Any]:
    """`FieldPath.read` of a path of keys: None wherever a key or an object is missing."""

    def read(value: Any) -> Any:
        for key in keys:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value

    return read


def _first_reader(paths: list[tuple[str, ...]]) -> Callable[[object], Any]:
    """`Field.read` of paths of keys: the first value that is neither null nor [] (each
    path walked here, as `_keys_reader` walks one: a call per path would cost as much)."""

    def read(body: object) -> Any:
        for keys in paths:
            value: Any = body
            for key in keys:
                if not isinstance(value, dict):
                    value = None
                    break
                value = value.get(key)
            if value is not None and value != []:
                return value
        return None

    return read


def _where(definition: Definition, name: str, body: dict[str, Any], at: str) -> str:
    """A field's name in an error: the path its value was read from, after the task's."""
    return at + _field(definition, name).path_of(body).text


def _fail(definition: Definition, name: str, problem: str, reason: str = "bad_field") -> Exception:
    return WireFormatError(f"{definition.name} body: field '{name}' {problem}", reason=reason)


def _state(
    definition: Definition,
    read: _Readers,
    body: dict[str, Any],
    missing: State | None,
    at: str,
    error: tuple[str | None, str | None],
) -> tuple[State, bool]:
    """The state a body says (`error`: its error code and message, which state rules may
    read), and whether it says only "finished": its result tells how."""
    word = read.status(body)
    if word is None and missing is not None:
        return missing, False
    if not isinstance(word, str):
        problem = f"must be a string, not {kind(word)}"
        raise _fail(definition, _where(definition, "status", body, at), problem, "unknown_status")
    word = word.strip().lower()
    for rule in definition.rules:
        if rule.applies(word, error, body):
            return rule.state or State.RUNNING, rule.state is None
    state = definition.state_of(word)
    if state is None and word in definition.fetch_to_know:
        return State.RUNNING, True  # finished, but how only its result says: fetched next
    if state is None:
        problem = f"has unknown value {word[:50]!r}"
        raise _fail(definition, _where(definition, "status", body, at), problem, "unknown_status")
    return state, False


def _progress(definition: Definition, read: _Readers, body: dict[str, Any], at: str) -> int | None:
    """A percentage clamped to 0..100, rounded down (strict: present, it must be a number)."""
    raw = read.progress(body)
    value = number(raw)
    if value is None and raw is not None and definition.strict is not None:
        problem = f"must be a finite number, not {kind(raw)}"
        raise _fail(definition, _where(definition, "progress", body, at), problem)
    return None if value is None else min(100, max(0, math.floor(value)))


def _urls(definition: Definition, read: _Readers, body: dict[str, Any], at: str) -> tuple[str, ...]:
    if definition.strict is not None:
        urls: list[str] = []
        for head_reader, head, rest in read.strict_urls:
            value = head_reader(body)
            if value is not None:
                urls += _strict_urls(definition, value, head, rest, at)
        return tuple(dict.fromkeys(urls)) if len(urls) > 1 else tuple(urls)
    found: list[str] = []
    _web_urls(read.result_urls(body), found, URL_NESTING)
    return tuple(dict.fromkeys(found))


def _web_urls(value: object, found: list[str], depth: int) -> None:
    """The http(s) URLs in `value`, in order: a string, or inside lists and objects (a
    model's output may be `{"video": url, "thumbnail": url}` or `[[url]]`), `depth` levels
    down at most. Other text (a language model's output) is no result URL."""
    if isinstance(value, str):
        url = value.strip()
        if len(url) <= URL_MAX_CHARS and url[:8].lower().startswith(_WEB_SCHEMES):
            found.append(url)
    elif depth > 0 and isinstance(value, list | dict):
        for item in value.values() if isinstance(value, dict) else value:
            _web_urls(item, found, depth - 1)


def _strict_urls(
    definition: Definition, value: object, head: FieldPath, rest: FieldPath | None, at: str
) -> list[str]:
    """`list[].key`: `value`, read at `head`, an array of URLs or of objects holding one at
    `rest`."""
    if not isinstance(value, list):
        raise _fail(definition, at + head.text, f"must be an array, not {kind(value)}")
    return [
        _strict_url(definition, item, f"{at}{head.text}[{n}]", rest) for n, item in enumerate(value)
    ]


def _strict_url(definition: Definition, item: object, name: str, rest: FieldPath | None) -> str:
    """One result URL: `item`, or the string at `rest` in it. Only an http(s) URL is a
    result: any other (`javascript:...`, a bare word) refuses the body."""
    if isinstance(item, str) and 0 < len(item.strip()) <= URL_MAX_CHARS:
        url = item.strip()
    elif not isinstance(item, dict) or rest is None:
        inside = f" or an object with '{rest.text}'" if rest else ""
        raise _fail(definition, name, f"must be a URL{inside}, not {kind(item)}")
    else:
        value = _read(rest, item)
        name = f"{name}.{rest.text}"
        if not isinstance(value, str) or not value.strip():
            raise _fail(definition, name, f"must be a non-empty string, not {kind(value)}")
        url = value.strip()
        if len(url) > URL_MAX_CHARS:
            raise _fail(definition, name, f"is longer than {URL_MAX_CHARS} characters")
    if not url[:8].lower().startswith(_WEB_SCHEMES):
        raise _fail(definition, name, "must be an http(s) URL")
    return url


def _provider_time(read: _Readers, body: dict[str, Any], finished: Any) -> Any:
    if read.provider_time is not None:
        return read.provider_time(body)
    return finished or read.created_at(body)


def _expiry(
    read: _Readers,
    body: dict[str, Any],
    urls: tuple[str, ...],
    finished: Any,
    lifetime: Lifetime,
) -> dict[str, object]:
    said = read.expires_at(body)
    if said is not None and urls:
        return {"expires_at": iso(said)}
    return url_expiry(urls, finished, lifetime)


def _cost(read: _Readers, body: dict[str, Any]) -> dict[str, object]:
    value = amount(read.cost_credits(body))
    return {} if value is None else {"cost_credits": value}
