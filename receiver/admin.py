"""The admin API (bearer token): register tasks, attach provider ids, read a task's story."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from receiver.auth import bearer_is_valid
from receiver.bodies import read_json
from receiver.errors import Conflict, NotFound, Unauthenticated, Unprocessable
from receiver.ui import session_is_valid
from schemas.errors import TaskConflict, TaskNotFound
from schemas.settings import ProviderSettings, Settings
from schemas.store import Artifact, LedgerStore, NewTask, Task
from schemas.tables import LABEL_MAX_CHARS
from schemas.tokens import CallbackTokens

ADMIN_BODY_LIMIT_BYTES = 256 * 1024
MAX_TEXT = LABEL_MAX_CHARS  # owner, model and provider task id share the columns' limit
# A task's fields the API shows, in the table's column order (not its lease or authority).
SHOWN_FIELDS = tuple(
    f.name for f in fields(Task) if f.name not in ("authority", "lease_owner", "lease_until")
)


def require_admin(request: Request) -> None:
    # The dashboard's session cookie counts too, for reads only.
    if not (session_is_valid(request) or bearer_is_valid(request)):
        raise Unauthenticated("a valid admin bearer token is required")


async def _json_body(request: Request) -> dict[str, Any]:
    return await read_json(request, ADMIN_BODY_LIMIT_BYTES)


async def create_task(request: Request) -> Response:
    require_admin(request)
    settings: Settings = request.app.state.settings
    body = await _json_body(request)
    provider = _configured(settings, body.get("provider"))
    _refuse_after_sunset(request, provider, body)
    new = NewTask(
        provider=provider.name,
        owner=_text(body, "owner"),
        model=_text(body, "model"),
        request=_object(body, "request"),
        provider_task_id=_text(body, "provider_task_id") or None,
        expected_seconds=provider.expected_seconds,
        submit=_submit_flag(body, provider),
    )
    store: LedgerStore = request.app.state.store
    try:
        task = await store.register(new)
    except TaskConflict as exc:
        raise Conflict(str(exc), provider=provider.name) from None
    # Submitting is the reconciler's job (an outbox): the answer comes before the provider's.
    status = 202 if new.submit else 201
    return JSONResponse(task_json(task, callback_url(request, provider, task.ref)), status)


async def attach_task_id(request: Request) -> Response:
    require_admin(request)
    ref = task_ref(request)
    body = await _json_body(request)
    task_id = _text(body, "provider_task_id")
    if not task_id:
        raise Unprocessable("provider_task_id is required")
    store: LedgerStore = request.app.state.store
    if await store.get(ref) is None:
        raise NotFound("no task has this ref", task_ref=ref)
    try:
        task = await store.attach(ref, task_id)
    except TaskConflict as exc:
        raise Conflict(str(exc), task_ref=ref) from None
    except TaskNotFound:
        raise NotFound("no task has this ref", task_ref=ref) from None
    return JSONResponse(task_json(task))


async def show_task(request: Request) -> Response:
    require_admin(request)
    ref = task_ref(request)
    store: LedgerStore = request.app.state.store
    task = await store.get(ref)
    if task is None:
        raise NotFound("no task has this ref", task_ref=ref)
    timeline = await store.timeline(ref)
    provider = request.app.state.settings.provider(task.provider)
    url = callback_url(request, provider, ref) if provider else None
    shown = jsonable(timeline) | {"artifacts": [artifact_json(a) for a in timeline.artifacts]}
    return JSONResponse({**task_json(task, url), "timeline": shown})


def task_ref(request: Request) -> str:
    """The `{ref}` of the path; one PostgreSQL cannot even compare (NUL) names no task."""
    ref: str = request.path_params["ref"]
    if "\x00" in ref:
        raise NotFound("no task has this ref")
    return ref


def callback_url(request: Request, provider: ProviderSettings, ref: str) -> str:
    """Where the provider should call back: our signed per-task URL, or the project webhook."""
    settings: Settings = request.app.state.settings
    if provider.kind.signs_callbacks:
        return f"{settings.public_base_url}/webhooks/{provider.name}"
    tokens: CallbackTokens = request.app.state.inbox.tokens
    return f"{settings.public_base_url}/callbacks/{provider.name}/{tokens.make(ref, provider.name)}"


def task_json(task: Task, url: str | None = None) -> dict[str, Any]:
    """The one place a task becomes JSON: its shown fields, then its callback URL."""
    shown = {name: jsonable(getattr(task, name)) for name in SHOWN_FIELDS}
    if url is not None:
        shown["callback_url"] = url
    return shown


def artifact_json(artifact: Artifact) -> dict[str, Any]:
    """An output's metadata, fit for any reader: never its source, key or lease."""
    a = artifact
    return {
        "name": a.name,
        "state": a.state,
        "content_type": a.content_type,
        "size": a.size,
        "sha256": a.sha256,
        "expires_at": a.expires_at.isoformat(),
        "archived_at": a.archived_at.isoformat() if a.archived_at else None,
        "source_host": a.source_host,
        "attempts": a.attempts,
        "last_error": a.last_error,
    }


def jsonable(value: Any) -> Any:
    """JSON-ready: times as ISO 8601, the store's typed rows as objects of their fields."""
    if isinstance(value, datetime):
        return value.isoformat()
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def _configured(settings: Settings, name: object) -> ProviderSettings:
    provider = settings.provider(name) if isinstance(name, str) else None
    if provider is None:
        known = ", ".join(sorted(settings.providers))
        raise Unprocessable(f"provider must be one of: {known}")
    return provider


def _refuse_after_sunset(
    request: Request, provider: ProviderSettings, body: dict[str, Any]
) -> None:
    """After its provider's sunset a task may still be registered to follow one created
    before (its provider task id given), never to be created now."""
    today = request.app.state.inbox.clock().date()
    if not provider.sunset_passed(today) or (
        body.get("provider_task_id") and not body.get("submit")
    ):
        return
    raise Unprocessable(
        f"provider {provider.name} shut down on {provider.sunset}: no new tasks; register a"
        " task created before with its provider_task_id, or set"
        f" TASKLEDGER_PROVIDER_{provider.name.upper()}_SUNSET=none for a compatible endpoint"
    )


def _submit_flag(body: dict[str, Any], provider: ProviderSettings) -> bool:
    submit = body.get("submit", False)
    if not isinstance(submit, bool):
        raise Unprocessable("submit must be true or false")
    if submit and not provider.base_url:
        raise Unprocessable(f"provider {provider.name} has no base URL: taskledger cannot submit")
    if submit and body.get("provider_task_id"):
        raise Unprocessable("a task submitted by taskledger gets its provider task id from it")
    return submit


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_TEXT or "\x00" in value:
        raise Unprocessable(f"{name} must be a string of at most {MAX_TEXT} characters, no NUL")
    return value


def _object(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise Unprocessable(f"{name} must be a JSON object")
    return value
