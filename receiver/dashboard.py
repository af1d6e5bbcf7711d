"""The dashboard's own reads: outcomes in time buckets that fit the window, each provider's
polling health, and (for admins) the raw payload of a task's delivery or poll.
"""

from __future__ import annotations

import base64
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from receiver import contract
from receiver.admin import jsonable, task_ref
from receiver.auth import Principal, authorize, listed_prefix
from receiver.errors import NotFound, Unprocessable
from receiver.openapi import ERROR
from receiver.queries import owned, parse_time, row_id
from schemas.settings import ProviderSettings, Settings
from schemas.states import REAL_TERMINAL, State
from schemas.store import LedgerStore, PollEntry, Task, TaskFilter
from schemas.store.keys import KeyScope

# Bucket widths a window is cut into: the narrowest giving at most `BUCKETS_WANTED`.
BUCKET_CHOICES_SECONDS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86_400)
BUCKETS_WANTED = 30
MAX_BUCKETS = 500
DEFAULT_WINDOW = timedelta(hours=24)
OUTCOMES = ("succeeded", "failed", "cancelled", "lost")
_FINAL = frozenset({*REAL_TERMINAL, State.LOST})


async def outcomes(request: Request) -> Response:
    """Tasks registered in the window that reached a final state, per provider and bucket of
    when they reached it; `terminal` and `recovered` give the missed-callback rate."""
    principal = await authorize(request, KeyScope.READ)
    store: LedgerStore = request.app.state.store
    since, until = _window(request, store.clock())
    seconds = _bucket_seconds(request.query_params.get("bucket_seconds"), until - since)
    counts: dict[tuple[int, str], Counter[str]] = defaultdict(Counter)
    where = owned(TaskFilter(since=since, until=until), principal)
    if where is not None:
        async for tasks in store.pages(where):
            count_outcomes(counts, tasks, seconds)
    return JSONResponse(
        {
            "since": since.isoformat(),
            "until": until.isoformat(),
            "bucket_seconds": seconds,
            "buckets": bucket_rows(counts),
        }
    )


def count_outcomes(
    counts: dict[tuple[int, str], Counter[str]], tasks: Iterable[Task], seconds: int
) -> None:
    """Add each final task to its (bucket start, provider): its outcome; a real final state
    also counts as `terminal`, and as `recovered` when only a poll revealed it."""
    for task in tasks:
        if task.terminal_at is None or task.state not in _FINAL:
            continue
        start = math.floor(task.terminal_at.timestamp() / seconds) * seconds
        counted = counts[(start, task.provider)]
        counted[task.state] += 1
        if task.state in REAL_TERMINAL:
            counted["terminal"] += 1
            counted["recovered"] += int(task.recovered)


def bucket_rows(counts: dict[tuple[int, str], Counter[str]]) -> list[dict[str, Any]]:
    return [
        {
            "start": datetime.fromtimestamp(start, UTC).isoformat(),
            "provider": provider,
            **{name: counted[name] for name in (*OUTCOMES, "terminal", "recovered")},
        }
        for (start, provider), counted in sorted(counts.items())
    ]


def fitting_bucket(span: timedelta) -> int:
    """The narrowest bucket that cuts `span` into at most `BUCKETS_WANTED` pieces."""
    seconds = span.total_seconds()
    fits = (b for b in BUCKET_CHOICES_SECONDS if seconds / b <= BUCKETS_WANTED)
    return next(fits, BUCKET_CHOICES_SECONDS[-1])


async def provider_health(request: Request) -> Response:
    """Each provider: whether taskledger can poll it (a base URL), and its last poll error;
    and who is asking (`viewer`), for the dashboard's header."""
    principal = await authorize(request, KeyScope.READ)
    settings: Settings = request.app.state.settings
    store: LedgerStore = request.app.state.store
    errors = await store.last_poll_errors()
    names = sorted({*settings.providers, *errors})
    shown = [health_json(name, settings.provider(name), errors.get(name)) for name in names]
    if principal.owner is not None:
        for entry in shown:
            entry["last_poll_error"] = withheld(entry["last_poll_error"])
    return JSONResponse({"providers": shown, "viewer": viewer_json(principal)})


def withheld(error: dict[str, Any] | None) -> dict[str, Any] | None:
    """A last poll error as a key limited to one owner sees it: the failed poll may be
    another owner's task, whose ref and error text (which can quote its prompt) it must not
    see; only when it failed, and how."""
    if error is None:
        return None
    return {**error, "task_ref": None, "error": None}


def viewer_json(principal: Principal) -> dict[str, Any]:
    """Who the caller is: its scope, the owner it is limited to, its key's listed prefix
    (None: the admin token)."""
    key = listed_prefix(principal.key_id) if principal.key_id else None
    return {"scope": principal.scope.value, "owner": principal.owner, "key": key}


