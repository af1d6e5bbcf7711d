"""Callback bodies as each provider documents them, for any task id and state: what
`taskledger send-test` sends and the README's "Callback bodies" shows (PROVIDERS.md and
the sources in `tests/conformance/`). Pure: no clock, no I/O; `at` dates the body.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.definition import Definition
from schemas.errors import WireFormatError
from schemas.fieldpath import Field, FieldPath, Step
from schemas.states import State
from schemas.wire.formats import Kind, WireFormat
from schemas.wire.registry import normalize_callback

# When the README's bodies happen; `send-test` passes the time it sends.
EXAMPLE_AT = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
PROMPT = "a red fox trotting through fresh snow at dawn"
# A task id as each kind's provider writes one (from their docs), for the README.
EXAMPLE_TASK_IDS: dict[str, str] = {
    "openai": "video_68d7512d07848190b3e45da0ecbebcde004da08e1e0678d5",
    "apidot": "task-unified-1757169743-7cvnl5zw",
    "evolink": "task-unified-1757169743-7cvnl5zw",
    "aivideoapi": "5f0d2c7e-9b1a-4c3e-8f6d-2a7b9c1e4d30",
    "replicate": "gm3qorzdhgbfurvjtvhg6dckhu",
    "fal": "764cabcf-b745-4b3e-ae38-1200304cf45b",
    "kie": "task_12345678",
}
REPLICATE_VERSION = "5aa835260ff7f40f4069c41185f72036a3a3e5b58f9e1d1fd1b2a3c4d5e6f708"

Body = dict[str, Any]
Builder = Callable[[str, State, datetime], Body]


class NoExample(WireFormatError):
    """The kind sends no callback for this state, or its definition cannot make one."""


def callback_states(kind: Kind) -> tuple[State, ...]:
    """The states a kind's provider calls back with, in our order (none: it never calls
    back, a definition that gives the provider no callback URL)."""
    found = _BUILTIN.get(_name(kind))
    if found is not None:
        return found[0]
    assert isinstance(kind, Definition)  # every coded format is built in
    if kind.submit.callback == "none" and not kind.signs_callbacks:
        return ()
    said = set(kind.states.values())
    return tuple(state for state in State if state in said)


def callback_body(kind: Kind, task_id: str, state: State, at: datetime = EXAMPLE_AT) -> Body:
    """The body `kind`'s provider sends when task `task_id` reaches `state`, at `at`.

    A built-in kind's is written from its provider's docs; another definition's is one of
    its `[[examples]]` for that state (the task id put in), else built from its field
    paths. Either way it reads back, through our own normalizer, as that task and state.
    """
    states = callback_states(kind)
    if not states:
        raise NoExample(f"{_name(kind)} sends no callbacks: its tasks are polled")
    if state not in states:
        shown = ", ".join(s.value for s in states)
        raise NoExample(f"{_name(kind)} sends no {state.value} callback (only: {shown})")
    found = _BUILTIN.get(_name(kind))
    if found is not None:
        body = found[1](task_id, state, at)
    else:
        assert isinstance(kind, Definition)
        body = _defined(kind, task_id, state, at)
    _check(kind, body, task_id, state)
    return body


def _name(kind: Kind) -> str:
    return kind.value if isinstance(kind, WireFormat) else kind.name


def _check(kind: Kind, body: Body, task_id: str, state: State) -> None:
    try:
        observation = normalize_callback(kind, body)
    except WireFormatError as exc:
        raise NoExample(f"{_name(kind)}'s {state.value} example does not read: {exc}") from exc
    if (observation.provider_task_id, observation.state) != (task_id, state):
        raise NoExample(
            f"{_name(kind)}'s {state.value} example reads as {observation.state.value}"
            f" of {observation.provider_task_id!r}"
        )


# -- the built-in kinds, from their docs --------------------------------------------------


def _openai(task_id: str, state: State, at: datetime) -> Body:
    """A Standard Webhooks event: only the video's id; the video is fetched for the rest."""
    kind = "video.completed" if state is State.SUCCEEDED else "video.failed"
    return {
        "id": "evt_" + _digest(task_id, state, at, 32),
        "object": "event",
        "created_at": _unix(at),
        "type": kind,
        "data": {"id": task_id},
    }


def _apidot(task_id: str, state: State, at: datetime) -> Body:
    """The status answer itself, in its `{"code": 200, "data": {...}}` envelope."""
    done = state is State.SUCCEEDED
    files = [{"file_url": f"https://cdn.apidot.ai/outputs/{task_id}.mp4", "file_type": "video"}]
    data = {
        "task_id": task_id,
        "status": "finished" if done else "failed",
        "progress": 100 if done else 0,
        "files": files if done else [],
        "error_message": None if done else "Content policy violation",
        "created_time": _iso(at - timedelta(minutes=2), fraction=False),
    }
    return {"code": 200, "data": data}


