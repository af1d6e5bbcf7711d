"""Notifications in the ledger: endpoints, fanning the outbox out to them, leasing
dispatches to relays, recording every attempt, and the reads operators need.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from schemas.store.transactions import Database
from schemas.tables import (
    ANSWER_KEEP_CHARS,
    DISPATCH,
    DISPATCH_ATTEMPT,
    ENDPOINT,
    MESSAGE,
    REASON_MAX_CHARS,
)

UNSENT = MESSAGE.c.fanned_out == sa.false()


class DispatchState(StrEnum):
    PENDING = "pending"  # due now or at `next_attempt_at`
    DELIVERED = "delivered"
    FAILED = "failed"  # every attempt of its schedule failed (or its endpoint said 410)


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    kind: str
    url: str
    description: str
    providers: list[str] | None
    owners: list[str] | None
    event_types: list[str] | None
    include_unconfirmed: bool
    secrets: list[dict[str, Any]]
    enabled: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    failing_since: datetime | None
    last_success_at: datetime | None
    created_at: datetime
    updated_at: datetime

    def wants(self, message: Mapping[str, Any] | sa.RowMapping) -> bool:
        """Whether a message passes this endpoint's filters."""
        data = message["payload"]["data"]
        return (
            (self.include_unconfirmed or not message["unconfirmed"])
            and (self.providers is None or data.get("provider") in self.providers)
            and (self.owners is None or data.get("owner") in self.owners)
            and (self.event_types is None or message["event_type"] in self.event_types)
        )

    def signing_secrets(self, now: datetime) -> list[str]:
        """The secrets that sign now: the newest, and older ones within their grace."""
        return [
            entry["secret"]
            for entry in self.secrets
            if entry.get("expires_at") is None or datetime.fromisoformat(entry["expires_at"]) > now
        ]


@dataclass(frozen=True, slots=True)
class DispatchJob:
    """A dispatch leased to a relay: what to send, where, and how to sign it."""

    id: int
    attempts: int
    msg_id: str
    event_type: str
    payload: dict[str, Any]
    created_at: datetime
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """How one try went. `retry_at` None after a failure: the schedule is spent. `gone`:
    the endpoint answered 410 and is disabled."""

    delivered: bool
    status_code: int | None = None
    latency_ms: float | None = None
    answer: str | None = None
    error: str | None = None
    retry_at: datetime | None = None
    gone: bool = False


_ENDPOINT_COLUMNS = [ENDPOINT.c[f.name] for f in fields(Endpoint)]


def _endpoint(row: Mapping[str, Any] | sa.RowMapping) -> Endpoint:
    return Endpoint(**{f.name: row[f.name] for f in fields(Endpoint)})


# -- endpoints ---------------------------------------------------------------------------


async def create_endpoint(db: Database, values: dict[str, Any]) -> Endpoint:
    now = db.clock()
    row = {"enabled": True, "created_at": now, "updated_at": now} | values
    async with db.write() as conn:
        await conn.execute(ENDPOINT.insert().values(**row))
    found = await get_endpoint(db, str(row["id"]))
    assert found is not None
    return found


async def get_endpoint(db: Database, endpoint_id: str) -> Endpoint | None:
    async with db.read() as conn:
        row = (
            (await conn.execute(sa.select(*_ENDPOINT_COLUMNS).where(ENDPOINT.c.id == endpoint_id)))
            .mappings()
            .first()
        )
    return _endpoint(row) if row else None


async def list_endpoints(db: Database) -> list[Endpoint]:
    async with db.read() as conn:
        rows = await conn.execute(sa.select(*_ENDPOINT_COLUMNS).order_by(ENDPOINT.c.created_at))
        return [_endpoint(row) for row in rows.mappings()]


async def update_endpoint(
    db: Database, endpoint_id: str, changes: dict[str, Any]
) -> Endpoint | None:
    """Change an endpoint's fields; enabling it again clears why it was disabled."""
    values = dict(changes) | {"updated_at": db.clock()}
    if values.get("enabled") is True:
        values.update(disabled_reason=None, disabled_at=None, failing_since=None)
    elif values.get("enabled") is False:
        values.setdefault("disabled_reason", "disabled by an operator")
        values["disabled_at"] = db.clock()
    async with db.write() as conn:
        await conn.execute(ENDPOINT.update().where(ENDPOINT.c.id == endpoint_id).values(**values))
    return await get_endpoint(db, endpoint_id)


