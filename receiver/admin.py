"""The admin API (bearer token, scoped): register tasks (once per `Idempotency-Key`), attach
provider ids, read a task's story (its evidence, transitions, outputs and the events it sent).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields, is_dataclass
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from receiver import contract
from receiver.auth import ADMIN_SUBJECT, Principal, authorize, bearer_is_valid, session_subject
from receiver.bodies import read_json
from receiver.contract import validated
from receiver.errors import (
    Conflict,
    Forbidden,
    NotFound,
    ReceiverError,
    Unauthenticated,
    Unprocessable,
)
from schemas.endpoint_urls import redact
from schemas.errors import TaskConflict, TaskNotFound
from schemas.settings import ProviderSettings, Settings
from schemas.store import Artifact, LedgerStore, NewTask, Task
from schemas.store.idempotency import IdempotencyKey, KeyReused, StoredAnswer
from schemas.store.keys import KeyScope
from schemas.tables import IDEMPOTENCY_KEY_MAX_CHARS
from schemas.tokens import CallbackTokens

ADMIN_BODY_LIMIT_BYTES = 256 * 1024
IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"


def require_admin(request: Request) -> None:
    """The bootstrap admin only: its bearer token, or its dashboard session for reads. For
    routes not yet on `receiver.auth.authorize`, which also takes API keys and scopes."""
    if not (bearer_is_valid(request) or session_subject(request) == ADMIN_SUBJECT):
        raise Unauthenticated("a valid admin bearer token is required")


async def create_task(request: Request) -> Response:
    """`POST /v1/tasks` (write scope). With an `Idempotency-Key`, the first answer is kept:
    the same key with the same body gets it again (`Idempotent-Replayed: true`), with
    another body a 409; a key is the caller's own, kept a week at least."""
    principal = await authorize(request, KeyScope.WRITE)
    raw = await read_json(request, ADMIN_BODY_LIMIT_BYTES)
    body = validated(contract.NewTask, raw)
    key = idempotency_key(request, principal, raw)
    store: LedgerStore = request.app.state.store
    if key is not None and (first := await _answered(store, key)) is not None:
        return _answer_of(first)
    provider, new = _new_task(request, principal, body)
    # Submitting is the reconciler's job (an outbox): the answer comes before the provider's.
    status = 202 if new.submit else 201

    def answer(task: Task) -> tuple[int, bytes]:
        shown = task_json(task, callback_url(request, provider, task.ref))
        return status, bytes(JSONResponse(shown).body)

    try:
        if key is None:
            return _answer_of(StoredAnswer(*answer(await store.register(new))))
        return _answer_of(await store.register_once(new, key, answer))
    except TaskConflict as exc:
        raise Conflict(str(exc), provider=provider.name) from None
    except KeyReused as exc:
        raise Conflict(str(exc)) from None


def _new_task(
    request: Request, principal: Principal, body: contract.NewTask
) -> tuple[ProviderSettings, NewTask]:
    settings: Settings = request.app.state.settings
    provider = _configured(settings, body.provider)
    _refuse_after_sunset(request, provider, body)
    new = NewTask(
        provider=provider.name,
        owner=_owner(principal, body.owner or ""),
        model=body.model or "",
        request=body.request,
        provider_task_id=body.provider_task_id or None,
        expected_seconds=provider.expected_seconds,
        submit=_submit_flag(body, provider),
    )
    return provider, new


def idempotency_key(
    request: Request, principal: Principal, body: dict[str, Any]
) -> IdempotencyKey | None:
    """The request's `Idempotency-Key`, the caller's own, with the hash of its body (the
    JSON as sent, keys sorted: the same object in another order is the same request)."""
    raw = request.headers.get(IDEMPOTENCY_HEADER)
    if raw is None:
        return None
    if not (0 < len(raw) <= IDEMPOTENCY_KEY_MAX_CHARS and raw.isascii() and raw.isprintable()):
        raise ReceiverError(
            f"{IDEMPOTENCY_HEADER} must be 1 to {IDEMPOTENCY_KEY_MAX_CHARS} printable ASCII"
            " characters"
        )
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return IdempotencyKey(principal.subject, raw, digest)


async def _answered(store: LedgerStore, key: IdempotencyKey) -> StoredAnswer | None:
    try:
        return await store.idempotent_answer(key)
    except KeyReused as exc:
        raise Conflict(str(exc)) from None