def _evolink(task_id: str, state: State, at: datetime) -> Body:
    """The task object; a cancel is `failed` with the error code `request_cancelled`."""
    body: Body = {
        "created": _unix(at) - 120,
        "id": task_id,
        "model": "sora-2",
        "object": "video.generation.task",
        "progress": 100 if state is State.SUCCEEDED else 0,
        "status": "completed" if state is State.SUCCEEDED else "failed",
        "type": "video",
    }
    if state is State.SUCCEEDED:
        body["results"] = [f"https://files.evolink.ai/videos/{task_id}.mp4"]
        body["usage"] = {"billing_rule": "per_call", "credits_reserved": 7, "user_group": "default"}
    elif state is State.CANCELLED:
        body["error"] = {"code": "request_cancelled", "message": "The task was cancelled"}
    else:
        body["error"] = {
            "code": "content_policy_violation",
            "message": "The prompt was rejected by moderation",
        }
    return body


def _aivideoapi(task_id: str, state: State, at: datetime) -> Body:
    """EvoLink's paths, its result URLs as `output.urls` (third-party client code only)."""
    done = state is State.SUCCEEDED
    return {
        "id": task_id,
        "status": "completed" if done else "failed",
        "output": {"urls": [f"https://cdn.aivideoapi.ai/results/{task_id}.mp4"]} if done else None,
        "error": None if done else {"code": "generation_failed", "message": "Upstream model error"},
        "created_at": _unix(at) - 120,
    }


_REPLICATE_STATUS = {
    State.QUEUED: "starting",
    State.RUNNING: "processing",
    State.SUCCEEDED: "succeeded",
    State.FAILED: "failed",
    State.CANCELLED: "canceled",
}


def _replicate(task_id: str, state: State, at: datetime) -> Body:
    """The whole prediction, as `GET /v1/predictions/{id}` answers it."""
    api = f"https://api.replicate.com/v1/predictions/{task_id}"
    ended = state in (State.SUCCEEDED, State.FAILED, State.CANCELLED)
    return {
        "id": task_id,
        "model": "minimax/video-01",
        "version": REPLICATE_VERSION,
        "input": {"prompt": PROMPT},
        "logs": "" if state is State.QUEUED else "Generating video...",
        "output": f"https://replicate.delivery/xezq/{task_id}/output.mp4"
        if state is State.SUCCEEDED
        else None,
        "data_removed": False,
        "error": "CUDA out of memory" if state is State.FAILED else None,
        "source": "api",
        "status": _REPLICATE_STATUS[state],
        "created_at": _iso(at - timedelta(seconds=95)),
        "started_at": None if state is State.QUEUED else _iso(at - timedelta(seconds=90)),
        "completed_at": _iso(at) if ended else None,
        "urls": {
            "cancel": f"{api}/cancel",
            "get": api,
            "web": f"https://replicate.com/p/{task_id}",
        },
        "metrics": {"predict_time": 89.6} if ended else {},
    }