async def delete_endpoint(db: Database, endpoint_id: str) -> bool:
    """An endpoint and its dispatches (their attempts too); the outbox keeps its messages."""
    mine = sa.select(DISPATCH.c.id).where(DISPATCH.c.endpoint_id == endpoint_id)
    async with db.write() as conn:
        await conn.execute(
            DISPATCH_ATTEMPT.delete().where(DISPATCH_ATTEMPT.c.dispatch_id.in_(mine))
        )
        await conn.execute(DISPATCH.delete().where(DISPATCH.c.endpoint_id == endpoint_id))
        result = await conn.execute(ENDPOINT.delete().where(ENDPOINT.c.id == endpoint_id))
    return bool(result.rowcount)


# -- the relay ---------------------------------------------------------------------------


async def fan_out(db: Database, limit: int) -> int:
    """Turn up to `limit` new messages into one pending dispatch per endpoint that wants
    it; how many messages. Several relays share the outbox (`SKIP LOCKED`). An outbox with
    nothing new is seen in a read: no write lock is taken for it (the relay looks often)."""
    async with db.read() as conn:
        if await conn.scalar(sa.select(MESSAGE.c.id).where(UNSENT).limit(1)) is None:
            return 0
    now = db.clock()
    query = (
        sa.select(MESSAGE.c.id, MESSAGE.c.event_type, MESSAGE.c.payload, MESSAGE.c.unconfirmed)
        .where(UNSENT)
        .order_by(MESSAGE.c.id)
        .limit(limit)
    )
    if db.locks_rows:
        query = query.with_for_update(skip_locked=True)
    async with db.write() as conn:
        messages = (await conn.execute(query)).mappings().all()
        if not messages:
            return 0
        endpoints = [
            _endpoint(row)
            for row in (
                await conn.execute(sa.select(*_ENDPOINT_COLUMNS).where(ENDPOINT.c.enabled))
            ).mappings()
        ]
        dispatches = [
            _new_dispatch(message["id"], endpoint.id, now)
            for message in messages
            for endpoint in endpoints
            if endpoint.wants(message)
        ]
        if dispatches:
            await conn.execute(DISPATCH.insert(), dispatches)
        await conn.execute(
            MESSAGE.update()
            .where(MESSAGE.c.id.in_([m["id"] for m in messages]))
            .values(fanned_out=True)
        )
    return len(messages)


def _new_dispatch(message_id: int, endpoint_id: str, now: datetime) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "endpoint_id": endpoint_id,
        "state": DispatchState.PENDING.value,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }


async def claim_dispatches(
    db: Database,
    owner: str,
    limit: int,
    lease_seconds: float,
    skip_endpoints: frozenset[str] = frozenset(),
) -> list[DispatchJob]:
    """Lease up to `limit` due dispatches of enabled endpoints, the longest due first,
    leaving out those of `skip_endpoints` (full at this relay). Each endpoint is read once
    a claim, its jobs sharing it (the relay claims often: a claim costs little per job)."""
    now = db.clock()
    params = {"now": now, "limit": limit, "skip": sorted(skip_endpoints)}
    until = now + timedelta(seconds=lease_seconds)
    async with db.write() as conn:
        rows = (await conn.execute(_CLAIM_LOCKING if db.locks_rows else _CLAIM, params)).all()
        if not rows:
            return []
        ids = [row.id for row in rows]
        await conn.execute(_LEASE, {"ids": ids, "l_owner": owner, "l_until": until})
        wanted = sorted({row.endpoint_id for row in rows})
        found = await conn.execute(_ENDPOINTS_BY_ID, {"ids": wanted})
        endpoints = {row["id"]: _endpoint(row) for row in found.mappings()}
    return [
        DispatchJob(
            row.id,
            row.attempts,
            row.msg_id,
            row.event_type,
            row.payload,
            row.created_at,
            endpoints[row.endpoint_id],
        )
        for row in rows
    ]


