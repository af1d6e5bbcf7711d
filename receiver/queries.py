"""The read side of the admin API (read scope): task lists, the change feed, the audit,
exports and the deliveries kept with no task; a key limited to an owner reads that owner's
tasks only."""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import io
from collections.abc import AsyncIterator
from dataclasses import fields, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from receiver.admin import artifact_json, jsonable, task_json
from receiver.auth import Principal, authorize
from receiver.bodies import SHOWN_CHARS
from receiver.contract import (
    EXPORT_FORMATS,
    FALSE_WORDS,
    MAX_PAGE,
    MAX_SEQ,
    MAX_WAIT_SECONDS,
    TRUE_WORDS,
    trimmed_owner,
)
from receiver.errors import NotFound, Unprocessable
from receiver.openapi import TasklessDelivery
from schemas.clock import aware
from schemas.endpoint_urls import redact
from schemas.settings import Settings
from schemas.states import State
from schemas.store import Artifact, DeliveryEntry, LedgerStore, Task, TaskFilter
from schemas.store.keys import KeyScope
from schemas.store.queries import TASKLESS_OUTCOMES, Cursor, DeliveryCursor, DeliveryFilter

ROW_ID_MAX = 2**63 - 1  # a BIGINT: past it no row has the id
REF_MAX_CHARS = 40  # a task's ref in the ledger
# The listings a cursor may belong to: tasks newest first, stuck tasks oldest first, and
# the deliveries with no task. A cursor names its own and a digest of its filters, and
# another listing, or the same with other filters, refuses it.
TASKS, STUCK_TASKS, DELIVERIES = "tasks", "stuck_tasks", "deliveries"
FILTERS_DIGEST_CHARS = 16  # of a SHA-256 in hex: to tell lists apart, not to sign them
CURSOR_MAX_CHARS = 256  # the longest this API returns is under 200
_FORGED = "cursor is not one this API returned"
FEED_RECHECK_SECONDS = 0.5
STATES = tuple(state.value for state in State)
EXPORT_COLUMNS = (
    "ref",
    "provider",
    "provider_task_id",
    "owner",
    "model",
    "state",
    "progress",
    "state_source",
    "confirmed",
    "conflict",
    "recovered",
    "created_at",
    "terminal_at",
    "result_urls",
    "error_code",
    "error_message",
    "artifacts",
)

# A text cell starting with one of these is a formula to a spreadsheet (OWASP's CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

# The export's columns a task holds as they are (the others are derived from it).
_EXPORTED_FIELDS = tuple(name for name in EXPORT_COLUMNS if name in {f.name for f in fields(Task)})


class ChangeSignal:
    """Wakes long-polling feed readers when this process commits; others are polled."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self, *_args: object) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._event.wait(), timeout=seconds)
        except TimeoutError:
            return


async def list_tasks(request: Request) -> Response:
    principal = await authorize(request, KeyScope.READ)
    params = request.query_params
    asked = task_filter(params)
    where = owned(asked, principal)
    limit = _integer(params.get("limit"), "limit", 50, 1, MAX_PAGE)
    ordering = STUCK_TASKS if asked.stuck else TASKS
    listed = where or asked  # another owner's list: none of its tasks, but still that list
    cursor = _task_cursor(params.get("cursor"), ordering, listed)
    store: LedgerStore = request.app.state.store
    tasks, after = await store.list_tasks(where, limit, cursor) if where else ([], None)
    return JSONResponse(
        {
            "tasks": [task_json(task) for task in tasks],
            "next_cursor": _encode_cursor(ordering, listed, after),
        }
    )


async def list_deliveries(request: Request) -> Response:
    """`GET /v1/deliveries` (read scope): the deliveries kept with no task, newest first.
    Such a delivery belongs to no task, so to no owner: a key limited to an owner sees none
    of them, as the audit counts none for it. Their kept headers are a raw payload, shown to
    the admin scope only, as in a task's timeline."""
    principal = await authorize(request, KeyScope.READ)
    params = request.query_params
    where = delivery_filter(params)
    limit = _integer(params.get("limit"), "limit", 50, 1, MAX_PAGE)
    cursor = _delivery_cursor(params.get("cursor"), where)
    found: list[DeliveryEntry] = []
    after = None
    if principal.owner is None:
        store: LedgerStore = request.app.state.store
        found, after = await store.taskless_deliveries(where, limit, cursor)
    admin = principal.scope.includes(KeyScope.ADMIN)
    return JSONResponse(
        {
            "deliveries": [taskless_json(entry, admin) for entry in found],
            "next_cursor": _encode_cursor(DELIVERIES, where, after),
        }
    )