def _answer_of(answer: StoredAnswer) -> Response:
    headers = {REPLAYED_HEADER: "true"} if answer.replayed else {}
    return Response(answer.body, answer.status, headers, "application/json")


def _owner(principal: Principal, owner: str) -> str:
    """The task's owner: as the body says; a key limited to an owner registers its tasks
    only (the body may leave it out)."""
    if principal.owner is None:
        return owner
    if owner and owner != principal.owner:
        raise Forbidden(f"this key registers tasks of the owner {principal.owner!r} only")
    return principal.owner


async def attach_task_id(request: Request) -> Response:
    """`PATCH /v1/tasks/{ref}` (write scope): attach the provider's task id; the answer is
    the whole task, its callback URL included."""
    principal = await authorize(request, KeyScope.WRITE)
    ref = task_ref(request)
    raw = await read_json(request, ADMIN_BODY_LIMIT_BYTES)
    task_id = validated(contract.AttachTaskId, raw).provider_task_id
    store: LedgerStore = request.app.state.store
    await visible_task(request, principal, ref)
    try:
        task = await store.attach(ref, task_id)
    except TaskConflict as exc:
        raise Conflict(str(exc), task_ref=ref) from None
    except TaskNotFound:
        raise NotFound("no task has this ref", task_ref=ref) from None
    return JSONResponse(task_json(task, _callback_url_of(request, task)))


async def show_task(request: Request) -> Response:
    """`GET /v1/tasks/{ref}` (read scope): the task and its timeline; the raw payloads kept
    (poll bodies, delivery headers) for the admin scope only."""
    principal = await authorize(request, KeyScope.READ)
    ref = task_ref(request)
    store: LedgerStore = request.app.state.store
    task = await visible_task(request, principal, ref)
    timeline = await store.timeline(ref)
    shown = jsonable(timeline) | {
        "artifacts": [artifact_json(a) for a in timeline.artifacts],
        "messages": await messages_json(store, ref),
    }
    if not principal.scope.includes(KeyScope.ADMIN):
        shown |= without_payloads(shown)
    return JSONResponse({**task_json(task, _callback_url_of(request, task)), "timeline": shown})


async def visible_task(request: Request, principal: Principal, ref: str) -> Task:
    """The task `ref`, if the principal may see it: another owner's is a 404, as if it did
    not exist."""
    store: LedgerStore = request.app.state.store
    task = await store.get(ref)
    if task is None or not principal.sees(task.owner):
        raise NotFound("no task has this ref", task_ref=ref)
    return task


def without_payloads(timeline: dict[str, Any]) -> dict[str, Any]:
    """A shown timeline's deliveries and polls without what a provider sent (their headers,
    a poll's answer): raw payloads are for the admin scope."""
    return {
        "deliveries": [d | {"headers": None} for d in timeline["deliveries"]],
        "polls": [p | {"body": None} for p in timeline["polls"]],
    }


def _callback_url_of(request: Request, task: Task) -> str | None:
    provider = request.app.state.settings.provider(task.provider)
    return callback_url(request, provider, task.ref) if provider else None


async def messages_json(store: LedgerStore, ref: str) -> list[dict[str, Any]]:
    """The events a task sent the product, each with how it went to every endpoint; an
    endpoint by its redacted URL (a broker's credentials never shown), not the payload."""
    messages = await store.messages_of_task(ref)
    urls = {e.id: redact(e.url) for e in await store.endpoints()} if messages else {}
    return [
        {
            "msg_id": m["msg_id"],
            "event_type": m["event_type"],
            "seq": m["seq"],
            "unconfirmed": m["unconfirmed"],
            "fanned_out": m["fanned_out"],
            "created_at": jsonable(m["created_at"]),
            "dispatches": [dispatch_json(d, urls.get(d["endpoint_id"])) for d in m["dispatches"]],
        }
        for m in messages
    ]


def dispatch_json(dispatch: dict[str, Any], url: str | None) -> dict[str, Any]:
    """One message's way to one endpoint: its state, its count of tries and each try."""
    return {
        "endpoint_id": dispatch["endpoint_id"],
        "endpoint_url": url,
        "state": dispatch["state"],
        "attempts": dispatch["attempts"],
        "last_status": dispatch["last_status"],
        "last_error": dispatch["last_error"],
        "next_attempt_at": jsonable(dispatch["next_attempt_at"]),
        "delivered_at": jsonable(dispatch["delivered_at"]),
        "attempt_log": [attempt_json(a) for a in dispatch["attempts_made"]],
    }