_NOW = sa.bindparam("now", type_=DISPATCH.c.next_attempt_at.type)
_CLAIM = (
    sa.select(
        DISPATCH.c.id,
        DISPATCH.c.attempts,
        DISPATCH.c.endpoint_id,
        MESSAGE.c.msg_id,
        MESSAGE.c.event_type,
        MESSAGE.c.payload,
        MESSAGE.c.created_at,
    )
    .select_from(
        DISPATCH.join(MESSAGE, MESSAGE.c.id == DISPATCH.c.message_id).join(
            ENDPOINT, ENDPOINT.c.id == DISPATCH.c.endpoint_id
        )
    )
    .where(DISPATCH.c.state == DispatchState.PENDING.value)
    .where(DISPATCH.c.next_attempt_at <= _NOW)
    .where(sa.or_(DISPATCH.c.lease_until.is_(None), DISPATCH.c.lease_until < _NOW))
    .where(ENDPOINT.c.enabled)
    .where(DISPATCH.c.endpoint_id.not_in(sa.bindparam("skip", expanding=True)))
    .order_by(DISPATCH.c.next_attempt_at, DISPATCH.c.id)
    .limit(sa.bindparam("limit", type_=sa.Integer()))
)
# Built once: a statement made anew each claim costs more to build and key than to run.
_CLAIM_LOCKING = _CLAIM.with_for_update(skip_locked=True, of=DISPATCH)
_LEASE = (
    DISPATCH.update()
    .where(DISPATCH.c.id.in_(sa.bindparam("ids", expanding=True)))
    .values(lease_owner=sa.bindparam("l_owner"), lease_until=sa.bindparam("l_until"))
)
_ENDPOINTS_BY_ID = sa.select(*_ENDPOINT_COLUMNS).where(
    ENDPOINT.c.id.in_(sa.bindparam("ids", expanding=True))
)


async def record_attempt(
    db: Database, job: DispatchJob, owner: str, result: AttemptResult, disable_after: timedelta
) -> bool:
    """One attempt: `record_attempts` of one."""
    return bool(await record_attempts(db, owner, [(job, result)], disable_after))


async def record_attempts(
    db: Database,
    owner: str,
    results: list[tuple[DispatchJob, AttemptResult]],
    disable_after: timedelta,
) -> int:
    """Write a batch of attempts in one transaction, move each dispatch on, and keep each
    endpoint's health from its latest attempt: a 410, or failing everything for longer than
    `disable_after`, disables it. How many dispatches moved: one whose lease was lost
    (another relay has it now) does not, though its attempt is recorded all the same."""
    if not results:
        return 0
    now = db.clock()
    latest = {job.endpoint.id: (job.endpoint, result) for job, result in results}
    async with db.write() as conn:
        await conn.execute(
            DISPATCH_ATTEMPT.insert(), [_attempt_row(job.id, now, r) for job, r in results]
        )
        moved = await conn.execute(
            _MOVE_DISPATCH, [_dispatch_params(job, owner, now, r) for job, r in results]
        )
        for endpoint_id, (endpoint, result) in sorted(latest.items()):
            change = _health_change(endpoint, now, result, disable_after)
            await conn.execute(ENDPOINT.update().where(ENDPOINT.c.id == endpoint_id).values(change))
    return max(0, int(moved.rowcount))


_MOVE_DISPATCH = (
    DISPATCH.update()
    .where(DISPATCH.c.id == sa.bindparam("d_id"))
    .where(DISPATCH.c.lease_owner == sa.bindparam("d_owner"))
    .where(DISPATCH.c.state == DispatchState.PENDING.value)
    .values(
        attempts=DISPATCH.c.attempts + 1,
        lease_owner=None,
        lease_until=None,
        last_status=sa.bindparam("d_status"),
        last_error=sa.bindparam("d_error"),
        state=sa.bindparam("d_state"),
        next_attempt_at=sa.func.coalesce(sa.bindparam("d_next"), DISPATCH.c.next_attempt_at),
        delivered_at=sa.bindparam("d_delivered"),
    )
)