async def show_delivery(request: Request) -> Response:
    """`GET /v1/deliveries/{id}` (admin scope, as a task's delivery is): a delivery kept
    with no task, its headers and its body; one that belongs to a task is its task's."""
    from receiver.dashboard import body_json  # the dashboard imports this module

    await authorize(request, KeyScope.ADMIN)
    number = row_id(request.path_params["id"])
    store: LedgerStore = request.app.state.store
    row = await store.taskless_delivery(number) if number else None
    if row is None:
        raise NotFound("no delivery without a task has this id")
    shown = taskless_json(DeliveryEntry(**{k: v for k, v in row.items() if k != "body"}), True)
    return JSONResponse({**shown, **body_json(row["body"])})


def taskless_json(entry: DeliveryEntry, admin: bool) -> TasklessDelivery:
    """A delivery kept with no task as JSON: its kept headers for the admin scope only."""
    return TasklessDelivery(
        id=entry.id,
        provider=entry.provider,
        provider_task_id=entry.provider_task_id,
        delivery_key=entry.delivery_key,
        outcome=entry.outcome,
        reason=entry.reason,
        received_at=entry.received_at.isoformat(),
        last_seen_at=entry.last_seen_at.isoformat(),
        duplicate_count=entry.duplicate_count,
        auth=entry.auth,
        headers=(entry.headers or {}) if admin else None,
    )


def delivery_filter(params: Any) -> DeliveryFilter:
    outcome = params.get("outcome")
    return DeliveryFilter(
        provider=_text(params.get("provider"), "provider"),
        outcome=_choice(outcome, "outcome", TASKLESS_OUTCOMES) if outcome else None,
        since=parse_time(params.get("since"), "since"),
        until=parse_time(params.get("until"), "until"),
    )


async def changes(request: Request) -> Response:
    principal = await authorize(request, KeyScope.READ)
    params = request.query_params
    after = _integer(params.get("after"), "after", 0, 0, MAX_SEQ)
    limit = _integer(params.get("limit"), "limit", 100, 1, MAX_PAGE)
    wait = _number(params.get("wait"), "wait", 0.0, 0.0, MAX_WAIT_SECONDS)
    store: LedgerStore = request.app.state.store
    signal: ChangeSignal = request.app.state.changes
    deadline = asyncio.get_running_loop().time() + wait
    rows = await _changes(store, principal, after, limit)
    while not rows and (left := deadline - asyncio.get_running_loop().time()) > 0:
        await signal.wait(min(left, FEED_RECHECK_SECONDS))
        rows = await _changes(store, principal, after, limit)
    last = rows[-1]["seq"] if rows else after
    return JSONResponse({"changes": [_change_json(r) for r in rows], "last_seq": last})


async def _changes(
    store: LedgerStore, principal: Principal, after: int, limit: int
) -> list[dict[str, Any]]:
    if principal.owner is None:
        return await store.changes(after, limit)
    return await store.owner_changes(principal.owner, after, limit)


async def audit(request: Request) -> Response:
    """The audit of the tasks the principal sees; notifications (endpoints) for the admin
    scope only."""
    principal = await authorize(request, KeyScope.READ)
    params = request.query_params
    settings: Settings = request.app.state.settings
    prices = {name: p.price_per_second for name, p in settings.providers.items()}
    since = parse_time(params.get("since"), "since")
    until = parse_time(params.get("until"), "until")
    store: LedgerStore = request.app.state.store
    if principal.owner is not None:
        summary = await store.owner_audit(principal.owner, since, until, prices)
    else:
        summary = await store.audit(since, until, prices)
    if not principal.scope.includes(KeyScope.ADMIN):
        return JSONResponse(summary)
    return JSONResponse(summary | {"notifications": await notifications_audit(store)})