def attempt_json(attempt: dict[str, Any]) -> dict[str, Any]:
    """One try: when, what the endpoint answered (trimmed) and how long it took."""
    return {
        "at": jsonable(attempt["at"]),
        "status_code": attempt["status_code"],
        "latency_ms": attempt["latency_ms"],
        "answer": attempt["answer"],
        "error": attempt["error"],
    }


def task_ref(request: Request) -> str:
    """The `{ref}` of the path; one PostgreSQL cannot even compare (NUL) names no task."""
    ref: str = request.path_params["ref"]
    if "\x00" in ref:
        raise NotFound("no task has this ref")
    return ref


def callback_url(request: Request, provider: ProviderSettings, ref: str) -> str | None:
    """Where the provider should call back: our signed per-task URL, or the project webhook
    (none while its secrets are not set: every webhook would be refused)."""
    settings: Settings = request.app.state.settings
    if provider.kind.signs_callbacks:
        if not provider.takes_webhooks:
            return None
        return f"{settings.public_base_url}/webhooks/{provider.name}"
    tokens: CallbackTokens = request.app.state.inbox.tokens
    return f"{settings.public_base_url}/callbacks/{provider.name}/{tokens.make(ref, provider.name)}"


def task_json(task: Task, url: str | None = None) -> contract.Task:
    """The one place a task becomes JSON: its shown fields (not its lease or authority),
    then its callback URL."""
    t = task
    shown = contract.Task(
        ref=t.ref,
        provider=t.provider,
        provider_task_id=t.provider_task_id,
        owner=t.owner,
        model=t.model,
        request=t.request,
        state=t.state,
        progress=t.progress,
        result=t.result,
        state_source=t.state_source,
        confirmed=t.confirmed,
        conflict=t.conflict,
        recovered=t.recovered,
        version=t.version,
        created_at=t.created_at.isoformat(),
        updated_at=t.updated_at.isoformat(),
        last_event_at=_time(t.last_event_at),
        terminal_at=_time(t.terminal_at),
        next_poll_at=_time(t.next_poll_at),
        poll_attempts=t.poll_attempts,
        submission=t.submission,
        attention=t.attention,
    )
    if url is not None:
        shown["callback_url"] = url
    return shown


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def artifact_json(artifact: Artifact) -> contract.Artifact:
    """An output's metadata, fit for any reader: never its source, key or lease."""
    a = artifact
    return contract.Artifact(
        name=a.name,
        state=a.state,
        content_type=a.content_type,
        size=a.size,
        sha256=a.sha256,
        expires_at=a.expires_at.isoformat(),
        archived_at=_time(a.archived_at),
        source_host=a.source_host,
        attempts=a.attempts,
        last_error=a.last_error,
    )


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


def _configured(settings: Settings, name: str) -> ProviderSettings:
    provider = settings.provider(name)
    if provider is None:
        known = ", ".join(sorted(settings.providers))
        raise Unprocessable(f"provider must be one of: {known}")
    return provider


def _refuse_after_sunset(
    request: Request, provider: ProviderSettings, body: contract.NewTask
) -> None:
    """After its provider's sunset a task may still be registered to follow one created
    before (its provider task id given), never to be created now."""
    today = request.app.state.inbox.clock().date()
    if not provider.sunset_passed(today) or (body.provider_task_id and not body.submit):
        return
    raise Unprocessable(
        f"provider {provider.name} shut down on {provider.sunset}: no new tasks; register a"
        " task created before with its provider_task_id, or set"
        f" TASKLEDGER_PROVIDER_{provider.name.upper()}_SUNSET=none for a compatible endpoint"
    )


def _submit_flag(body: contract.NewTask, provider: ProviderSettings) -> bool:
    if body.submit and not provider.base_url:
        raise Unprocessable(f"provider {provider.name} has no base URL: taskledger cannot submit")
    if body.submit and body.provider_task_id:
        raise Unprocessable("a task submitted by taskledger gets its provider task id from it")
    return body.submit