def _dispatch_params(
    job: DispatchJob, owner: str, now: datetime, result: AttemptResult
) -> dict[str, Any]:
    if result.delivered:
        state, retry_at = DispatchState.DELIVERED, None
    elif result.retry_at is None or result.gone:
        state, retry_at = DispatchState.FAILED, None
    else:
        state, retry_at = DispatchState.PENDING, result.retry_at
    return {
        "d_id": job.id,
        "d_owner": owner,
        "d_status": result.status_code,
        "d_error": result.error[:REASON_MAX_CHARS] if result.error else None,
        "d_state": state.value,
        "d_next": retry_at,
        "d_delivered": now if result.delivered else None,
    }


def _attempt_row(dispatch_id: int, now: datetime, result: AttemptResult) -> dict[str, Any]:
    return {
        "dispatch_id": dispatch_id,
        "at": now,
        "status_code": result.status_code,
        "latency_ms": result.latency_ms,
        "answer": result.answer[:ANSWER_KEEP_CHARS] if result.answer else None,
        "error": result.error[:REASON_MAX_CHARS] if result.error else None,
    }


def _health_change(
    endpoint: Endpoint, now: datetime, result: AttemptResult, disable_after: timedelta
) -> dict[str, Any]:
    if result.delivered:
        return {"last_success_at": now, "failing_since": None}
    since = endpoint.failing_since or now
    change: dict[str, Any] = {"failing_since": sa.func.coalesce(ENDPOINT.c.failing_since, now)}
    reason = None
    if result.gone:
        reason = "the endpoint answered 410 Gone"
    elif now - since >= disable_after:
        days = disable_after.total_seconds() / 86_400
        reason = f"every attempt failed for {days:g} days"
    if reason is not None:
        change.update(enabled=False, disabled_reason=reason, disabled_at=now, updated_at=now)
    return change


async def release(db: Database, owner: str) -> int:
    """Give back every dispatch lease `owner` holds (a clean stop)."""
    async with db.write() as conn:
        result = await conn.execute(
            DISPATCH.update()
            .where(DISPATCH.c.lease_owner == owner)
            .values(lease_owner=None, lease_until=None)
        )
    return int(result.rowcount)


# -- operators ---------------------------------------------------------------------------


def _sent_again(now: datetime) -> dict[str, Any]:
    """A dispatch sent again by an operator: now, with the whole retry schedule before it
    (its earlier attempts stay in the attempts' log)."""
    return {"state": DispatchState.PENDING.value, "next_attempt_at": now, "attempts": 0}


async def retry_message(db: Database, msg_id: str) -> int | None:
    """Send a message again to every endpoint it was dispatched to, now; how many
    dispatches (None: no such message)."""
    async with db.write() as conn:
        found = await conn.scalar(sa.select(MESSAGE.c.id).where(MESSAGE.c.msg_id == msg_id))
        if found is None:
            return None
        result = await conn.execute(
            DISPATCH.update()
            .where(DISPATCH.c.message_id == found)
            .values(**_sent_again(db.clock()))
        )
    return int(result.rowcount)


async def recover(db: Database, endpoint_id: str, since: datetime) -> int:
    """Send an endpoint, now, every message made since `since` that it wants and has not
    had: what failed, and what was made while it was disabled (fanned out to the enabled
    endpoints only); how many."""
    made_since = sa.select(MESSAGE.c.id).where(MESSAGE.c.created_at >= since)
    now = db.clock()
    async with db.write() as conn:
        result = await conn.execute(
            DISPATCH.update()
            .where(DISPATCH.c.endpoint_id == endpoint_id)
            .where(DISPATCH.c.state == DispatchState.FAILED.value)
            .where(DISPATCH.c.message_id.in_(made_since))
            .values(**_sent_again(now))
        )
        row = (
            (await conn.execute(sa.select(*_ENDPOINT_COLUMNS).where(ENDPOINT.c.id == endpoint_id)))
            .mappings()
            .first()
        )
        if row is None:
            return int(result.rowcount)
        endpoint = _endpoint(row)
        had = sa.select(DISPATCH.c.message_id).where(DISPATCH.c.endpoint_id == endpoint_id)
        missed = await conn.execute(
            sa.select(MESSAGE.c.id, MESSAGE.c.event_type, MESSAGE.c.payload, MESSAGE.c.unconfirmed)
            .where(MESSAGE.c.created_at >= since, MESSAGE.c.fanned_out, MESSAGE.c.id.not_in(had))
            .order_by(MESSAGE.c.id)
        )
        new = [
            _new_dispatch(message["id"], endpoint.id, now)
            for message in missed.mappings()
            if endpoint.wants(message)
        ]
        if new:
            await conn.execute(DISPATCH.insert(), new)
    return int(result.rowcount) + len(new)