async def notifications_audit(store: LedgerStore) -> dict[str, Any]:
    """Where notifications stand now (whatever the window): endpoints, the disabled ones and
    why, dispatches waiting and since when, events not fanned out yet."""
    endpoints = await store.endpoints()
    pending, oldest, unsent = await store.outbox_backlog()
    waited = (store.clock() - oldest).total_seconds() if oldest is not None else None
    return {
        "endpoints": len(endpoints),
        "disabled": [
            {
                "id": endpoint.id,
                "url": redact(endpoint.url),
                "reason": endpoint.disabled_reason,
                "disabled_at": jsonable(endpoint.disabled_at),
            }
            for endpoint in endpoints
            if not endpoint.enabled
        ],
        "pending": pending,
        "oldest_pending_seconds": None if waited is None else max(0.0, waited),
        "unsent": unsent,
    }


async def export(request: Request) -> Response:
    principal = await authorize(request, KeyScope.READ)
    params = request.query_params
    kind = _choice(params.get("format") or "jsonl", "format", EXPORT_FORMATS)
    where = owned(task_filter(params), principal)
    store: LedgerStore = request.app.state.store
    rows = _rows(store, store.pages(where) if where else _no_pages())
    body = _jsonl(rows) if kind == "jsonl" else _csv(rows)
    media = "application/x-ndjson" if kind == "jsonl" else "text/csv; charset=utf-8"
    return StreamingResponse(body, media_type=media)


async def _rows(
    store: LedgerStore, pages: AsyncIterator[list[Task]]
) -> AsyncIterator[list[dict[str, Any]]]:
    """Each page of tasks as export rows, with the outputs of those that have any."""
    async for tasks in pages:
        outputs = await _outputs(store, tasks)
        yield [export_row(task, outputs.get(task.ref, [])) for task in tasks]


async def _outputs(store: LedgerStore, tasks: list[Task]) -> dict[str, list[Artifact]]:
    """A page's outputs in one query. They are planned only when a success becomes
    authoritative: only a task that succeeded (or did, before a conflict moved it) can
    have any."""
    refs = [t.ref for t in tasks if t.state == State.SUCCEEDED or t.conflict]
    return await store.artifacts_of(refs) if refs else {}


async def _jsonl(rows: AsyncIterator[list[dict[str, Any]]]) -> AsyncIterator[bytes]:
    async for page in rows:
        yield b"".join(orjson.dumps(row) + b"\n" for row in page)


async def _csv(rows: AsyncIterator[list[dict[str, Any]]]) -> AsyncIterator[bytes]:
    yield (",".join(EXPORT_COLUMNS) + "\r\n").encode()
    async for page in rows:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, EXPORT_COLUMNS, extrasaction="ignore")
        for row in page:
            writer.writerow({k: _cell(v) for k, v in _flat(row).items()})
        yield buffer.getvalue().encode()


def export_row(task: Task, artifacts: list[Artifact] | None = None) -> dict[str, Any]:
    """A task's outcome, flat: what an export consumer needs, nothing secret; its outputs'
    archive metadata (never their bytes, sources or storage keys)."""
    result = task.result or {}
    error = result.get("error") or {}
    return {
        **{name: getattr(task, name) for name in _EXPORTED_FIELDS},
        "created_at": task.created_at.isoformat(),
        "terminal_at": task.terminal_at.isoformat() if task.terminal_at else None,
        "result_urls": result.get("urls", []),
        "error_code": error.get("code"),
        "error_message": error.get("message"),
        "artifacts": [artifact_json(artifact) for artifact in artifacts or []],
    }


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """A row for CSV: each output as `name:state:sha256`, the digest when archived."""
    outputs = [
        ":".join(filter(None, (a["name"], a["state"], a["sha256"]))) for a in row["artifacts"]
    ]
    return {**row, "artifacts": outputs}


def _cell(value: Any) -> Any:
    """A CSV cell: a list as one text; a text a spreadsheet would run as a formula (a
    provider's error, an owner's name) behind a `'`, so that it shows as text."""
    text = " ".join(value) if isinstance(value, list) else value
    if isinstance(text, str) and text.startswith(FORMULA_STARTS):
        return "'" + text
    return text