def _fal(task_id: str, state: State, at: datetime) -> Body:
    """fal's webhook: `OK` with the model's answer as `payload`, or `ERROR` with its detail."""
    body: Body = {"request_id": task_id, "gateway_request_id": task_id}
    if state is State.SUCCEEDED:
        video = {
            "url": f"https://v3.fal.media/files/rabbit/{task_id}_output.mp4",
            "content_type": "video/mp4",
            "file_name": "output.mp4",
            "file_size": 4_194_304,
        }
        return body | {"status": "OK", "payload": {"video": video}}
    detail = [{"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}]
    return body | {
        "status": "ERROR",
        "error": "Invalid status code: 422",
        "payload": {"detail": detail},
    }


def _kie(task_id: str, state: State, at: datetime) -> Body:
    """The record of the task (`recordInfo`'s `data`) in kie's envelope; times in ms."""
    done = state is State.SUCCEEDED
    finished = _unix(at) * 1000
    result = {"resultUrls": [f"https://tempfile.aiquickdraw.com/v/{task_id}.mp4"]}
    data = {
        "taskId": task_id,
        "model": "kling/v2-1-pro",
        "state": "success" if done else "fail",
        "param": _compact({"model": "kling/v2-1-pro", "input": {"prompt": PROMPT}}),
        "resultJson": _compact(result) if done else "",
        "failCode": "" if done else "500",
        "failMsg": "" if done else "Internal server error",
        "costTime": 15000 if done else None,
        "completeTime": finished,
        "createTime": finished - 15000,
        "updateTime": finished,
    }
    return {"code": 200, "msg": "success", "data": data}


_FINAL = (State.SUCCEEDED, State.FAILED)
_BUILTIN: dict[str, tuple[tuple[State, ...], Builder]] = {
    "openai": (_FINAL, _openai),
    "apidot": (_FINAL, _apidot),
    "evolink": ((*_FINAL, State.CANCELLED), _evolink),
    "aivideoapi": (_FINAL, _aivideoapi),
    "replicate": (tuple(_REPLICATE_STATUS), _replicate),
    "fal": (_FINAL, _fal),
    "kie": (_FINAL, _kie),
}


# -- any other definition ------------------------------------------------------------------


def _defined(definition: Definition, task_id: str, state: State, at: datetime) -> Body:
    """One of its examples for `state` with the task id put in, else built from its paths."""
    for example in definition.examples:
        if example.get("as") != "submit" and example.get("state") == state.value:
            body = copy.deepcopy(dict(example["body"]))
            task = _task_object(definition, body)
            _merge(task, _at(_field(definition, "task_id").path_of(task), task_id))
            return body
    return _built(definition, task_id, state)


def _built(definition: Definition, task_id: str, state: State) -> Body:
    word = next((w for w, s in definition.states.items() if s is state), state.value)
    task: Body = {}
    _merge(task, _at(_field(definition, "task_id").paths[0], task_id))
    _merge(task, _at(_field(definition, "status").paths[0], word))
    urls, message = _field(definition, "result_urls"), _field(definition, "error_message")
    if state is State.SUCCEEDED and urls.paths:
        _merge(task, _at(urls.paths[0], f"https://media.example/{task_id}.mp4"))
    if state is State.FAILED and message.paths:
        _merge(task, _at(message.paths[0], "the generation failed"))
    body = task
    if definition.task is not None and not definition.task.unless_named:
        body = _at(definition.task.path, task)
    envelope = definition.envelope
    if envelope is not None and envelope.code is not None:
        _merge(body, _at(envelope.code.paths[0], envelope.ok[0]))
    return body


def _task_object(definition: Definition, body: Body) -> Body:
    """Where the task is in an example body (`[task]`), as the reader finds it."""
    at = definition.task
    if at is None or (at.unless_named and _field(definition, "task_id").present(body)):
        return body
    inner = at.path.read(body)
    return inner if isinstance(inner, dict) else body


def _field(definition: Definition, name: str) -> Field:
    return definition.fields.get(name) or Field(())


def _at(path: FieldPath, value: object) -> Body:
    """A body holding `value` at `path` (its `[]` a one-item list, `|json` a JSON string)."""
    nested = _nested(path.steps, value)
    return nested if isinstance(nested, dict) else {}


def _nested(steps: tuple[Step, ...], value: object) -> object:
    if not steps:
        return value
    step, inner = steps[0], _nested(steps[1:], value)
    if step.key is not None:
        return {step.key: inner}
    if step.each:
        return [inner]
    if step.index is not None:
        return [None] * step.index + [inner]
    return _compact(inner)


def _merge(target: Body, extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


# -- the README's "Callback bodies" -------------------------------------------------------

# (who sends it, the kind, how it comes): each kind's bodies, in the README's order.
DOCUMENTED: tuple[tuple[str, str, str], ...] = (
    ("OpenAI", "openai", "signed (Standard Webhooks) to `/webhooks/openai`; a thin event"),
    ("APIDot, Vidgo", "apidot", "to the task's `callback_url`, unsigned"),
    ("EvoLink", "evolink", "to the task's `callback_url`, unsigned"),
    ("AI Video API", "aivideoapi", "to the task's `callback_url`, unsigned (undocumented)"),
    ("Replicate", "replicate", "signed (Standard Webhooks) to `/webhooks/replicate`"),
    ("fal.ai", "fal", "to the task's `callback_url`, signed with fal's Ed25519 key"),
    ("kie.ai", "kie", "to the task's `callback_url`, its id and time HMAC-signed if on"),
)


def markdown(kinds: Mapping[str, Kind]) -> str:
    """The README's bodies: each kind's success in full, its failure on one line."""
    parts: list[str] = []
    for title, name, route in DOCUMENTED:
        kind, task_id = kinds[name], EXAMPLE_TASK_IDS[name]
        done = json.dumps(callback_body(kind, task_id, State.SUCCEEDED), indent=2)
        failed = json.dumps(callback_body(kind, task_id, State.FAILED), ensure_ascii=False)
        parts += [
            f"**{title}** (`{name}`), {route}. `succeeded`:",
            f"```json\n{done}\n```",
            "`failed`:",
            f"```json\n{failed}\n```",
        ]
    return "\n\n".join(parts) + "\n"


# -- values ----------------------------------------------------------------------------------


def _unix(at: datetime) -> int:
    return int(at.timestamp())


def _iso(at: datetime, *, fraction: bool = True) -> str:
    shown = at.astimezone(UTC).isoformat(timespec="microseconds" if fraction else "seconds")
    return shown.replace("+00:00", "Z")


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _digest(task_id: str, state: State, at: datetime, size: int) -> str:
    seed = f"{task_id}|{state.value}|{at.isoformat()}".encode()
    return hashlib.sha256(seed).hexdigest()[:size]