async def backlog(db: Database) -> tuple[int, datetime | None, int]:
    """Pending dispatches, when the oldest of their messages was made, and messages not
    fanned out yet."""
    pending = DISPATCH.c.state == DispatchState.PENDING.value
    async with db.read() as conn:
        count, oldest = (
            await conn.execute(
                sa.select(sa.func.count(), sa.func.min(DISPATCH.c.created_at)).where(pending)
            )
        ).one()
        unsent = await conn.scalar(sa.select(sa.func.count()).select_from(MESSAGE).where(UNSENT))
    return int(count), oldest if isinstance(oldest, datetime) else None, int(unsent or 0)


async def messages_of_task(db: Database, ref: str) -> list[dict[str, Any]]:
    """A task's events, each with its dispatches and their attempts, in order."""
    async with db.read() as conn:
        messages = (
            (
                await conn.execute(
                    sa.select(MESSAGE).where(MESSAGE.c.task_ref == ref).order_by(MESSAGE.c.id)
                )
            )
            .mappings()
            .all()
        )
        ids = [m["id"] for m in messages]
        dispatches = (
            (
                await conn.execute(
                    sa.select(DISPATCH)
                    .where(DISPATCH.c.message_id.in_(ids))
                    .order_by(DISPATCH.c.id)
                )
            )
            .mappings()
            .all()
        )
        attempts = await _attempts(conn, [d["id"] for d in dispatches])
    by_message: dict[int, list[dict[str, Any]]] = {}
    for dispatch in dispatches:
        entry = dict(dispatch) | {"attempts_made": attempts.get(dispatch["id"], [])}
        by_message.setdefault(dispatch["message_id"], []).append(entry)
    return [dict(m) | {"dispatches": by_message.get(m["id"], [])} for m in messages]


async def _attempts(conn: Any, dispatch_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    found: dict[int, list[dict[str, Any]]] = {}
    if not dispatch_ids:
        return found
    rows = await conn.execute(
        sa.select(DISPATCH_ATTEMPT)
        .where(DISPATCH_ATTEMPT.c.dispatch_id.in_(dispatch_ids))
        .order_by(DISPATCH_ATTEMPT.c.id)
    )
    for row in rows.mappings():
        found.setdefault(row["dispatch_id"], []).append(dict(row))
    return found


async def endpoint_health(db: Database, endpoint_id: str, recent: int = 10) -> dict[str, Any]:
    """An endpoint's dispatches by state, and its most recent failed attempts."""
    async with db.read() as conn:
        counts = {
            state: int(n)
            for state, n in await conn.execute(
                sa.select(DISPATCH.c.state, sa.func.count())
                .where(DISPATCH.c.endpoint_id == endpoint_id)
                .group_by(DISPATCH.c.state)
            )
        }
        failures = await conn.execute(
            sa.select(DISPATCH_ATTEMPT, MESSAGE.c.msg_id, MESSAGE.c.task_ref)
            .select_from(
                DISPATCH_ATTEMPT.join(
                    DISPATCH, DISPATCH.c.id == DISPATCH_ATTEMPT.c.dispatch_id
                ).join(MESSAGE, MESSAGE.c.id == DISPATCH.c.message_id)
            )
            .where(DISPATCH.c.endpoint_id == endpoint_id)
            .where(DISPATCH_ATTEMPT.c.error.is_not(None))
            .order_by(DISPATCH_ATTEMPT.c.id.desc())
            .limit(recent)
        )
        recent_failures = [dict(row) for row in failures.mappings()]
    return {
        "dispatches": {state.value: counts.get(state.value, 0) for state in DispatchState},
        "recent_failures": recent_failures,
    }