async def _no_pages() -> AsyncIterator[list[Task]]:
    return
    yield


def owned(where: TaskFilter, principal: Principal) -> TaskFilter | None:
    """`where`, narrowed to the principal's owner if it has one; None when it asks for
    another owner's tasks (none of which it may see)."""
    if principal.owner is None:
        return where
    if where.owner not in (None, principal.owner):
        return None
    return replace(where, owner=principal.owner)


def task_filter(params: Any) -> TaskFilter:
    state = params.get("state")
    return TaskFilter(
        state=_choice(state, "state", STATES) if state else None,
        provider=_text(params.get("provider"), "provider"),
        owner=_owner(params.get("owner")),
        since=parse_time(params.get("since"), "since"),
        until=parse_time(params.get("until"), "until"),
        conflict=_flag(params.get("conflict"), "conflict"),
        recovered=_flag(params.get("recovered"), "recovered"),
        stuck=bool(_flag(params.get("stuck"), "stuck")),
    )


def _change_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "seq": row["seq"],
        "task_ref": row["task_ref"],
        "from_state": row["from_state"],
        "to_state": row["to_state"],
        "source": row["source"],
        "source_id": row["source_id"],
        "at": row["at"].isoformat(),
        "task": {
            "provider": row["provider"],
            "provider_task_id": row["provider_task_id"],
            "state": row["task_state"],
            "result": row["result"],
        },
    }


def check_query(query_string: bytes, taken: tuple[str, ...]) -> None:
    """Refuse (422) a query parameter not in `taken`, or one given twice: a typo would
    filter nothing, and of two values one would be silently dropped. The names are read
    as `request.query_params` reads them."""
    seen: set[str] = set()
    for name, _ in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        shown = repr(name[:SHOWN_CHARS] + ("…" if len(name) > SHOWN_CHARS else ""))
        if name not in taken:
            takes = f"takes {', '.join(taken)}" if taken else "takes no query parameters"
            raise Unprocessable(f"unknown query parameter {shown}: this route {takes}")
        if name in seen:
            raise Unprocessable(f"query parameter {shown} is given twice: give it once")
        seen.add(name)


def _text(raw: str | None, name: str) -> str | None:
    """A text filter; PostgreSQL cannot compare text holding NUL, so neither do we."""
    if raw and "\x00" in raw:
        raise Unprocessable(f"{name} must not contain NUL")
    return raw or None


def _owner(raw: str | None) -> str | None:
    """The owner filter, by the rule of every owner (`contract.trimmed_owner`); left out or
    empty, as any filter, it filters nothing."""
    if not raw:
        return None
    try:
        return trimmed_owner(raw)
    except ValueError as exc:
        raise Unprocessable(str(exc)) from None


def parse_time(raw: str | None, name: str) -> datetime | None:
    """An ISO-8601 query parameter as an aware time (UTC when it names no zone)."""
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise Unprocessable(f"{name} must be an ISO-8601 time") from None
    try:
        value = aware(value)
    except OverflowError:
        raise Unprocessable(f"{name} must be an ISO-8601 time in years 1 to 9999 UTC") from None
    return value


def _choice(raw: str, name: str, allowed: tuple[str, ...]) -> str:
    """`raw` if it is one of `allowed`; a 422 naming them if not."""
    if raw not in allowed:
        raise Unprocessable(f"{name} must be one of: {', '.join(allowed)}")
    return raw


def _flag(raw: str | None, name: str) -> bool | None:
    if raw is None or raw == "":
        return None
    if raw.lower() in TRUE_WORDS:
        return True
    if raw.lower() in FALSE_WORDS:
        return False
    raise Unprocessable(f"{name} must be true or false (or 1 or 0, yes or no)")