def health_json(
    name: str, provider: ProviderSettings | None, error: PollEntry | None
) -> dict[str, Any]:
    if provider is None:
        status, reason = "not configured", "not in the settings: its tasks are never polled"
    elif not provider.base_url:
        key = f"TASKLEDGER_PROVIDER_{name.upper()}_BASE_URL"
        status, reason = "not configured", f"no base URL ({key}): its tasks are never polled"
    else:
        status, reason = "pollable", None
    last = None
    if error is not None:
        last = {
            "at": error.observed_at.isoformat(),
            "task_ref": error.task_ref,
            "http_status": error.http_status,
            "error": error.error,
        }
    sunset = provider.sunset.isoformat() if provider and provider.sunset else None
    return {
        "provider": name,
        "pollable": status == "pollable",
        "status": status,
        "reason": reason,
        "sunset": sunset,
        "last_poll_error": last,
    }


async def delivery_payload(request: Request) -> Response:
    """A task's delivery as received: its kept headers and its body, for admins only."""
    await authorize(request, KeyScope.ADMIN)
    ref = task_ref(request)
    store: LedgerStore = request.app.state.store
    row = await store.delivery(ref, _row_id(request))
    if row is None:
        raise NotFound("this task has no such delivery", task_ref=ref)
    shown = {
        "id": row["id"],
        "task_ref": ref,
        "provider": row["provider"],
        "delivery_key": row["delivery_key"],
        "received_at": jsonable(row["received_at"]),
        "headers": row["headers"] or {},
    }
    return JSONResponse(shown | body_json(row["body"]))


async def poll_payload(request: Request) -> Response:
    """What a provider's status endpoint answered to one poll of a task, for admins only."""
    await authorize(request, KeyScope.ADMIN)
    ref = task_ref(request)
    number = _row_id(request)
    store: LedgerStore = request.app.state.store
    poll = await store.poll(ref, number)
    if poll is None:
        raise NotFound("this task has no such poll", task_ref=ref)
    shown = {
        "id": poll.id,
        "task_ref": ref,
        "observed_at": poll.observed_at.isoformat(),
        "http_status": poll.http_status,
        "error": poll.error,
        "headers": {},
    }
    return JSONResponse(shown | body_json(poll.body))


def body_json(body: bytes | str | None) -> dict[str, Any]:
    """A body as JSON can carry it: text when it is UTF-8, else base64."""
    if body is None:
        return {"encoding": None, "body": None}
    if isinstance(body, str):
        return {"encoding": "utf-8", "body": body}
    try:
        return {"encoding": "utf-8", "body": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"encoding": "base64", "body": base64.b64encode(body).decode("ascii")}


def _window(request: Request, now: datetime) -> tuple[datetime, datetime]:
    params = request.query_params
    until = parse_time(params.get("until"), "until") or now
    since = parse_time(params.get("since"), "since")
    try:
        since = since or until - DEFAULT_WINDOW
        ordered = since < until  # aware times near year 1 or 9999 overflow here too
    except OverflowError:
        raise Unprocessable(
            "since and until, or until less the default window, fall outside years 1-9999"
        ) from None
    if not ordered:
        raise Unprocessable("since must be before until")
    return since, until


def _bucket_seconds(raw: str | None, span: timedelta) -> int:
    if raw is None or raw == "":
        return fitting_bucket(span)
    low, high = BUCKET_CHOICES_SECONDS[0], BUCKET_CHOICES_SECONDS[-1]
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise Unprocessable(f"bucket_seconds must be a whole number from {low} to {high}")
    if span.total_seconds() / int(raw) > MAX_BUCKETS:
        raise Unprocessable(f"the window holds more than {MAX_BUCKETS} such buckets")
    return int(raw)


def _row_id(request: Request) -> int:
    number = row_id(request.path_params["id"])
    if number is None:
        raise NotFound("no row has this id")
    return number


# -- the OpenAPI description -----------------------------------------------------


def _operation(summary: str, params: list[tuple[str, str]], *refused: int) -> dict[str, Any]:
    reasons = {401: "not authenticated", 404: "unknown task or row", 422: "invalid parameters"}
    error = {"application/json": {"schema": ERROR}}
    return {
        "get": {
            "summary": summary,
            "security": [{"bearer": []}],
            "parameters": [
                {"name": n, "in": where, "required": where == "path", "schema": {"type": "string"}}
                for n, where in params
            ],
            "responses": {
                "200": {
                    "description": "success",
                    "content": {"application/json": {"schema": contract.JSON_OBJECT}},
                },
                **{str(c): {"description": reasons[c], "content": error} for c in refused},
            },
        }
    }


_WINDOW = [("since", "query"), ("until", "query"), ("bucket_seconds", "query")]
_ROW = [("ref", "path"), ("id", "path")]
OPENAPI_PATHS: dict[str, Any] = {
    "/v1/dashboard/outcomes": _operation(
        "Final outcomes, terminal and recovered tasks per provider and time bucket",
        _WINDOW,
        401,
        422,
    ),
    "/v1/dashboard/providers": _operation(
        "Each provider: pollable or not configured, and its last poll error (for a key limited"
        " to an owner, when and how only: it may be another owner's task); and who asks",
        [],
        401,
    ),
    "/v1/tasks/{ref}/deliveries/{id}": _operation(
        "A delivery's kept headers and raw body (UTF-8 text, else base64); admin only",
        _ROW,
        401,
        404,
    ),
    "/v1/tasks/{ref}/polls/{id}": _operation(
        "A poll's raw answer from the provider (kept up to 4000 characters); admin only",
        _ROW,
        401,
        404,
    ),
}