def _integer(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    if raw is None or raw == "":
        return default
    # Never int() of thousands of digits: Python refuses to read them.
    short = raw.isascii() and raw.isdigit() and len(raw.lstrip("0")) <= len(str(high))
    if not short or not low <= int(raw) <= high:
        raise Unprocessable(f"{name} must be a whole number from {low} to {high}")
    return int(raw)


def _number(raw: str | None, name: str, default: float, low: float, high: float) -> float:
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise Unprocessable(f"{name} must be a number") from None
    if not low <= value <= high:
        raise Unprocessable(f"{name} must be from {low:g} to {high:g}")
    return value


def _encode_cursor(
    ordering: str, where: TaskFilter | DeliveryFilter, after: tuple[datetime, str | int] | None
) -> str | None:
    """The last row of a page as its next page's cursor: the listing and order it belongs
    to, the digest of its filters, the row's time and its key (a task's ref, a delivery's
    id)."""
    if after is None:
        return None
    shown = [ordering, _filters_digest(where), after[0].isoformat(), after[1]]
    return base64.urlsafe_b64encode(orjson.dumps(shown)).decode()


def _filters_digest(where: TaskFilter | DeliveryFilter) -> str:
    """A short digest of a list's filters, the same however the query wrote them
    (`conflict=1` or `conflict=true`, a time in any zone)."""
    shown = {field.name: _canonical(getattr(where, field.name)) for field in fields(where)}
    return hashlib.sha256(orjson.dumps(shown)).hexdigest()[:FILTERS_DIGEST_CHARS]


def _canonical(value: object) -> object:
    return value.astimezone(UTC) if isinstance(value, datetime) else value


def _task_cursor(raw: str | None, ordering: str, where: TaskFilter) -> Cursor | None:
    """A cursor of the task list in `ordering` with the filters `where`: a time and a
    task's ref."""
    after = _cursor(raw, ordering, where)
    if after is None:
        return None
    when, ref = after
    if not (isinstance(ref, str) and 0 < len(ref) <= REF_MAX_CHARS and "\x00" not in ref):
        raise Unprocessable(_FORGED)
    return when, ref


def _delivery_cursor(raw: str | None, where: DeliveryFilter) -> DeliveryCursor | None:
    """A cursor of the delivery list with the filters `where`: a time and a delivery's id
    (not a task's ref)."""
    after = _cursor(raw, DELIVERIES, where)
    if after is None:
        return None
    when, number = after
    if type(number) is not int or not 0 < number <= ROW_ID_MAX:
        raise Unprocessable(_FORGED)
    return when, number


def _cursor(
    raw: str | None, ordering: str, where: TaskFilter | DeliveryFilter
) -> tuple[datetime, object] | None:
    """A cursor's time and key, if it is one of the listing in `ordering` with the filters
    `where`: another's would start its page at a row of another order or another list (a
    page that is silently wrong). A cursor of the shape before filters had a digest is
    refused as any that this API did not return."""
    if not raw:
        return None
    if len(raw) > CURSOR_MAX_CHARS:
        raise Unprocessable(_FORGED)
    try:
        shown = orjson.loads(base64.urlsafe_b64decode(raw.encode()))
    except (ValueError, orjson.JSONDecodeError):
        raise Unprocessable(_FORGED) from None
    if not (isinstance(shown, list) and len(shown) == 4 and isinstance(shown[2], str)):
        raise Unprocessable(_FORGED)
    kind, digest, when, key = shown
    if kind != ordering:
        raise Unprocessable(f"cursor is not one of this list in this order ({ordering})")
    if digest != _filters_digest(where):
        raise Unprocessable(
            "cursor is not one of this list: it was given with other filters; keep every"
            " parameter but limit as it was, or start again without a cursor"
        )
    return _cursor_time(when), key


def _cursor_time(raw: str) -> datetime:
    """A cursor's time: aware, and one the ledger can compare (in range in UTC)."""
    try:
        after = datetime.fromisoformat(raw)
        if after.tzinfo is None:
            raise ValueError("the cursor's time names no zone")
        after.astimezone(UTC)
    except (ValueError, OverflowError):
        raise Unprocessable(_FORGED) from None
    return after


def row_id(raw: str) -> int | None:
    """`raw` as a row's id (a BIGINT above 0); None when no row can have it."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > len(str(ROW_ID_MAX)):
        return None  # and never int() of thousands of digits: Python refuses them
    number = int(raw)
    return number if 0 < number <= ROW_ID_MAX else None
